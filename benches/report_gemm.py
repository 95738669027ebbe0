"""cygrad's matmul against NumPy's (OpenBLAS), interleaved in one run.

    python benches/report_gemm.py [--threads 1 2] [--rounds 11]

For every shape (the square products of issue #3 and the window model's three
products at B in {1, 8, 32, 128, 512}: Z = X Wᵀ, dX = dZ W, dW = dZᵀ X with
X: B x 250, W: 300 x 250), prints the median time of each, the ratio
numpy / cygrad (> 1: cygrad faster; the median of per-round paired ratios) and
both GFLOP/s, at each thread count.
Each thread count runs in a fresh process pinned to that many cores, NumPy's
BLAS held to the same count (threadpoolctl), the two implementations timed in
alternating blocks with an idle after each (report_peers.py's harness). The
machine's peak is given two ways: nominal (cores x /proc/cpuinfo's clock x two
FMA pipes of the widest vector) and measured (the best rate seen in this run).
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _harness import interleave as _interleave  # noqa: E402
from _harness import median as _median  # noqa: E402
from _harness import peak, pin_cores, run_workers  # noqa: E402


def shapes():
    """(name, m, n, k, trans_a, trans_b, dtype) for C = op(A) op(B), op(A): m x k."""
    out = [(f"square {s} f32", s, s, s, False, False, "float32") for s in (512, 1024, 2048)]
    out.append(("square 1024 f64", 1024, 1024, 1024, False, False, "float64"))
    for B in (1, 8, 32, 128, 512):
        out += [(f"Z = X Wᵀ   B={B}", B, 300, 250, False, True, "float32"),
                (f"dX = dZ W  B={B}", B, 250, 300, False, False, "float32"),
                (f"dW = dZᵀ X B={B}", 300, 250, B, True, False, "float32")]
    return out


def worker(nt, rounds, out):
    pin_cores(nt)
    import numpy as np
    from threadpoolctl import threadpool_limits

    import cygrad
    from cygrad import kernels as K
    cygrad.set_num_threads(nt)
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(nt):
        for name, m, n, k, ta, tb, dt in shapes():
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
            c1, c2 = np.empty((m, n), dt), np.empty((m, n), dt)
            A, Bm = (a.T if ta else a), (b.T if tb else b)
            fns = {"cygrad": (lambda: K.matmul(a, b, trans_a=ta, trans_b=tb, out=c1),
                              lambda: None),
                   "numpy": (lambda: np.matmul(A, Bm, out=c2), lambda: None)}
            t = _interleave(fns, rounds, block=0.03, idle=0.15)
            rows.append({"name": name, "flops": 2 * m * n * k,
                         "cygrad": _median(t["cygrad"]), "numpy": _median(t["numpy"]),
                         "ratios": sorted(x / y for x, y in zip(t["numpy"], t["cygrad"]))})
    from threadpoolctl import threadpool_info
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    about = (f"cygrad {cygrad.__version__} (GEMM path {cygrad.build_info()['gemm_path']}), "
             f"NumPy {np.__version__} with {', '.join(blas) or 'unknown BLAS'}")
    with open(out, "w") as f:
        json.dump({"threads": nt, "rows": rows, "about": about}, f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.rounds, args.json)
        return
    results = run_workers(__file__, args.threads, ["--rounds", str(args.rounds)])
    best = max(r["flops"] / min(r["cygrad"], r["numpy"]) for res in results
               for r in res["rows"]) / 1e9
    print("# matmul: cygrad vs NumPy (OpenBLAS), interleaved, median of rounds\n")
    print(f"{results[0]['about']}; `python benches/report_gemm.py --rounds {args.rounds}`.\n")
    print(f"Peak, nominal: {peak()}. Measured: best {best:.0f} GFLOP/s in this run.\n")
    print("Times: median over rounds. Ratio: median over rounds of numpy / cygrad, each "
          "round's two blocks adjacent in time (paired, so that a slow spell of the host "
          "weighs on both), with the range of the middle half of rounds.\n")
    print("| product | threads | cygrad µs | numpy µs | numpy / cygrad | (middle half) "
          "| cygrad GFLOP/s | numpy GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for res in results:
        for r in res["rows"]:
            q = r["ratios"]
            lo, hi = q[len(q) // 4], q[(3 * len(q) - 1) // 4]
            print(f"| {r['name']} | {res['threads']} | {r['cygrad'] * 1e6:.1f} | "
                  f"{r['numpy'] * 1e6:.1f} | {_median(q):.2f}x | {lo:.2f}-{hi:.2f} | "
                  f"{r['flops'] / r['cygrad'] / 1e9:.1f} | {r['flops'] / r['numpy'] / 1e9:.1f} |")


if __name__ == "__main__":
    main()
