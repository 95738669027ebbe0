"""A network of your own against PyTorch and JAX: the same 2-layer MLPs written with
cygrad.nn and compiled, with PyTorch eager and with JAX jit (optax's Adam when
installed, else Adam written out): "mlp", 784-256-10 on random inputs, batch 128, and
"digits", scikit-learn's handwritten digits (load_digits: 1,797 8x8 images, scaled to
[0, 1]) through 64-128-10, batch 32, the classifier a new user writes first; ReLU,
Adam, float32. Also the Adam kernel alone against torch.optim.Adam on a
10^6-element parameter; samples/s (or updates/s), at 1 and 2 threads, idle and
beside a busy process, in one interleaved run.

    python benches/report_mlp.py [--rounds 9] [--seconds 0.3] [--out benches/results/mlp.md]

Needs `pip install ".[bench]"`, `pip install torch==2.13.0` and `pip install jax
jaxlib optax` (a peer that is not installed is left out, and said so); the digits
need scikit-learn (left out without it).

How it is fair:
- one worker process per thread count, kept alive for the whole run, with every
  library told the count (cygrad.set_num_threads, torch.set_num_threads, XLA's
  flags) and the 1-thread worker pinned to one core (recent JAX ignores its thread
  flags);
- every implementation starts from the same parameters and is first checked to
  reach the same parameters and losses after 3 steps;
- round after round, for each machine state (idle, then a CPU-bound loop pinned to
  the last core; the order alternates between rounds) and each worker, every case
  is timed for a block of ~0.3 s in rotating order, after an untimed warm call,
  with 0.1 s of sleep between blocks so that no library's spinning threads slow the
  next one; the report gives medians over the rounds, and the ratios cygrad / peer
  as the median of the per-round ratios with their range;
- the 8 batches cycle, so no implementation sees the same inputs twice running.
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
LR = 1e-3
N_ADAM = 10 ** 6
#: model name -> (inputs, hidden, classes, batch)
MODELS = {"mlp": (784, 256, 10, 128), "digits": (64, 128, 10, 32)}
D_IN, D_H, D_OUT, B = MODELS["mlp"]


# ------------------------------------------------------------------ the models

def make_params(model="mlp", seed=0):
    """PyTorch's nn.Linear initialisation, in PyTorch's layout (out, in)."""
    d_in, d_h, d_out, _ = MODELS[model]
    rng = np.random.default_rng(seed)
    out = {}
    for name, (o, i) in (("0", (d_h, d_in)), ("2", (d_out, d_h))):
        bound = 1.0 / np.sqrt(i)
        out[f"{name}.weight"] = rng.uniform(-bound, bound, (o, i)).astype(np.float32)
        out[f"{name}.bias"] = rng.uniform(-bound, bound, o).astype(np.float32)
    return out


def make_batches(model="mlp", n=8, seed=1):
    """n batches of the model's data: random inputs ("mlp"), or shuffled batches of the
    digits (None without scikit-learn)."""
    d_in, _, d_out, b = MODELS[model]
    rng = np.random.default_rng(seed)
    if model == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            return None
        X, y = load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32)
        idx = rng.permutation(len(y))[:n * b].reshape(n, b)
        return [(np.ascontiguousarray(X[i]), y[i].astype(np.int64)) for i in idx]
    return [(rng.standard_normal((b, d_in)).astype(np.float32),
             rng.integers(0, d_out, b).astype(np.int64)) for _ in range(n)]


class Cygrad:
    name = "cygrad"

    def __init__(self, params):
        import cygrad as cg
        from cygrad import nn, optim
        (h, d_in), (d_out, _) = params["0.weight"].shape, params["2.weight"].shape
        self.model = nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, d_out))
        self.model.load_state_dict(params)
        self.opt = optim.Adam(self.model.parameters(), lr=LR)
        self.step = cg.compile(lambda x, y: cg.softmax_cross_entropy(self.model(x), y),
                               optimizer=self.opt, strict=True)

    def __call__(self, x, y):
        return self.step(x, y)

    def sync(self):
        pass

    def arrays(self):
        return self.model.state_dict()


class Torch:
    name = "torch"

    def __init__(self, params):
        import torch
        self.torch = torch
        (h, d_in), (d_out, _) = params["0.weight"].shape, params["2.weight"].shape
        self.model = torch.nn.Sequential(torch.nn.Linear(d_in, h), torch.nn.ReLU(),
                                         torch.nn.Linear(h, d_out))
        self.model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()})
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, foreach=True)

    def __call__(self, x, y):
        torch = self.torch
        loss = torch.nn.functional.cross_entropy(self.model(torch.from_numpy(x)),
                                                 torch.from_numpy(y))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def sync(self):
        pass

    def arrays(self):
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}


class Jax:
    name = "jax"

    def __init__(self, params):
        import jax
        import jax.numpy as jnp
        self.jax = jax
        try:
            import optax
            tx = optax.adam(LR)
            self.adam = "optax.adam"
        except ImportError:
            tx = None
            self.adam = "Adam written out"
        p = {k: jnp.asarray(v) for k, v in params.items()}

        def loss_fn(p, x, y):
            h = jax.nn.relu(x @ p["0.weight"].T + p["0.bias"])
            logits = h @ p["2.weight"].T + p["2.bias"]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

        grad = jax.value_and_grad(loss_fn)
        if tx is not None:
            state = tx.init(p)

            def step(p, state, x, y):
                loss, g = grad(p, x, y)
                updates, state = tx.update(g, state, p)
                return optax.apply_updates(p, updates), state, loss
        else:
            state = (jax.tree.map(jnp.zeros_like, p), jax.tree.map(jnp.zeros_like, p),
                     jnp.zeros((), jnp.int32))

            def step(p, state, x, y):
                loss, g = grad(p, x, y)
                m, v, t = state
                t = t + 1
                m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
                v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
                c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
                p = jax.tree.map(lambda p, m, v: p - LR * (m / c1) / (jnp.sqrt(v / c2) + 1e-8),
                                 p, m, v)
                return p, (m, v, t), loss
        self.fn = jax.jit(step, donate_argnums=(0, 1))
        self.p, self.state = p, state
        self.loss = None

    def __call__(self, x, y):
        self.p, self.state, self.loss = self.fn(self.p, self.state, x, y)
        return self.loss

    def sync(self):
        self.jax.block_until_ready(self.p)

    def arrays(self):
        self.sync()
        return {k: np.asarray(v).copy() for k, v in self.p.items()}


def implementations():
    """[class] of the implementations importable here, and {name: why not} of the rest."""
    out, missing = [Cygrad], {}
    for cls, mod in ((Torch, "torch"), (Jax, "jax")):
        try:
            __import__(mod)
            out.append(cls)
        except ImportError as e:
            missing[cls.name] = str(e)
    return out, missing


def check_same(impls, batches, steps=3):
    """Every implementation reaches the same losses and parameters as cygrad."""
    ref = None
    for impl in impls:
        losses = [float(impl(*batches[i])) for i in range(steps)]
        impl.sync()
        got = (losses, impl.arrays())
        if ref is None:
            ref = got
            continue
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, err_msg=f"{impl.name}: losses")
        for k, a in ref[1].items():
            # 3 Adam steps move an element by at most 3 lr = 3e-3: a wrong update is
            # off by ~1e-3, rounding by ~1e-7
            np.testing.assert_allclose(got[1][k], a, rtol=0, atol=1e-4,
                                       err_msg=f"{impl.name}: {k} after {steps} steps")


# -------------------------------------------------------------- the Adam kernel

def adam_cases():
    """{name: call} updating one 10^6-element float32 parameter."""
    from cygrad import kernels as K
    from cygrad import nn, optim
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal(N_ADAM).astype(np.float32)
    g0 = rng.standard_normal(N_ADAM).astype(np.float32)
    cases = {}
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    t = [0]

    def kernel():
        t[0] += 1
        K.adam_update(p, m, v, g0, t[0], 1e-6)
    cases["adam: cygrad.kernels.adam_update"] = kernel
    prm = nn.Parameter(p0.copy())
    prm.grad = g0.copy()
    opt = optim.Adam([prm], lr=1e-6)
    cases["adam: cygrad.optim.Adam.step"] = opt.step
    try:
        import torch
    except ImportError:
        return cases
    for label, kw in (("foreach=True", {"foreach": True}), ("fused=True", {"fused": True})):
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        tp.grad = torch.from_numpy(g0.copy())
        topt = torch.optim.Adam([tp], lr=1e-6, **kw)
        cases[f"adam: torch.optim.Adam({label})"] = topt.step
    return cases


def check_adam():
    """cygrad's kernel and torch's Adam agree after 3 steps (else the timing is moot)."""
    try:
        import torch
    except ImportError:
        return
    from cygrad import kernels as K
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(1000).astype(np.float32)
    gs = [rng.standard_normal(1000).astype(np.float32) for _ in range(3)]
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    topt = torch.optim.Adam([tp], lr=1e-2, foreach=True)
    for i, g in enumerate(gs):
        K.adam_update(p, m, v, g, i + 1, 1e-2)
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ the worker

def worker(nt):
    if nt == 1:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
    import cygrad as cg
    cg.set_num_threads(nt)
    try:
        import torch
        torch.set_num_threads(nt)
    except ImportError:
        pass
    classes, missing = implementations()
    check_adam()
    cases, info = {}, {"missing": missing}
    for model in MODELS:
        params, batches = make_params(model), make_batches(model)
        if batches is None:
            missing[f"{model} (scikit-learn)"] = "load_digits needs scikit-learn"
            continue
        check_same([cls(params) for cls in classes], batches)
        for impl in [cls(params) for cls in classes]:
            it = [0]

            def call(impl=impl, it=it, batches=batches):
                x, y = batches[it[0] % len(batches)]
                it[0] += 1
                impl(x, y)
            cases[f"{model}: {impl.name}"] = (call, impl.sync, MODELS[model][3])
            if impl.name == "jax":
                info["jax_adam"] = impl.adam
    for name, fn in adam_cases().items():
        cases[name] = (fn, lambda: None, 1)
    for call, sync, _ in cases.values():       # warm-up (and JAX's compilation)
        for _ in range(3):
            call()
        sync()
    info.update(ready=True, cases=list(cases), versions=_versions())
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        call, sync, per_call = cases[req["case"]]
        call()
        sync()
        n, t0 = 0, time.perf_counter()
        deadline = t0 + req["seconds"]
        while True:
            call()
            n += 1
            if n % 4 == 0 or time.perf_counter() >= deadline:
                sync()
                t = time.perf_counter()
                if t >= deadline:
                    break
        print(json.dumps({"rate": n * per_call / (t - t0)}), flush=True)


def _versions():
    out = {"python": platform.python_version(), "numpy": np.__version__}
    import cygrad
    out["cygrad"] = cygrad.__version__
    for mod in ("torch", "jax", "optax"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


# ------------------------------------------------------------- the coordinator

from _harness import Busy, write_report  # noqa: E402  (benches/_harness.py)


class Worker:
    def __init__(self, nt):
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS=str(nt), OPENBLAS_NUM_THREADS=str(nt), MKL_NUM_THREADS=str(nt),
                   XLA_FLAGS=(env.get("XLA_FLAGS", "") +
                              f" --xla_cpu_multi_thread_eigen={'true' if nt > 1 else 'false'}"
                              f" intra_op_parallelism_threads={nt}").strip())
        self.nt = nt
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", str(nt)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"the {nt}-thread worker failed to start (see its traceback above)")
        self.info = json.loads(line)

    def rate(self, case, seconds):
        self.p.stdin.write(json.dumps({"case": case, "seconds": seconds}) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())["rate"]

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def _fmt_rate(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.3, help="seconds per timed block")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-busy", action="store_true", help="idle rounds only")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "mlp.md"))
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker)
    cores = sorted(os.sched_getaffinity(0))
    workers = {nt: Worker(nt) for nt in a.threads}
    info = workers[a.threads[0]].info
    cases = info["cases"]
    states = ["idle"] if a.no_busy else ["idle", "busy"]
    busy = Busy(cores[-1])
    rates = {(s, nt, c): [] for s in states for nt in a.threads for c in cases}
    t_start = time.time()
    for r in range(a.rounds):
        order = states if r % 2 == 0 else states[::-1]
        for state in order:
            (busy.start if state == "busy" else busy.stop)()
            for nt in a.threads:
                k = r % len(cases)
                for case in cases[k:] + cases[:k]:
                    rates[(state, nt, case)].append(workers[nt].rate(case, a.seconds))
                    time.sleep(0.1)
        print(f"round {r + 1}/{a.rounds} done ({time.time() - t_start:.0f} s)", file=sys.stderr)
    busy.stop()
    for w in workers.values():
        w.close()
    report(a, info, cases, states, rates, cores)


def _ratio(rates, key_a, key_b):
    rs = [x / y for x, y in zip(rates[key_a], rates[key_b])]
    return statistics.median(rs), min(rs), max(rs)


def report(a, info, cases, states, rates, cores):
    med = {k: statistics.median(v) for k, v in rates.items()}
    v = info["versions"]
    lines = [
        "# Two MLPs (random inputs; the digits) and the Adam kernel: cygrad, PyTorch, JAX",
        "",
        f"`python benches/report_mlp.py --rounds {a.rounds} --seconds {a.seconds}` on "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"{time.strftime('%Y-%m-%d')}; " + ", ".join(f"{k} {x}" for k, x in v.items()) + ". "
        f"JAX's Adam: {info.get('jax_adam', 'n/a')}. Busy: a CPU-bound loop pinned to core "
        f"{cores[-1]}; the 1-thread workers run on core {cores[0]}.",
        "",
        f"mlp: 784-{D_H}-10 on random inputs, batch {B}; digits: scikit-learn's "
        f"load_digits (scaled to [0, 1]), 64-{MODELS['digits'][1]}-10, batch "
        f"{MODELS['digits'][3]}; ReLU, Adam (lr 1e-3), float32: samples/s (median of "
        f"{a.rounds} rounds). Adam on one 10^6-element float32 parameter: updates/s. "
        f"Ratios cygrad / peer: higher means cygrad is faster.",
        "",
    ]
    if info["missing"]:
        lines += ["Not installed (left out): " + ", ".join(f"{k} ({x})" for k, x in
                                                           info["missing"].items()), ""]
    header = "| case | " + " | ".join(f"{s}, {nt} thr" for s in states for nt in a.threads) + " |"
    lines += [header, "|---" + "|---:" * (len(states) * len(a.threads)) + "|"]
    for c in cases:
        lines.append(f"| {c} | " + " | ".join(_fmt_rate(med[(s, nt, c)]) for s in states
                                                for nt in a.threads) + " |")
    lines += ["", "cygrad / peer, the median of the per-round ratios [min, max]:", "",
              header.replace("| case |", "| cygrad / peer |"),
              "|---" + "|---:" * (len(states) * len(a.threads)) + "|"]
    pairs = [(f"{m}: cygrad", c) for m in MODELS for c in cases
             if c.startswith(f"{m}:") and c != f"{m}: cygrad"]
    pairs += [(k, c) for k in ("adam: cygrad.kernels.adam_update", "adam: cygrad.optim.Adam.step")
              for c in cases if c.startswith("adam: torch")]
    for mine, peer in pairs:
        cells = []
        for s in states:
            for nt in a.threads:
                m, lo, hi = _ratio(rates, (s, nt, mine), (s, nt, peer))
                cells.append(f"{m:.2f} [{lo:.2f}, {hi:.2f}]")
        label = f"{mine.split(': ')[0]}: " if not mine.startswith("adam") else ""
        lines.append(f"| {label}{mine.split(': ')[1]} / {peer.split(': ')[1]} | "
                     + " | ".join(cells) + " |")
    if len(a.threads) > 1:
        lines += ["", f"{a.threads[-1]} threads / {a.threads[0]} thread (same case, medians):", "",
                  "| case | " + " | ".join(states) + " |", "|---" + "|---:" * len(states) + "|"]
        for c in cases:
            lines.append(f"| {c} | " + " | ".join(
                f"{med[(s, a.threads[-1], c)] / med[(s, a.threads[0], c)]:.2f}"
                for s in states) + " |")
    write_report(a.out, lines)


if __name__ == "__main__":
    main()
