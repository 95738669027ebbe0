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
from peers import LR, CygradGraph, make_batches, make_params


def make_batch(B, seed=1):
    return make_batches(B, n=1, seed=seed)[0]


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


class GraphStep(CygradGraph):
    """The same step on the graph executor (benches/peers.py)."""

    def __init__(self, p):
        super().__init__(p, None)

    def __call__(self, windows, labels):
        self.step(windows, labels)


def test_graph_step_equals_direct_step():
    p = make_params()
    d, g = DirectStep(p), GraphStep(p)
    for s in range(3):
        windows, labels = make_batch(32, seed=s)
        d(windows, labels)
        g(windows, labels)
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
