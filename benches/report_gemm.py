"""cygrad's matmul against NumPy's (OpenBLAS), interleaved in one run.

    python benches/report_gemm.py [--threads 1 2] [--rounds 11]
    python benches/report_gemm.py --alternate [--threads 2] [--rounds 11]

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

``--alternate`` measures the two libraries the way a program that prepares or
evaluates data with NumPy between cygrad's calls uses them: each block calls
cygrad, then NumPy, then cygrad ... with no idle, timing each library's calls
apart; once with OpenBLAS's jobs on cygrad's pool (``cygrad.blas_on_pool()``) and
once on OpenBLAS's own threads (``blas_on_pool(False)``, the default: they spin
after each call on the cores cygrad's helpers need), the two settings in
alternating rounds of one process.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _harness import Busy, peak, pin_cores, run_workers  # noqa: E402
from _harness import interleave as _interleave  # noqa: E402
from _harness import median as _median  # noqa: E402


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
    with open(out, "w") as f:
        json.dump({"threads": nt, "rows": rows, "about": _about()}, f)


def _alternating(cy, nu, block):
    """Seconds per call of cy and of nu, called in turn for about ``block`` s."""
    cy()
    nu()
    tc = tn = 0.0
    n = 0
    t_end = time.perf_counter() + block
    while time.perf_counter() < t_end or n < 3:
        t0 = time.perf_counter()
        cy()
        t1 = time.perf_counter()
        nu()
        tc += t1 - t0
        tn += time.perf_counter() - t1
        n += 1
    return tc / n, tn / n


def alternate_worker(nt, rounds, out):
    pin_cores(nt)
    import numpy as np
    from threadpoolctl import threadpool_limits

    import cygrad
    from cygrad import kernels as K
    cygrad.set_num_threads(nt)
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(nt, user_api="blas"):
        for name, m, n, k, ta, tb, dt in shapes():
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
            c1, c2 = np.empty((m, n), dt), np.empty((m, n), dt)
            A, Bm = (a.T if ta else a), (b.T if tb else b)

            def cy():
                K.matmul(a, b, trans_a=ta, trans_b=tb, out=c1)

            def nu():
                np.matmul(A, Bm, out=c2)

            t = {"pool": ([], []), "own": ([], [])}
            for r in range(rounds):
                for mode in (("pool", "own") if r % 2 == 0 else ("own", "pool")):
                    cygrad.blas_on_pool(mode == "pool")
                    time.sleep(0.2)     # OpenBLAS's threads, spinning after the last block, sleep
                    tc, tn = _alternating(cy, nu, 0.05)
                    t[mode][0].append(tc)
                    t[mode][1].append(tn)
            cygrad.blas_on_pool(True)
            row = {"name": name, "flops": 2 * m * n * k}
            for mode, (tc, tn) in t.items():
                row[mode] = {"cygrad": _median(tc), "numpy": _median(tn),
                             "ratios": sorted(y / x for x, y in zip(tc, tn))}
            row["numpy_own_over_pool"] = sorted(
                o / p for o, p in zip(t["own"][1], t["pool"][1]))
            rows.append(row)
    with open(out, "w") as f:
        json.dump({"threads": nt, "rows": rows, "about": _about()}, f)


def _about():
    import numpy as np
    from threadpoolctl import threadpool_info

    import cygrad
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return (f"cygrad {cygrad.__version__} (GEMM path {cygrad.build_info()['gemm_path']}), "
            f"NumPy {np.__version__} with {', '.join(blas) or 'unknown BLAS'}")


def _spread(sorted_ratios):
    """**median** [min - max] of a sorted list of ratios."""
    x = sorted_ratios
    return f"**{_median(x):.2f}** [{x[0]:.2f} - {x[-1]:.2f}]"


def alternate_report(args):
    busy = Busy()
    if args.busy:
        busy.start()
    try:
        results = run_workers(__file__, args.threads,
                              ["--rounds", str(args.rounds), "--alternate"])
    finally:
        busy.stop()
    state = ("busy: a CPU-bound process pinned to the last core throughout" if args.busy
             else "idle")
    print("# matmul beside NumPy's: the two called in turn, with OpenBLAS's jobs on "
          f"cygrad's pool and on OpenBLAS's own threads ({state.split(':')[0]})\n")
    print(f"{results[0]['about']}; {state}; `python benches/report_gemm.py --alternate "
          f"--threads {' '.join(map(str, args.threads))} --rounds {args.rounds}"
          f"{' --busy' if args.busy else ''}`.\n")
    print("Each block calls cygrad's matmul and NumPy's in turn, no idle, and times each "
          "library's calls apart; *pool*: `cygrad.blas_on_pool()` (OpenBLAS's "
          "parallel jobs run as gangs of cygrad's pool), *own*: `blas_on_pool(False)` "
          "(OpenBLAS's threads, which spin ~0.1 s after each call). The two settings "
          "alternate round by round in one process, 0.2 s idle before each block. "
          "Ratios: median over rounds of the paired ratio, [min - max]; "
          "numpy / cygrad > 1: cygrad faster.\n")
    print("| product | threads | pool: cygrad µs | pool: numpy µs | pool: numpy / cygrad "
          "| own: cygrad µs | own: numpy µs | own: numpy / cygrad | numpy own / pool |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for res in results:
        for r in res["rows"]:
            p, o, q = r["pool"], r["own"], r["numpy_own_over_pool"]
            print(f"| {r['name']} | {res['threads']} | {p['cygrad'] * 1e6:.1f} | "
                  f"{p['numpy'] * 1e6:.1f} | {_spread(p['ratios'])} | {o['cygrad'] * 1e6:.1f} | "
                  f"{o['numpy'] * 1e6:.1f} | {_spread(o['ratios'])} | {_spread(q)} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--alternate", action="store_true",
                    help="cygrad and NumPy called in turn, OpenBLAS's jobs on cygrad's pool "
                         "and on its own threads")
    ap.add_argument("--busy", action="store_true",
                    help="with --alternate: a CPU-bound process on the last core throughout")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        (alternate_worker if args.alternate else worker)(args.worker, args.rounds, args.json)
        return
    if args.alternate:
        alternate_report(args)
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
