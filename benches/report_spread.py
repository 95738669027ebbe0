"""Where the spread of 2-thread rounds comes from: the window step at B = 32,
round by round, with the pool's counters.

    python benches/report_spread.py [--rounds 30] [--batch 32]

Runs the contention report's window step (V = 20,000, d = 50, window 5, H = 300,
9 classes, float32) for ``--rounds`` rounds of 0.25 s at 2 threads, then at one
thread pinned to each core in turn, and prints every round's rate with what the
pool did in it (fallbacks to one thread, loops run on the caller alone, loops
with helpers). A round at one thread's rate with no fallback and every loop on
two threads is the machine's doing (the two cores slower together than apart),
not the pool's.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(nt, rounds, B):
    import numpy as np

    import cygrad
    from cygrad.kernels import _parallel
    from cygrad.ner import WindowTrainer
    cygrad.set_num_threads(nt)
    rng = np.random.default_rng(0)
    V, d, w, H, C = 20_000, 50, 5, 300, 9
    f32 = np.float32
    tr = WindowTrainer(E=rng.normal(0, 0.1, (V, d)).astype(f32),
                       W=rng.normal(0, 0.06, (H, w * d)).astype(f32), b=np.zeros(H, f32),
                       U=rng.normal(0, 0.06, (C, H)).astype(f32), c=np.zeros(C, f32))
    ids, lab = rng.integers(0, V, (B, w)), rng.integers(0, C, B)
    for _ in range(20):
        tr.step(ids, lab, lr=1e-4)
    out = []
    for _ in range(rounds):
        s0 = _parallel.stats()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.25:
            tr.step(ids, lab, lr=1e-4)
            n += 1
        t = time.perf_counter() - t0
        s1 = _parallel.stats()
        out.append({"rate": n * B / t, **{k: s1[k] - s0[k] for k in
                                          ("backoffs", "inline_loops", "loops")}})
        time.sleep(0.05)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        print(json.dumps(worker(args.worker, args.rounds, args.batch)))
        return
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)

    def run(nt, cpu=None):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(nt),
               "--rounds", str(args.rounds), "--batch", str(args.batch)]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                         env=env).stdout)

    cores = sorted(os.sched_getaffinity(0))[:2]
    two = run(2)
    ones = {c: run(1, c) for c in cores}
    print(f"# 2-thread rounds, one by one: window step B = {args.batch}\n")
    print(f"`python benches/report_spread.py --rounds {args.rounds} --batch {args.batch}`; "
          f"{len(os.sched_getaffinity(0))} cores. Windows/s per 0.25 s round, sorted.\n")
    one_all = sorted(r["rate"] for rs in ones.values() for r in rs)
    med1 = one_all[len(one_all) // 2]
    print("One thread, pinned to each core: " + "; ".join(
        f"core {c}: {min(r['rate'] for r in rs):,.0f} - {max(r['rate'] for r in rs):,.0f}"
        for c, rs in ones.items()) + f" (median {med1:,.0f}).\n")
    print("| 2-thread round | windows/s | / 1-thread median | fallbacks | loops alone "
          "| loops with helpers |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(sorted(two, key=lambda r: r["rate"])):
        print(f"| {i + 1} | {r['rate']:,.0f} | {r['rate'] / med1:.2f} | {r['backoffs']} | "
              f"{r['inline_loops']} | {r['loops']} |")


if __name__ == "__main__":
    main()
