"""Where a compiled step starts to gain from a second thread: MLPs 64-H-10 (Adam,
float32, compiled, every step on the pool: MIN_WORK 0) at growing batch and width,
2 threads / 1 thread interleaved, idle and beside a busy core. The crossover sets
cygrad.compiler.runtime.MIN_WORK (multiply-adds of a step's products below which it
runs on one thread).

    python benches/report_min_work.py [--rounds 5] [--out benches/results/min-work.md]
"""

import argparse
import statistics
import time

import numpy as np

from _harness import Busy, write_report  # noqa: E402  (benches/_harness.py)

SHAPES = [(64, 128, 32), (64, 128, 64), (64, 128, 128), (64, 256, 128), (64, 512, 128),
          (256, 256, 128), (784, 256, 128)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.1)
    ap.add_argument("--out")
    a = ap.parse_args()
    import cygrad as cg
    from cygrad import nn, optim
    from cygrad.compiler import runtime
    runtime.MIN_WORK = 0
    rng = np.random.default_rng(0)
    steps = []
    for din, H, B in SHAPES:
        m = nn.Sequential(nn.Linear(din, H, generator=0), nn.ReLU(),
                          nn.Linear(H, 10, generator=1))
        st = cg.compile(lambda x, y, m=m: cg.softmax_cross_entropy(m(x), y),
                        optimizer=optim.Adam(m.parameters(), lr=1e-3), strict=True)
        xs = [(rng.standard_normal((B, din)).astype(np.float32), rng.integers(0, 10, B))
              for _ in range(4)]
        for x, y in xs:
            st(x, y)
        steps.append((st, xs))

    def per_step(st, xs, nt):
        with cg.threads(nt):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < a.seconds:
                st(*xs[n % 4])
                n += 1
            return (time.perf_counter() - t0) / n
    busy = Busy()
    ratios = {}
    for r in range(a.rounds):
        for load in (["idle", "busy"] if r % 2 == 0 else ["busy", "idle"]):
            busy.state(load)
            for i, (st, xs) in enumerate(steps):
                one, two = per_step(st, xs, 1), per_step(st, xs, 2)
                ratios.setdefault((load, i), []).append(one / two)
    busy.stop()
    lines = ["# The second thread against the size of a compiled step", "",
             f"`python benches/report_min_work.py --rounds {a.rounds}`, "
             f"{time.strftime('%Y-%m-%d')}: MLPs din-H-10, Adam, float32, every step on the "
             "pool; 2 threads / 1 thread (time ratio, > 1: 2 threads faster), median "
             "[min-max] over the rounds; busy: a CPU-bound loop on the last core.", "",
             "| din-H-10, B | multiply-adds | idle | busy |", "|---|---:|---:|---:|"]
    for i, (din, H, B) in enumerate(SHAPES):
        cells = [f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"
                 for v in (ratios[("idle", i)], ratios[("busy", i)])]
        lines.append(f"| {din}-{H}-10, {B} | {3 * B * (din * H + H * 10):,} | "
                     + " | ".join(cells) + " |")
    write_report(a.out, lines)


if __name__ == "__main__":
    main()
