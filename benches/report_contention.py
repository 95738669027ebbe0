"""Threads that never lose: default thread count vs one thread, idle and busy.

Each case (the window model's compiled training step at B = 1, 32, 512, 2048, two
hidden layers on the window at B = 512 and the MLP 784-256-10 with Adam at B = 128
(report_compile.py's and report_mlp.py's), matmul 512² and 1024², the window
products at B = 512) is timed at the default thread count and
at one thread, with the machine idle and with a CPU-bound busy loop that this
script starts, pinned to one core, and stops at the end. Everything is
interleaved: in each round, for each load, each (build, threads) worker times
every case for a short block, in turn. Workers are persistent processes (one
per build and thread count), so that no block pays an import. With --baseline
PYTHON, the same cases also run on another installed build (e.g. the previous
release, or the CYGRAD_OPENMP=1 build, in another virtual environment) as "before"
rows (--baseline-name: another name).

Reported: the median rate of each (load, case, build, threads) over the rounds,
and the ratio default threads / one thread (paired per round, median, with the
min-max over rounds) for each load. Optionally (--conll DIR) also the NER CLI's
epoch time on CoNLL-2003 (`cygrad train --epochs 1`, the epoch line it prints),
default threads vs --threads 1, idle and busy.

    python benches/report_contention.py [--rounds 7] [--seconds 0.25]
        [--baseline /path/to/other/venv/bin/python [--baseline-name openmp]]
        [--conll ../shared/data/conll2003]
        [--out benches/results/contention.md]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

CASES = ["step B=1", "step B=32", "step B=512", "step B=2048", "2 hidden B=512",
         "MLP B=128", "matmul 512²", "matmul 1024²", "Z = X Wᵀ B=512", "dX = dZ W B=512",
         "dW = dZᵀ X B=512"]


# ---------------------------------------------------------------- the worker

def _worker(threads):
    import numpy as np

    import cygrad
    from cygrad import kernels as K
    from cygrad.ner import WindowTrainer

    cygrad.set_num_threads(threads)
    rng = np.random.default_rng(0)
    V, d, w, H, C = 20_000, 50, 5, 300, 9
    f32 = np.float32
    trainer = WindowTrainer(E=rng.normal(0, 0.1, (V, d)).astype(f32),
                            W=rng.normal(0, 0.06, (H, w * d)).astype(f32),
                            b=np.zeros(H, f32), U=rng.normal(0, 0.06, (C, H)).astype(f32),
                            c=np.zeros(C, f32))
    batches = {B: (rng.integers(0, V, (B, w)), rng.integers(0, C, B))
               for B in (1, 32, 512, 2048)}
    sq = {n: (rng.standard_normal((n, n)).astype(f32), rng.standard_normal((n, n)).astype(f32),
              np.empty((n, n), f32)) for n in (512, 1024)}
    X = rng.standard_normal((512, w * d)).astype(f32)
    Wm = rng.standard_normal((H, w * d)).astype(f32)
    dZ = rng.standard_normal((512, H)).astype(f32)
    outs = {"Z": np.empty((512, H), f32), "dX": np.empty((512, w * d), f32),
            "dW": np.empty((H, w * d), f32)}

    def step(B):
        ids, lab = batches[B]
        return lambda: trainer.step(ids, lab, lr=1e-4), B

    # the compiled steps of report_compile.py ("deep": 2 hidden layers 300-100 on the
    # window, Adagrad) and report_mlp.py (784-256-10, ReLU, Adam), from this folder
    from report_compile import make_case
    from report_mlp import Cygrad, make_batches, make_params
    deep = make_case("deep", 512)["compiled"]
    mlp, mlp_data = Cygrad(make_params("mlp")), make_batches("mlp")
    it = {"deep": 0, "mlp": 0}

    def deep_step():
        it["deep"] += 1
        deep(it["deep"])

    def mlp_step():
        it["mlp"] += 1
        mlp(*mlp_data[it["mlp"] % len(mlp_data)])

    calls = {
        "step B=1": step(1), "step B=32": step(32), "step B=512": step(512),
        "step B=2048": step(2048), "2 hidden B=512": (deep_step, 512),
        "MLP B=128": (mlp_step, 128),
        "matmul 512²": (lambda: K.matmul(sq[512][0], sq[512][1], out=sq[512][2]), 1),
        "matmul 1024²": (lambda: K.matmul(sq[1024][0], sq[1024][1], out=sq[1024][2]), 1),
        "Z = X Wᵀ B=512": (lambda: K.matmul(X, Wm, trans_b=True, out=outs["Z"]), 1),
        "dX = dZ W B=512": (lambda: K.matmul(dZ, Wm, out=outs["dX"]), 1),
        "dW = dZᵀ X B=512": (lambda: K.matmul(dZ, X, trans_a=True, out=outs["dW"]), 1),
    }
    for fn, _ in calls.values():        # warm-up: buffers, helpers, caches
        for _ in range(3):
            fn()
    print(json.dumps({"ready": True, "cygrad": os.path.dirname(cygrad.__file__)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        fn, per_call = calls[req["case"]]
        fn()
        n, t0 = 0, time.perf_counter()
        deadline = t0 + req["seconds"]
        while True:
            fn()
            n += 1
            t = time.perf_counter()
            if t >= deadline:
                break
        print(json.dumps({"rate": n * per_call / (t - t0)}), flush=True)


def _env(python):
    """The environment for a child running `python`: no thread-count override, and
    for another build (the baseline) no PYTHONPATH, which could make it import this
    checkout instead of its own installed package."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        env.pop("PYTHONPATH", None)
    return env


class Worker:
    def __init__(self, python, threads):
        env = _env(python)
        self.p = subprocess.Popen([python, os.path.abspath(__file__), "--worker", str(threads)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env)
        hello = json.loads(self.p.stdout.readline())
        self.where = hello["cygrad"]

    def rate(self, case, seconds):
        self.p.stdin.write(json.dumps({"case": case, "seconds": seconds}) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())["rate"]

    def close(self):
        self.p.stdin.close()
        self.p.wait()


from _harness import Busy, write_report  # noqa: E402,F401  (the busy loop every report shares)

# ------------------------------------------------------------------- the CLI

def cli_epoch(python, data, threads):
    """Seconds of one training epoch on CoNLL-2003, as `cygrad train` prints it."""
    cmd = [os.path.join(os.path.dirname(python), "cygrad"), "train",
           "--train", os.path.join(data, "train.txt"), "--epochs", "1", "--no-progress"]
    if threads:
        cmd += ["--threads", str(threads)]
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run(cmd + ["--out", os.path.join(out, "m")], capture_output=True,
                           text=True, check=True, env=_env(python))
    m = re.search(r"epoch\s+1\s+loss\s+\S+\s+([\d.]+)s", r.stdout)
    if not m:
        raise RuntimeError(f"no epoch line in: {r.stdout[-500:]}")
    return float(m.group(1))


# ------------------------------------------------------------------ the report

def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.25, help="per timed block")
    ap.add_argument("--baseline", metavar="PYTHON",
                    help="another build's interpreter, run beside this one as 'before'")
    ap.add_argument("--baseline-name", default="before", metavar="NAME",
                    help="what to call the baseline build in the report (e.g. openmp)")
    ap.add_argument("--conll", metavar="DIR", help="CoNLL-2003 directory: also time the CLI")
    ap.add_argument("--cli-rounds", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES, metavar="CASE")
    ap.add_argument("--loads", nargs="+", default=["idle", "busy"], choices=["idle", "busy"])
    ap.add_argument("--out", help="also write the report (markdown) here")
    args = ap.parse_args()
    if args.worker is not None:
        return _worker(args.worker)

    cores = sorted(os.sched_getaffinity(0))
    default = len(cores)
    if default < 2:
        sys.exit("report_contention: needs at least 2 cores")
    builds = {"cygrad": sys.executable}
    if args.baseline:
        builds[args.baseline_name] = args.baseline
    workers = {(b, nt): Worker(py, nt) for b, py in builds.items() for nt in (default, 1)}
    where = {b: workers[b, 1].where for b in builds}
    if len(set(where.values())) < len(where):
        sys.exit(f"report_contention: the builds import the same package: {where}")
    busy = Busy(cores[-1])
    rates = {}      # (load, case, build, nt) -> [rate per round]
    try:
        for r in range(args.rounds):
            for load in args.loads:
                busy.start() if load == "busy" else busy.stop()
                for case in args.cases:
                    for key, wk in workers.items():
                        rates.setdefault((load, case) + key, []).append(
                            wk.rate(case, args.seconds))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        cli = {}
        if args.conll:
            for r in range(args.cli_rounds):
                for load in args.loads:
                    busy.start() if load == "busy" else busy.stop()
                    for b, py in builds.items():
                        for nt in (None, 1):
                            cli.setdefault((load, b, nt), []).append(
                                cli_epoch(py, args.conll, nt))
                print(f"CLI round {r + 1}/{args.cli_rounds} done", file=sys.stderr)
    finally:
        busy.stop()
        for wk in workers.values():
            wk.close()

    lines = [f"# Default threads ({default}) vs one thread, idle and with a busy loop",
             "",
             f"`python benches/report_contention.py {' '.join(sys.argv[1:])}`: "
             f"{len(cores)} cores, {time.strftime('%Y-%m-%d %H:%M')}. Busy: a CPU-bound "
             f"loop pinned to core {cores[-1]}. Rates: windows/s for the steps (samples/s "
             "for the MLP), calls/s for matmul (median over rounds). Ratio: default / "
             "1 thread, paired per round, median [min - max].", ""] + \
        [f"- {b}: `{where[b]}`" for b in builds] + [""]
    for b in builds:
        head = "".join(f" {ld} {default}t | {ld} 1t | {ld} ratio |" for ld in args.loads)
        lines += [f"## {b}", "", "| case |" + head + f" idle {default}t: worst round / median |",
                  "|---|" + "---:|---:|---:|" * len(args.loads) + "---:|"]
        for case in args.cases:
            row = [case]
            for load in args.loads:
                hi, lo = rates[(load, case, b, default)], rates[(load, case, b, 1)]
                ratios = [x / y for x, y in zip(hi, lo)]
                row += [f"{med(hi):,.0f}", f"{med(lo):,.0f}",
                        f"**{med(ratios):.2f}** [{min(ratios):.2f} - {max(ratios):.2f}]"]
            idle = rates.get(("idle", case, b, default))
            row.append(f"{min(idle) / med(idle):.2f}" if idle else "")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if args.baseline:
        lines += [f"## cygrad / {args.baseline_name} (same threads, same load; > 1: this build "
                  "faster)", "",
                  "| case |" + "".join(f" {ld} {default}t | {ld} 1t |" for ld in args.loads),
                  "|---|" + "---:|---:|" * len(args.loads)]
        for case in args.cases:
            row = [case]
            for load in args.loads:
                for nt in (default, 1):
                    ratios = [x / y for x, y in zip(rates[(load, case, "cygrad", nt)],
                                                    rates[(load, case, args.baseline_name,
                                                           nt)])]
                    row.append(f"{med(ratios):.2f}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if cli:
        lines += ["## `cygrad train` on CoNLL-2003: seconds per epoch (median)", "",
                  "| build | load | default threads | --threads 1 | default / 1 |",
                  "|---|---|---:|---:|---:|"]
        for b in builds:
            for load in args.loads:
                hi, lo = cli[(load, b, None)], cli[(load, b, 1)]
                lines.append(f"| {b} | {load} | {med(hi):.2f} | {med(lo):.2f} | "
                             f"**{med(hi) / med(lo):.2f}** |")
        lines.append("")
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
