"""Side by side: cygrad against NumPy, PyTorch and JAX, measured in one run.

    python benches/report_peers.py [--out DIR] [--threads 1 2] [--batch 1 8 32 ...]

Writes DIR/peers.md (tables) and DIR/peers.png (windows/s against batch size),
default DIR = bench-results. Needs `pip install ".[bench]"`; PyTorch
(`pip install torch==2.13.0`) and JAX (`pip install jax jaxlib`) are measured when
installed.

Fair by construction:
- each thread count runs in a fresh process pinned to that many cores
  (sched_setaffinity), whose every library is also told the count
  (cygrad.set_num_threads, threadpoolctl for NumPy's BLAS, torch.set_num_threads,
  XLA's flags, which recent JAX does not honour: hence the pinning);
- every implementation is first checked to reach the same parameters as NumPy
  after 3 steps from the same start (peers.check_same);
- all implementations of one batch size are interleaved in one process: round
  after round, each times a block of steps (about 40 ms) in rotating order;
  warm-up (and JAX's compilation) first; median, min and max over the rounds;
- 0.1 s idle after every block, so that OpenBLAS's spinning worker threads
  (they spin ~0.1 s after a call) do not slow whoever runs next;
- the batches cycle through 8 different random ones (Zipf-distributed word ids),
  so no implementation sees the same rows every step.
The machine's limit: the best sgemm rate measured in the same process
(cygrad's or OpenBLAS's 2048 x 2048 product) divided by the useful FLOPs of one
window, 6 (250 x 300 + 300 x 9) = 466,200.
"""

import argparse
import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BATCHES = [1, 8, 32, 128, 512, 2048]
ROUNDS = 11
BLOCK_SECONDS = 0.04
IDLE = 0.1

from _harness import interleave, pin_cores, run_workers  # noqa: E402,F401  (benches/_harness.py)
from _harness import median as _median  # noqa: E402

ORDER = ["cygrad-compiled", "cygrad-graph", "numpy", "torch-dense", "torch-sparse", "jax"]
PEERS = ["numpy", "torch-dense", "torch-sparse", "jax"]
# issue #6's targets for cygrad's fastest path at 2 threads: x best peer
TARGETS = {1: 3.0, 32: 2.0, 512: 1.3, 2048: 1.3}


# ------------------------------------------------------------------- processes

# ------------------------------------------------------------------- worker side

def _interleave(fns, rounds, block=BLOCK_SECONDS, idle=IDLE):
    """benches/_harness.interleave with this report's block and idle times."""
    return interleave(fns, rounds, block=block, idle=idle)


def _sgemm_peak(nt):
    import numpy as np

    from cygrad import kernels as K
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2048, 2048)).astype(np.float32)
    b = rng.standard_normal((2048, 2048)).astype(np.float32)
    out = np.empty_like(a)
    fns = {"cygrad": (lambda: K.matmul(a, b, out=out), lambda: None),
           "numpy": (lambda: np.matmul(a, b, out=out), lambda: None)}
    times = _interleave(fns, 3, block=0.2)
    return {k: 2 * 2048 ** 3 / min(v) / 1e9 for k, v in times.items()}


def _step_fns(impls, B):
    import peers
    p = peers.make_params()
    batches = peers.make_batches(B)
    fns = {}
    for name, factory in impls.items():
        impl = factory(p, None)
        state = {"i": 0}

        def call(impl=impl, state=state):
            w, lab = batches[state["i"] % len(batches)]
            state["i"] += 1
            impl.step(w, lab)
        fns[name] = (call, getattr(impl, "sync", lambda: None))
    return fns


def _kernel_fns(nt):
    """A few kernels of the step, for each library: {kernel: {impl: (call, sync)}}."""
    import numpy as np

    import cygrad
    from cygrad import kernels as K
    rng = np.random.default_rng(0)
    B = 512
    X = rng.standard_normal((B, 250)).astype(np.float32)
    W = rng.standard_normal((300, 250)).astype(np.float32)
    Z = rng.standard_normal((B, 300)).astype(np.float32)
    S = rng.standard_normal((B, 9)).astype(np.float32)
    y = rng.integers(0, 9, B)
    E = rng.standard_normal((20000, 50)).astype(np.float32)
    win = rng.integers(0, 20000, (B, 5))
    dX = rng.standard_normal((B, 250)).astype(np.float32)
    G = np.zeros_like(E)
    none = lambda: None  # noqa: E731
    k = {
        "matmul X Wᵀ (512x250 · 250x300)": {
            "cygrad": (lambda: K.matmul(X, W, trans_b=True), none),
            "numpy": (lambda: X @ W.T, none)},
        "tanh forward + backward (512x300)": {
            "cygrad": (lambda: K.tanh_backward(Z, K.tanh(Z)), none),
            "numpy": (lambda: Z * (1 - np.tanh(Z) ** 2), none)},
        "softmax cross-entropy + gradient (512x9)": {
            "cygrad": (lambda: K.softmax_cross_entropy(S, y), none),
            "numpy": (lambda: cygrad.kernels.reference.softmax_cross_entropy(S, y), none)},
        "embedding gather (512 windows of 5, d=50)": {
            "cygrad": (lambda: K.embedding_gather(E, win), none),
            "numpy": (lambda: E[win].reshape(B, -1), none)},
        "embedding scatter-add (512 windows of 5)": {
            "cygrad": (lambda: K.embedding_scatter_add(G, win, dX), none),
            "numpy": (lambda: np.add.at(G, win, dX.reshape(B, 5, 50)), none)},
    }
    try:
        import torch
        import torch.nn.functional as F
        tX, tW, tZ, tS = map(torch.from_numpy, (X, W, Z, S))
        ty, tE, twin = torch.from_numpy(y), torch.from_numpy(E), torch.from_numpy(win)
        tdX, tG = torch.from_numpy(dX).reshape(-1, 50), torch.from_numpy(G)
        flat = twin.reshape(-1)

        def t_tanh():
            h = torch.tanh(tZ)
            return torch.ops.aten.tanh_backward(tZ, h)

        def t_xent():
            s = tS.clone().requires_grad_()
            F.cross_entropy(s, ty).backward()
            return s.grad
        k["matmul X Wᵀ (512x250 · 250x300)"]["torch"] = (lambda: tX @ tW.T, none)
        k["tanh forward + backward (512x300)"]["torch"] = (t_tanh, none)
        k["softmax cross-entropy + gradient (512x9)"]["torch"] = (t_xent, none)
        k["embedding gather (512 windows of 5, d=50)"]["torch"] = (
            lambda: F.embedding(twin, tE).reshape(B, -1), none)
        k["embedding scatter-add (512 windows of 5)"]["torch"] = (
            lambda: tG.index_add_(0, flat, tdX), none)
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp
        jX, jW, jZ, jS, jy, jE, jwin, jdX, jG = map(jnp.asarray, (X, W, Z, S, y, E, win, dX, G))

        def xent(s, y):
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(s), y[:, None], 1))
        f_mm = jax.jit(lambda a, b: a @ b.T)
        f_tanh = jax.jit(lambda z: (lambda h: 1 - h * h)(jnp.tanh(z)))
        f_xent = jax.jit(jax.value_and_grad(xent))
        f_gather = jax.jit(lambda e, w: e[w].reshape(w.shape[0], -1))
        f_scatter = jax.jit(lambda g, w, d: g.at[w].add(d.reshape(w.shape + (50,))))
        ready = jax.block_until_ready
        out = {}

        def run(name, f, *args):
            out[name] = f(*args)

        def sync(name):
            return lambda: ready(out.get(name))
        k["matmul X Wᵀ (512x250 · 250x300)"]["jax"] = (
            lambda: run("mm", f_mm, jX, jW), sync("mm"))
        k["tanh forward + backward (512x300)"]["jax"] = (lambda: run("th", f_tanh, jZ), sync("th"))
        k["softmax cross-entropy + gradient (512x9)"]["jax"] = (
            lambda: run("xe", f_xent, jS, jy), sync("xe"))
        k["embedding gather (512 windows of 5, d=50)"]["jax"] = (
            lambda: run("ga", f_gather, jE, jwin), sync("ga"))
        k["embedding scatter-add (512 windows of 5)"]["jax"] = (
            lambda: run("sc", f_scatter, jG, jwin, jdX), sync("sc"))
    except ImportError:
        pass
    return k


def _op_overhead_fns():
    import numpy as np

    import cygrad as cg
    a = cg.tensor(np.ones(1, np.float32), requires_grad=True)
    b = cg.tensor(np.ones(1, np.float32), requires_grad=True)
    fns = {"cygrad": (lambda: (a + b).sum().backward(), lambda: None)}
    try:
        import torch
        ta = torch.ones(1, requires_grad=True)
        tb = torch.ones(1, requires_grad=True)
        fns["torch"] = (lambda: (ta + tb).sum().backward(), lambda: None)
    except ImportError:
        pass
    return fns


def _machine():
    import numpy as np

    import cygrad
    facts = {"python": platform.python_version(), "numpy": np.__version__,
             "cygrad": cygrad.__version__, "cores": len(os.sched_getaffinity(0))}
    try:
        with open("/proc/cpuinfo") as f:
            facts["cpu"] = next(line.split(":", 1)[1].strip() for line in f
                                if line.startswith("model name"))
    except (OSError, StopIteration):
        facts["cpu"] = platform.processor() or "?"
    try:
        from threadpoolctl import threadpool_info
        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if blas:
            facts["blas"] = (f"{blas[0].get('internal_api')} {blas[0].get('version')} "
                             f"({blas[0].get('architecture')})")
    except ImportError:
        pass
    for mod in ("torch", "jax"):
        try:
            facts[mod] = __import__(mod).__version__
        except ImportError:
            pass
    info = cygrad.build_info()
    facts["cygrad_simd"] = info.get("simd")
    facts["cygrad_gemm"] = info.get("gemm_path")
    return facts


def worker(nt, batches, out):
    pin_cores(nt)
    sys.path.insert(0, HERE)
    from threadpoolctl import threadpool_limits

    import cygrad
    import peers
    cygrad.set_num_threads(nt)
    try:
        import torch
        torch.set_num_threads(nt)
        torch.set_num_interop_threads(1)
    except ImportError:
        pass
    result = {"threads": nt, "machine": _machine(), "steps": {}, "checks": {}}
    with threadpool_limits(nt):
        available = peers.available()
        impls = {k: available[k] for k in ORDER if k in available}
        result["peak_gflops"] = _sgemm_peak(nt)
        for B in batches:
            result["checks"][B] = peers.check_same(impls, B)
            times = _interleave(_step_fns(impls, B), ROUNDS)
            result["steps"][B] = {k: [B / t for t in v] for k, v in times.items()}
            print(f"threads={nt} B={B}: " + ", ".join(
                f"{k} {_median(v):,.0f}" for k, v in result["steps"][B].items()),
                file=sys.stderr)
        result["kernels"] = {name: {k: [t * 1e6 for t in v] for k, v in
                                    _interleave(fns, 5, block=0.02).items()}
                             for name, fns in _kernel_fns(nt).items()}
        result["op_overhead"] = {k: [t * 1e6 for t in v] for k, v in
                                 _interleave(_op_overhead_fns(), 5, block=0.02).items()}
    with open(out, "w") as f:
        json.dump(result, f)


# ------------------------------------------------------------------- report side

def _fmt(x):
    return f"{x / 1000:,.1f}k" if x >= 1000 else f"{x:,.0f}"


def report(results, out_dir):
    lines = ["# cygrad vs NumPy, PyTorch and JAX: the window model's training step", ""]
    m = results[0]["machine"]
    cores = max(r["machine"].get("cores", 0) for r in results)   # workers are pinned
    lines.append(f"Machine: {m.get('cpu')}, {cores} cores usable; Python {m['python']}, "
                 f"cygrad {m['cygrad']} (SIMD {m.get('cygrad_simd')}, GEMM "
                 f"{m.get('cygrad_gemm')}), NumPy {m['numpy']} with {m.get('blas', '?')}, "
                 f"PyTorch {m.get('torch', 'not installed')}, JAX {m.get('jax', 'not installed')}.")
    lines.append("")
    lines.append("Model: V = 20,000, d = 50, window 5, H = 300, tanh, C = 9, softmax "
                 "cross-entropy, SGD on every parameter incl. the windows' embedding rows; "
                 "float32. Training throughput in windows/s: median of "
                 f"{ROUNDS} interleaved rounds [min – max]. Every implementation was first "
                 "checked to reach NumPy's parameters after 3 steps (max relative "
                 "difference shown at the end).")
    for r in results:
        nt = r["threads"]
        peak = max(r["peak_gflops"].values())
        limit = peak * 1e9 / 466_200
        lines += ["", f"## {nt} thread{'s' if nt > 1 else ''}", "",
                  f"Measured sgemm peak (2048², best of cygrad {r['peak_gflops']['cygrad']:.0f} "
                  f"and OpenBLAS {r['peak_gflops']['numpy']:.0f} GFLOP/s): the machine's limit "
                  f"is {_fmt(limit)} windows/s.", ""]
        names = [k for k in ORDER if k in next(iter(r["steps"].values()))]
        lines.append("| B | " + " | ".join(names) + " | compiled / best peer | compiled / limit |")
        lines.append("|---:|" + "---:|" * (len(names) + 2))
        for B, s in r["steps"].items():
            med = {k: _median(v) for k, v in s.items()}
            cells = [f"{_fmt(med[k])} [{_fmt(min(s[k]))} – {_fmt(max(s[k]))}]" for k in names]
            peers_here = [k for k in PEERS if k in med]
            best = max(peers_here, key=lambda k: med[k])
            lines.append(f"| {B} | " + " | ".join(cells) +
                         f" | {med['cygrad-compiled'] / med[best]:.2f}x ({best}) | "
                         f"{med['cygrad-compiled'] / limit:.0%} |")
        lines += ["", "Ratio of cygrad-compiled to each (median / median):", ""]
        lines.append("| B | " + " | ".join(k for k in names if k != "cygrad-compiled") + " |")
        lines.append("|---:|" + "---:|" * (len(names) - 1))
        for B, s in r["steps"].items():
            med = {k: _median(v) for k, v in s.items()}
            lines.append(f"| {B} | " + " | ".join(
                f"{med['cygrad-compiled'] / med[k]:.2f}x" for k in names if k != "cygrad-compiled")
                + " |")
        if "cygrad-graph" in names:
            ratios = ", ".join(
                f"B={B} {_median(s['cygrad-compiled']) / _median(s['cygrad-graph']):.2f}"
                for B, s in r["steps"].items())
            lines += ["", "cygrad's graph executor vs its compiled step (time ratio, graph / "
                      f"compiled): {ratios}"]
        if nt == max(x["threads"] for x in results):
            lines += ["", f"Targets of issue #6 at {nt} threads (cygrad-compiled / best peer):", ""]
            for B, want in TARGETS.items():
                s = r["steps"].get(str(B)) or r["steps"].get(B)
                if s is None:
                    continue
                med = {k: _median(v) for k, v in s.items()}
                best = max((k for k in PEERS if k in med), key=lambda k: med[k])
                got = med["cygrad-compiled"] / med[best]
                lines.append(f"- B = {B}: {got:.2f}x {best} (target ≥ {want}x): "
                             f"{'met' if got >= want else 'NOT met'}")
            s = r["steps"].get("32") or r["steps"].get(32)
            if s and "cygrad-graph" in s:
                g = _median(s["cygrad-compiled"]) / _median(s["cygrad-graph"])
                lines.append(f"- graph executor within 1.5x of the compiled step at B = 32: "
                             f"{g:.2f}x ({'met' if g <= 1.5 else 'NOT met'})")
        lines += ["", "Kernels (µs per call, median [min – max]; B = 512):", ""]
        kimpls = ["cygrad", "numpy", "torch", "jax"]
        lines.append("| kernel | " + " | ".join(kimpls) +
                     " | numpy / cygrad | best peer / cygrad |")
        lines.append("|---|" + "---:|" * (len(kimpls) + 2))
        for name, t in r["kernels"].items():
            med = {k: _median(v) for k, v in t.items()}
            cells = [f"{med[k]:.1f} [{min(t[k]):.1f} – {max(t[k]):.1f}]" if k in med else "–"
                     for k in kimpls]
            best = min(v for k, v in med.items() if k != "cygrad")
            lines.append(f"| {name} | " + " | ".join(cells) +
                         f" | {med['numpy'] / med['cygrad']:.2f}x | {best / med['cygrad']:.2f}x |")
        o = {k: _median(v) for k, v in r["op_overhead"].items()}
        lines += ["", "Graph per-op overhead, `(a + b).sum().backward()` on 1-element tensors: "
                  + ", ".join(f"{k} {v:.1f} µs" for k, v in o.items())]
    lines += ["", "Agreement with NumPy after 3 steps (max |difference| / max |value| over the "
              "five arrays), per batch size, at each thread count:", ""]
    for r in results:
        for B, errs in r["checks"].items():
            lines.append(f"- {r['threads']}t B={B}: " + ", ".join(
                f"{k} {v:.1e}" for k, v in errs.items() if k != "numpy"))
    lines += ["", "![windows/s against batch size](peers.png)", ""]
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, "peers.md")
    with open(md, "w") as f:
        f.write("\n".join(lines))
    _chart(results, os.path.join(out_dir, "peers.png"))
    return md


def _chart(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, r in zip(axes[0], results):
        Bs = [int(b) for b in r["steps"]]
        for name in ORDER:
            if name not in next(iter(r["steps"].values())):
                continue
            med = [_median(r["steps"][b][name]) for b in r["steps"]]
            lo = [min(r["steps"][b][name]) for b in r["steps"]]
            hi = [max(r["steps"][b][name]) for b in r["steps"]]
            line, = ax.plot(Bs, med, marker="o", label=name,
                            linewidth=2.5 if name == "cygrad-compiled" else 1.5)
            ax.fill_between(Bs, lo, hi, color=line.get_color(), alpha=0.15)
        limit = max(r["peak_gflops"].values()) * 1e9 / 466_200
        ax.axhline(limit, color="black", linestyle="--", linewidth=1,
                   label=f"FLOP limit ({max(r['peak_gflops'].values()):.0f} GFLOP/s sgemm)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel("training windows / s")
        ax.set_title(f"window model SGD step, {r['threads']} thread"
                     f"{'s' if r['threads'] > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-results", help="directory for peers.md and peers.png")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=BATCHES)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.batch, args.json)
        return
    results = run_workers(__file__, args.threads, ["--batch", *map(str, args.batch)])
    md = report(results, args.out)
    print(open(md).read())
    print(f"\nwrote {md} and {os.path.join(args.out, 'peers.png')}")


if __name__ == "__main__":
    main()
