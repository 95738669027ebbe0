"""The window model's training step written for each peer, from one start.

Model (issue #6): V = 20,000 words, d = 50, windows of 5 (x: 250), H = 300, tanh,
C = 9 classes, softmax cross-entropy averaged over the batch, plain SGD on every
parameter including the embedding rows of each window. Every implementation is
a class with ``step(windows, labels)`` (returns nothing; loss computed but not
synchronised) and ``arrays()`` (the five arrays as NumPy, for the check).

Implementations:
    cygrad-compiled cygrad.ner.WindowTrainer (cygrad.compile of the window model: one call per step)
    cygrad-graph   cygrad's graph executor + cygrad.optim.SGD, sparse rows for E
    numpy          cygrad.kernels.reference.WindowTrainer (hand-written NumPy, np.add.at)
    torch-dense    PyTorch eager autograd, dense gradient for E, torch.optim.SGD
    torch-sparse   PyTorch eager autograd, F.embedding(sparse=True), torch.optim.SGD
    jax            JAX, the whole step one jitted function (gradients wrt the
                   gathered windows, scattered into E with .at[].add), buffers donated
"""

import numpy as np

import cygrad as cg
from cygrad import reference as R
from cygrad.ner import WindowTrainer
from cygrad.optim import SGD

V, D, WIN, H, C = 20_000, 50, 5, 300, 9
LR = 0.05
FLOPS_PER_WINDOW = 6 * (WIN * D * H + H * C)      # 466,200: 3 products per layer


def make_params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {
        "E": (rng.standard_normal((V, D)) * 0.1).astype(dtype),
        "W": (rng.standard_normal((H, WIN * D)) * np.sqrt(1 / (WIN * D))).astype(dtype),
        "b": np.zeros(H, dtype),
        "U": (rng.standard_normal((C, H)) * np.sqrt(1 / H)).astype(dtype),
        "c": np.zeros(C, dtype),
    }


def make_batches(B, n=8, seed=1):
    """n different batches (cycled by the timing loop), words drawn with a Zipf-like
    skew so that frequent words repeat within a batch, as in text."""
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.3, (n, B, WIN)), V) - 1
    perm = rng.permutation(V)
    return [(perm[ranks[i]].astype(np.int64), rng.integers(0, C, B)) for i in range(n)]


class CygradCompiled:
    name = "cygrad-compiled"

    def __init__(self, p, threads):
        self.t = WindowTrainer(**p, threads=threads)

    def step(self, windows, labels):
        self.t.step(windows, labels, LR)

    def arrays(self):
        return self.t.arrays()


class CygradGraph:
    name = "cygrad-graph"

    def __init__(self, p, threads):
        self.t = {k: cg.tensor(v, requires_grad=True) for k, v in p.items()}
        self.opt = SGD(self.t.values(), lr=LR)

    def step(self, windows, labels):
        t = self.t
        x = cg.embedding_windows(t["E"], windows, sparse=True)
        h = cg.tanh(cg.linear(x, t["W"], t["b"]))
        loss = cg.softmax_cross_entropy(cg.linear(h, t["U"], t["c"]), labels)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def arrays(self):
        return {k: v.data.copy() for k, v in self.t.items()}


class NumpyStep:
    name = "numpy"

    def __init__(self, p, threads):
        self.t = R.WindowTrainer(**p)

    def step(self, windows, labels):
        self.t.step(windows, labels, LR)

    def arrays(self):
        return self.t.arrays()


class TorchStep:
    def __init__(self, p, threads, sparse):
        import torch
        import torch.nn.functional as F
        self.torch, self.F, self.sparse = torch, F, sparse
        self.name = "torch-sparse" if sparse else "torch-dense"
        self.p = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
        self.opt = torch.optim.SGD(list(self.p.values()), lr=LR)

    def step(self, windows, labels):
        torch, F, p = self.torch, self.F, self.p
        w = torch.from_numpy(windows)
        y = torch.from_numpy(labels)
        if self.sparse:
            x = F.embedding(w, p["E"], sparse=True)
        else:
            x = p["E"][w]
        x = x.reshape(len(windows), -1)
        h = torch.tanh(F.linear(x, p["W"], p["b"]))
        loss = F.cross_entropy(F.linear(h, p["U"], p["c"]), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def arrays(self):
        return {k: v.detach().numpy().copy() for k, v in self.p.items()}


class JaxStep:
    name = "jax"

    def __init__(self, p, threads):
        import jax
        import jax.numpy as jnp
        self.jax = jax

        def loss_fn(W, b, U, c, X, y):
            h = jnp.tanh(X @ W.T + b)
            s = h @ U.T + c
            logp = jax.nn.log_softmax(s)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        grad = jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3, 4))

        def step(params, windows, y):
            E, W, b, U, c = params
            X = E[windows].reshape(windows.shape[0], -1)
            loss, (gW, gb, gU, gc, gX) = grad(W, b, U, c, X, y)
            E = E.at[windows].add(-LR * gX.reshape(windows.shape + (E.shape[1],)))
            return (E, W - LR * gW, b - LR * gb, U - LR * gU, c - LR * gc), loss

        self.fn = jax.jit(step, donate_argnums=0)
        self.params = tuple(jnp.asarray(p[k]) for k in "EWbUc")

    def step(self, windows, labels):
        self.params, loss = self.fn(self.params, windows, labels)

    def sync(self):
        self.jax.block_until_ready(self.params)

    def arrays(self):
        self.sync()
        return {k: np.asarray(v).copy() for k, v in zip("EWbUc", self.params)}


def available():
    """{name: factory(params, threads)} for every implementation importable here."""
    impls = {
        "cygrad-compiled": CygradCompiled,
        "cygrad-graph": CygradGraph,
        "numpy": NumpyStep,
    }
    try:
        import torch  # noqa: F401
        impls["torch-dense"] = lambda p, t: TorchStep(p, t, sparse=False)
        impls["torch-sparse"] = lambda p, t: TorchStep(p, t, sparse=True)
    except ImportError:
        pass
    try:
        import jax  # noqa: F401
        impls["jax"] = JaxStep
    except ImportError:
        pass
    return impls


def check_same(impls, B, steps=3, rtol=2e-3, atol=2e-5):
    """Run each implementation `steps` steps from the same start on the same batches
    (float32) and compare every parameter with NumPy's; returns {name: max error
    relative to each array's scale}; raises AssertionError on a mismatch."""
    p = make_params()
    batches = make_batches(B, n=steps, seed=7)
    results = {}
    for name, factory in impls.items():
        impl = factory(p, None)
        for w, lab in batches:
            impl.step(w, lab)
        results[name] = impl.arrays()
    ref = results["numpy"]
    errors = {}
    for name, arrays in results.items():
        err = 0.0
        for k in "EWbUc":
            diff = np.abs(arrays[k].astype(np.float64) - ref[k])
            np.testing.assert_array_less(diff, atol + rtol * np.abs(ref[k]) + 1e-30,
                                         err_msg=f"{name} differs from numpy in {k} at B={B}")
            err = max(err, float(diff.max() / (np.abs(ref[k]).max() + 1e-30)))
        errors[name] = err
    return errors
