"""Each kernel against its NumPy reference at the window model's sizes
(B in {32, 512, 4096}, w*d = 250, H = 300, C = 9) and at large sizes.

Run: python -m pytest benches --benchmark-only    (ratios: python benches/report_kernels.py)
Groups are "<op> <size>"; within a group, rows differ by implementation
(extra_info["impl"]) and thread count (extra_info["threads"]).
"""

import numpy as np
import pytest

from cygrad import kernels as K
from cygrad import reference as R

IMPLS = {"cygrad": K, "numpy": R}
impl_param = pytest.mark.parametrize("impl", list(IMPLS))
BATCHES = [32, 512, 4096]
V, D, W, H, C = 20_000, 50, 5, 300, 9


def _setup(benchmark, group, impl, nthreads):
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, threads=nthreads)
    return IMPLS[impl]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@impl_param
@pytest.mark.parametrize("B", BATCHES)
def test_softmax_cross_entropy(benchmark, impl, B, nthreads, rng):
    m = _setup(benchmark, f"softmax_cross_entropy B={B} C={C}", impl, nthreads)
    logits = rng.standard_normal((B, C)).astype(np.float32)
    labels = rng.integers(0, C, B)
    benchmark(m.softmax_cross_entropy, logits, labels)


@impl_param
@pytest.mark.parametrize("name", sorted(K.ACTIVATIONS))
@pytest.mark.parametrize("n", [32 * H, 1_000_000])
def test_activation_forward_backward(benchmark, impl, name, n, nthreads, rng):
    m = _setup(benchmark, f"{name} fwd+bwd n={n}", impl, nthreads)
    f, fb, saves = m.ACTIVATIONS[name]
    z = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)

    def step():
        y = f(z)
        return fb(g, y if saves == "output" else z)

    benchmark(step)


@impl_param
@pytest.mark.parametrize("B", BATCHES)
def test_embedding_scatter_add(benchmark, impl, B, nthreads, rng):
    m = _setup(benchmark, f"embedding_scatter_add B={B} w={W} d={D}", impl, nthreads)
    grad = np.zeros((V, D), np.float32)
    windows = rng.integers(0, V, (B, W))
    dX = rng.standard_normal((B, W * D)).astype(np.float32)
    benchmark(m.embedding_scatter_add, grad, windows, dX)


@impl_param
@pytest.mark.parametrize("B", BATCHES)
def test_embedding_sgd_update(benchmark, impl, B, nthreads, rng):
    m = _setup(benchmark, f"embedding_sgd_update B={B} w={W} d={D}", impl, nthreads)
    table = rng.standard_normal((V, D)).astype(np.float32)
    windows = rng.integers(0, V, (B, W))
    dX = rng.standard_normal((B, W * D)).astype(np.float32) * 1e-6
    benchmark(m.embedding_sgd_update, table, windows, dX, 0.01)


@impl_param
@pytest.mark.parametrize("B", BATCHES)
def test_embedding_gather(benchmark, impl, B, nthreads, rng):
    m = _setup(benchmark, f"embedding_gather B={B} w={W} d={D}", impl, nthreads)
    table = rng.standard_normal((V, D)).astype(np.float32)
    windows = rng.integers(0, V, (B, W))
    benchmark(m.embedding_gather, table, windows)


@impl_param
@pytest.mark.parametrize("B", [1, 8, 32, 128, 512, 4096])
@pytest.mark.parametrize("product", ["Z=XWt", "dX=dZW", "dW=dZtX"])
def test_matmul_window(benchmark, impl, B, product, nthreads, rng):
    """The window model's three products, X: B x 250, W: 300 x 250, dZ: B x 300."""
    m = _setup(benchmark, f"matmul {product} B={B}", impl, nthreads)
    X = rng.standard_normal((B, W * D)).astype(np.float32)
    Wt = rng.standard_normal((H, W * D)).astype(np.float32)
    dZ = rng.standard_normal((B, H)).astype(np.float32)
    args = {"Z=XWt": (X, Wt, False, True), "dX=dZW": (dZ, Wt, False, False),
            "dW=dZtX": (dZ, X, True, False)}[product]
    benchmark.extra_info["flops"] = 2 * B * H * W * D
    benchmark(m.matmul, *args)


@impl_param
@pytest.mark.parametrize("n,dtype", [(512, "f32"), (1024, "f32"), (2048, "f32"),
                                     (1024, "f64")], ids=["512f32", "1024f32", "2048f32",
                                                          "1024f64"])
def test_matmul_square(benchmark, impl, n, dtype, nthreads, rng):
    m = _setup(benchmark, f"matmul square {n} {dtype}", impl, nthreads)
    dt = np.float32 if dtype == "f32" else np.float64
    a = rng.standard_normal((n, n)).astype(dt)
    b = rng.standard_normal((n, n)).astype(dt)
    benchmark.extra_info["flops"] = 2 * n ** 3
    benchmark(m.matmul, a, b)


@impl_param
@pytest.mark.parametrize("B", BATCHES)
def test_bias(benchmark, impl, B, nthreads, rng):
    m = _setup(benchmark, f"add_bias+bias_grad B={B} H={H}", impl, nthreads)
    z = rng.standard_normal((B, H)).astype(np.float32)
    b = rng.standard_normal(H).astype(np.float32)

    def step():
        m.add_bias(z, b)
        return m.bias_grad(z)

    benchmark(step)


@impl_param
@pytest.mark.parametrize("shape", [(H, W * D), (V, D)], ids=["W", "E"])
def test_sgd_update(benchmark, impl, shape, nthreads, rng):
    m = _setup(benchmark, f"sgd_update {shape[0]}x{shape[1]}", impl, nthreads)
    p = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32) * 1e-6
    benchmark(m.sgd_update, p, g, 0.01)
