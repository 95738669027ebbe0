"""Data parallelism over MPI on this machine, and a model of it on N hosts.

    python benches/report_mpi.py [--rounds 5] [--seconds 2] [--out benches/results/mpi.md]

Needs `pip install ".[mpi]"` (mpi4py and the MPICH wheel: mpiexec beside python).

The lecture's window model as the CLI trains it (one table V = 20000, d = 50, w = 5,
H = 300, C = 9, tanh, softmax, Adagrad, float32), compiled, at a per-rank batch of B
= 32 and 512, in three arrangements of this machine's 2 cores:
  1 rank x 1 thread, 1 rank x 2 threads, and 2 ranks x 1 thread (mpiexec -n 2;
  global batch 2 B, cygrad.distributed.DistributedOptimizer, its exchange buffers
  kept from step to step; and, for comparison, with the exchange of
  allreduce_gradients alone: fresh buffers and a kinds Allgather every step),
each idle and beside a CPU-bound loop pinned to the last core. Rate: windows per
second of the global batch. Each arrangement runs in fresh processes for a block of
seconds after a warm-up, the arrangements in rotating order, round after round;
medians over the rounds. The 2-rank runs also report the bytes each rank sends per
step and the share of the step spent in MPI calls.

From those figures, the report models N hosts (one rank each): a step takes the
1-rank compute time plus the exchange, a ring allreduce of the dense gradients
(2 (N - 1) / N x D bytes, 2 (N - 1) latencies) and an allgather of the sparse
rows ((N - 1) x S bytes received, N - 1 latencies), over 10 and 100 Gbit/s links.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
V, D, W, H, C = 20_000, 50, 5, 300, 9


def worker(B, seconds, distributed, out, fresh=False):
    import cygrad as cg
    from cygrad import optim
    rank, size = 0, 1
    if distributed:
        from cygrad import distributed as dist
        rank, size = dist.init(threads=1)
    rng = np.random.default_rng(0)
    f32 = np.float32
    ps = [cg.tensor(rng.normal(0, s, shape).astype(f32), requires_grad=True)
          for s, shape in ((0.1, (V, D)), (0.06, (H, W * D)), (0.0, (H,)), (0.06, (C, H)),
                           (0.0, (C,)))]
    E, Wt, b, U, c = ps
    opt = optim.Adagrad(ps, lr=0.01)
    mpi = {"seconds": 0.0, "bytes": 0}
    if distributed:
        class Timed(dist.DistributedOptimizer):
            def step(self):
                t0 = time.perf_counter()
                if fresh:       # new buffers and a kinds Allgather at every step
                    dist.allreduce_gradients(self.params, self.comm, self.average)
                else:           # the optimiser's kept buffers
                    self.exchange()
                mpi["seconds"] += time.perf_counter() - t0
                self.optimizer.step()
        opt = Timed(opt)

    def loss_fn(windows, labels):
        x = cg.embedding_windows(E, windows, sparse=True)
        return cg.softmax_cross_entropy(cg.linear(cg.tanh(cg.linear(x, Wt, b)), U, c), labels)
    step = cg.compile(loss_fn, optimizer=opt, strict=True)
    zipf = np.minimum(rng.zipf(1.3, (8, size * B, W)) - 1, V - 1)
    labels = rng.integers(0, C, (8, size * B))
    shards = [(np.ascontiguousarray(zipf[k, rank * B:(rank + 1) * B]),
               np.ascontiguousarray(labels[k, rank * B:(rank + 1) * B])) for k in range(8)]
    for k in range(3):
        step(*shards[k % 8])
    if distributed:
        from mpi4py import MPI
        MPI.COMM_WORLD.Barrier()
    mpi["seconds"] = 0.0
    n, t0 = 0, time.perf_counter()
    while True:
        step(*shards[n % 8])
        n += 1
        if distributed:       # every rank stops at the same step
            from mpi4py import MPI
            go = np.array([time.perf_counter() - t0 < seconds], dtype=np.int8)
            MPI.COMM_WORLD.Bcast(go, root=0)
            if not go[0]:
                break
        elif time.perf_counter() - t0 >= seconds:
            break
    t = time.perf_counter() - t0
    if rank == 0:
        dense = sum(p.size for p in ps[1:]) * 4
        sparse = B * W * (8 + D * 4)
        with open(out, "w") as f:
            json.dump({"rate": n * size * B / t, "step": t / n, "mpi_share": mpi["seconds"] / t,
                       "dense_bytes": dense, "sparse_bytes": sparse}, f)


from _harness import Busy, write_report  # noqa: E402  (benches/_harness.py)


def run(arrangement, B, seconds, tmp):
    out = os.path.join(tmp, "r.json")
    env = dict(os.environ)
    me = [sys.executable, os.path.abspath(__file__), "--worker", str(B), "--seconds",
          str(seconds), "--json", out]
    if arrangement.startswith("2 ranks x 1 thread"):
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        cmd = [mpiexec, "-n", "2"] + me + ["--distributed"] + \
            (["--fresh"] if arrangement == FRESH else [])
        env["OMP_NUM_THREADS"] = "1"
    else:
        cmd = me
        env["OMP_NUM_THREADS"] = "1" if arrangement == "1 rank x 1 thread" else "2"
    subprocess.run(cmd, check=True, env=env, timeout=600)
    with open(out) as f:
        return json.load(f)


FRESH = "2 ranks x 1 thread, fresh buffers"      # the exchange before kept buffers
ARRANGEMENTS = ["1 rank x 1 thread", "1 rank x 2 threads", "2 ranks x 1 thread", FRESH]


def model_table(step_1, dense, sparse, B):
    """Modelled global windows/s for N ranks (one per host) at per-rank batch B."""
    rows = []
    links = [("10 Gbit/s", 1.25e9, 5e-6), ("100 Gbit/s", 12.5e9, 2e-6)]
    for N in (2, 4, 8, 16, 32, 64):
        cells = []
        for _, bw, lat in links:
            comm = (2 * (N - 1) / N * dense / bw + 2 * (N - 1) * lat
                    + (N - 1) * sparse / bw + (N - 1) * lat)
            rate = N * B / (step_1 + comm)
            cells.append((rate, rate / (N * B / step_1), comm * 1e3))
        rows.append((N, cells))
    return links, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 512])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "mpi.md"))
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker, a.seconds, a.distributed, a.json, a.fresh)
    import tempfile
    cores = sorted(os.sched_getaffinity(0))
    busy = Busy(cores[-1])
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for state in (["idle", "busy"] if r % 2 == 0 else ["busy", "idle"]):
                (busy.start if state == "busy" else busy.stop)()
                for B in a.batch:
                    k = r % len(ARRANGEMENTS)
                    for arr in ARRANGEMENTS[k:] + ARRANGEMENTS[:k]:
                        res.setdefault((state, B, arr), []).append(run(arr, B, a.seconds, tmp))
            print(f"round {r + 1}/{a.rounds}", file=sys.stderr)
    busy.stop()
    report(a, res)


def report(a, res):
    import cygrad
    med = lambda xs: statistics.median(xs)  # noqa: E731
    lines = ["# Data parallelism over MPI: 2 ranks against 1 rank on 2 cores, "
             "and a model for N hosts",
             "",
             f"`python benches/report_mpi.py --rounds {a.rounds} --seconds {a.seconds}` on "
             f"{os.cpu_count()} cores ({platform.machine()}), {time.strftime('%Y-%m-%d')}, cygrad "
             f"{cygrad.__version__}, MPICH over shared memory. The window model (V 20000, d 50, "
             f"w 5, H 300, C 9, Adagrad, float32), compiled; B is the per-rank batch (the "
             f"2-rank global batch is 2 B). Windows/s of the global batch, median of "
             f"{a.rounds} rounds; busy: a CPU-bound loop pinned to the last core.", "",
             "| B | arrangement | idle | busy | idle / 1 rank x 1 thread "
             "| busy / 1 rank x 1 thread |",
             "|---:|---|---:|---:|---:|---:|"]
    for B in a.batch:
        base = {s: med([x["rate"] for x in res[(s, B, ARRANGEMENTS[0])]]) for s in ("idle", "busy")}
        for arr in ARRANGEMENTS:
            m = {s: med([x["rate"] for x in res[(s, B, arr)]]) for s in ("idle", "busy")}
            lines.append(f"| {B} | {arr} | {m['idle']:,.0f} | {m['busy']:,.0f} | "
                         f"{m['idle'] / base['idle']:.2f} | {m['busy'] / base['busy']:.2f} |")
    lines += ["", "Per step of the 2-rank runs (rank 0): bytes each rank sends, and the share "
              "of the step spent in the gradient exchange (idle, median):", "",
              "| B | dense (Allreduce) | sparse rows (Allgatherv) | share of the step in MPI |",
              "|---:|---:|---:|---:|"]
    for B in a.batch:
        xs = res[("idle", B, ARRANGEMENTS[2])]
        fr = res[("idle", B, FRESH)]
        lines.append(f"| {B} | {xs[0]['dense_bytes']:,} | {xs[0]['sparse_bytes']:,} | "
                     f"{med([x['mpi_share'] for x in xs]):.1%} (fresh buffers: "
                     f"{med([x['mpi_share'] for x in fr]):.1%}) |")
    lines += ["", "## A model for N hosts", "",
              "One rank per host, each computing its share as fast as 1 rank x 1 thread does "
              "here (t_c, measured above); the exchange adds a ring allreduce of the dense "
              "gradients, 2 (N - 1) / N x D / bandwidth + 2 (N - 1) latency, and an allgather "
              "of the sparse rows, (N - 1) x S / bandwidth + (N - 1) latency, with D and S the "
              "bytes above, the latency 5 us at 10 Gbit/s and 2 us at 100 Gbit/s. Global "
              "windows/s = N B / (t_c + exchange); efficiency = that / (N x the 1-host rate).", ""]
    for B in a.batch:
        xs = res[("idle", B, ARRANGEMENTS[0])]
        step_1 = med([x["step"] for x in xs])
        d = res[("idle", B, ARRANGEMENTS[2])][0]
        links, rows = model_table(step_1, d["dense_bytes"], d["sparse_bytes"], B)
        lines += [f"B = {B} per rank (t_c = {step_1 * 1e3:.2f} ms):", "",
                  "| N | " + " | ".join(f"{n}: windows/s (efficiency, exchange ms)"
                                         for n, _, _ in links) + " |",
                  "|---:|" + "---:|" * len(links)]
        for N, cells in rows:
            lines.append(f"| {N} | " + " | ".join(f"{r:,.0f} ({e:.0%}, {ms:.2f})"
                                                   for r, e, ms in cells) + " |")
        lines.append("")
    write_report(a.out, lines)


if __name__ == "__main__":
    main()
