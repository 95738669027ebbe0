"""Graph-executor overhead: a training step of the window model built from graph
ops against the same step written directly with cygrad.kernels calls.

Window model: B windows of 5 words, d = 50 (x: B x 250), H = 300, tanh,
C = 9, softmax cross-entropy, SGD on W, b, U, c and the windows' embedding rows
(V = 20,000). Groups "train step B=<B>": impl "direct" vs "graph".
Per-op overhead: group "op overhead": one tiny add, forward + backward,
for cygrad's graph and (when installed) PyTorch eager.

Run: python -m pytest benches/bench_graph.py --benchmark-only
"""

import numpy as np
import pytest

import cygrad as cg
from cygrad import kernels as K
from cygrad.optim import SGD

V, D, W, H, C = 20_000, 50, 5, 300, 9
LR = 0.01


def make_params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {
        "E": (rng.standard_normal((V, D)) * 0.1).astype(dtype),
        "W": (rng.standard_normal((H, W * D)) * np.sqrt(1 / (W * D))).astype(dtype),
        "b": np.zeros(H, dtype),
        "U": (rng.standard_normal((C, H)) * np.sqrt(1 / H)).astype(dtype),
        "c": np.zeros(C, dtype),
    }


def make_batch(B, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, W)), rng.integers(0, C, B)


class DirectStep:
    """The step as explicit kernel calls: delta computed once and reused."""

    def __init__(self, p):
        self.p = {k: v.copy() for k, v in p.items()}

    def __call__(self, windows, labels, lr=LR):
        p = self.p
        X = K.embedding_gather(p["E"], windows)
        Z = K.add_bias(K.matmul(X, p["W"], trans_b=True), p["b"])
        Hh = K.tanh(Z, out=Z)
        S = K.add_bias(K.matmul(Hh, p["U"], trans_b=True), p["c"])
        loss, dS = K.softmax_cross_entropy(S, labels, out=S)
        dU = K.matmul(dS, Hh, trans_a=True)
        dc = K.bias_grad(dS)
        dZ = K.tanh_backward(K.matmul(dS, p["U"]), Hh)     # delta = (U^T dS) * (1 - h^2)
        dW = K.matmul(dZ, X, trans_a=True)
        db = K.bias_grad(dZ)
        dX = K.matmul(dZ, p["W"])
        K.sgd_update(p["U"], dU, lr)
        K.sgd_update(p["c"], dc, lr)
        K.sgd_update(p["W"], dW, lr)
        K.sgd_update(p["b"], db, lr)
        K.embedding_sgd_update(p["E"], windows, dX, lr)
        return loss


class GraphStep:
    def __init__(self, p):
        self.t = {k: cg.tensor(v, requires_grad=True) for k, v in p.items()}
        self.opt = SGD(self.t.values(), lr=LR)

    def __call__(self, windows, labels):
        t = self.t
        x = cg.embedding_windows(t["E"], windows, sparse=True)
        h = cg.tanh(cg.linear(x, t["W"], t["b"]))
        loss = cg.softmax_cross_entropy(cg.linear(h, t["U"], t["c"]), labels)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()


def test_graph_step_equals_direct_step():
    p = make_params()
    d, g = DirectStep(p), GraphStep(p)
    for s in range(3):
        windows, labels = make_batch(32, seed=s)
        assert d(windows, labels) == pytest.approx(g(windows, labels), rel=1e-5)
    for k in p:
        np.testing.assert_allclose(d.p[k], g.t[k].data, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["direct", "graph"])
@pytest.mark.parametrize("B", [1, 32, 512])
def test_train_step(benchmark, impl, B, nthreads):
    benchmark.group = f"train step B={B}"
    benchmark.extra_info.update(impl=impl, threads=nthreads)
    step = (DirectStep if impl == "direct" else GraphStep)(make_params())
    windows, labels = make_batch(B)
    benchmark(step, windows, labels)


@pytest.mark.parametrize("impl", ["cygrad", "torch"])
def test_op_overhead(benchmark, impl):
    """One tiny op (a + b on 1-element tensors), forward and backward."""
    benchmark.group = "op overhead: add, forward + backward"
    benchmark.extra_info.update(impl=impl, threads=1)
    if impl == "torch":
        torch = pytest.importorskip("torch")
        a = torch.ones(1, requires_grad=True)
        b = torch.ones(1, requires_grad=True)

        def run():
            (a + b).sum().backward()
    else:
        a = cg.tensor(np.ones(1, np.float32), requires_grad=True)
        b = cg.tensor(np.ones(1, np.float32), requires_grad=True)

        def run():
            (a + b).sum().backward()
    benchmark(run)
