"""matmul and outer_accumulate against NumPy, with tolerances from the inner dimension."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cygrad import kernels as K
from cygrad import reference as R
from helpers import readonly, run_with_threads

SIZES = [1, 7, 17, 255, 257]


def _operands(rng, m, n, k, ta, tb, dtype):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def assert_gemm_close(c, a, b, ta, tb, base=None):
    """|C - exact| <= c * eps * sqrt(k) * (|op(a)| @ |op(b)|): the error of a
    length-k floating-point dot product grows like sqrt(k) in practice."""
    A = (a.T if ta else a).astype(np.float64)
    Bm = (b.T if tb else b).astype(np.float64)
    exact = A @ Bm + (0 if base is None else base.astype(np.float64))
    k = A.shape[1]
    eps = np.finfo(c.dtype).eps
    bound = 8 * eps * np.sqrt(max(k, 1)) * (np.abs(A) @ np.abs(Bm)
                                           + (0 if base is None else np.abs(base))) + 1e-300
    err = np.abs(c.astype(np.float64) - exact)
    assert np.all(err <= bound), f"max err/bound = {np.max(err / bound):.3g}"


@pytest.mark.parametrize("ta", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("tb", [False, True], ids=["N", "T"])
@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("n", [1, 17, 257])
@pytest.mark.parametrize("k", [1, 7, 257])
def test_matmul_shapes_and_transposes(m, n, k, ta, tb, dtype, rng):
    a, b = _operands(rng, m, n, k, ta, tb, dtype)
    c = K.matmul(a, b, trans_a=ta, trans_b=tb)
    assert c.shape == (m, n) and c.dtype == dtype
    assert_gemm_close(c, a, b, ta, tb)


@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_matmul_large_and_threads(ta, tb, dtype, nthreads, rng):
    a, b = _operands(rng, 1023, 301, 517, ta, tb, dtype)
    c = K.matmul(a, b, trans_a=ta, trans_b=tb)
    assert_gemm_close(c, a, b, ta, tb)


@pytest.mark.parametrize("shape", [(1, 250, 300), (8, 250, 300), (32, 250, 300),
                                   (512, 250, 300), (300, 9, 64)], ids=str)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_matmul_same_bits_for_1_and_2_threads(shape, ta, tb, dtype, rng):
    m, k, n = shape
    a, b = _operands(rng, m, n, k, ta, tb, dtype)
    c1 = run_with_threads(1, K.matmul, a, b, ta, tb)
    c2 = run_with_threads(2, K.matmul, a, b, ta, tb)
    assert np.array_equal(c1, c2)
    assert np.array_equal(run_with_threads(2, K.matmul, a, b, ta, tb), c2)


@pytest.mark.parametrize("m,n,k", [(0, 5, 3), (5, 0, 3), (5, 3, 0), (0, 0, 0)])
def test_matmul_empty(m, n, k, dtype):
    a = np.ones((m, k), dtype)
    b = np.ones((k, n), dtype)
    c = K.matmul(a, b)
    np.testing.assert_array_equal(c, np.zeros((m, n), dtype))
    out = np.full((m, n), 3, dtype)
    K.matmul(a, b, out=out, accumulate=True)
    np.testing.assert_array_equal(out, np.full((m, n), 3, dtype))


def test_matmul_out_and_accumulate(dtype, nthreads, rng):
    a, b = _operands(rng, 64, 300, 250, False, True, dtype)
    out = np.empty((64, 300), dtype)
    assert K.matmul(a, b, trans_b=True, out=out) is out
    assert_gemm_close(out, a, b, False, True)
    base = rng.standard_normal((64, 300)).astype(dtype)
    acc = base.copy()
    assert K.matmul(a, b, trans_b=True, out=acc, accumulate=True) is acc
    assert_gemm_close(acc, a, b, False, True, base=base)
    ref = R.matmul(a, b, trans_b=True, out=base.copy(), accumulate=True)
    np.testing.assert_allclose(acc, ref, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-3 if dtype == np.float32 else 1e-11)


def test_matmul_readonly_and_strided_inputs(dtype, rng):
    a = rng.standard_normal((40, 60)).astype(dtype)
    b = rng.standard_normal((60, 30)).astype(dtype)
    assert_gemm_close(K.matmul(readonly(a), readonly(b)), a, b, False, False)
    # A Fortran-ordered a is a C-ordered aᵀ: the kernel copies strided inputs.
    af = np.asfortranarray(a)
    assert_gemm_close(K.matmul(af, b), a, b, False, False)
    big = rng.standard_normal((80, 120)).astype(dtype)
    view = big[::2, ::2]   # (40, 60), non-contiguous
    assert_gemm_close(K.matmul(view, b), view, b, False, False)


def test_window_model_products(dtype, nthreads, rng):
    """Z = X Wᵀ, dX = dZ W, dW = dZᵀ X for the window model's shapes."""
    for B in (1, 8, 32, 128):
        X = rng.standard_normal((B, 250)).astype(dtype)
        W = rng.standard_normal((300, 250)).astype(dtype)
        dZ = rng.standard_normal((B, 300)).astype(dtype)
        assert_gemm_close(K.matmul(X, W, trans_b=True), X, W, False, True)
        assert_gemm_close(K.matmul(dZ, W), dZ, W, False, False)
        assert_gemm_close(K.matmul(dZ, X, trans_a=True), dZ, X, True, False)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(0, 40), n=st.integers(0, 40), k=st.integers(0, 40),
       ta=st.booleans(), tb=st.booleans(), f32=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_matmul_property(m, n, k, ta, tb, f32, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float32 if f32 else np.float64
    a, b = _operands(rng, m, n, k, ta, tb, dtype)
    assert_gemm_close(K.matmul(a, b, ta, tb), a, b, ta, tb)


def test_outer_accumulate_single_example(dtype, rng):
    delta = rng.standard_normal(300).astype(dtype)
    x = rng.standard_normal(250).astype(dtype)
    dW = rng.standard_normal((300, 250)).astype(dtype)
    expected = R.outer_accumulate(dW.copy(), delta, x)
    assert K.outer_accumulate(dW, delta, x) is dW
    np.testing.assert_allclose(dW, expected, rtol=1e-6 if dtype == np.float32 else 1e-15)
    # dW = delta xᵀ exactly: each entry is one product (plus the old value).
    zero = np.zeros((300, 250), dtype)
    K.outer_accumulate(zero, delta, x)
    np.testing.assert_array_equal(zero, np.outer(delta, x))


def test_outer_accumulate_batch(dtype, nthreads, rng):
    for B in (1, 3, 32, 513):
        delta = rng.standard_normal((B, 300)).astype(dtype)
        x = rng.standard_normal((B, 250)).astype(dtype)
        dW = rng.standard_normal((300, 250)).astype(dtype)
        base = dW.copy()
        K.outer_accumulate(dW, delta, x)
        assert_gemm_close(dW, delta, x, True, False, base=base)
        # the sum of the per-example outer products
        direct = base.astype(np.float64) + sum(np.outer(delta[i], x[i]) for i in range(B))
        np.testing.assert_allclose(dW, direct, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-3 if dtype == np.float32 else 1e-11)


@pytest.fixture(params=["avx512", "avx2", "generic"])
def gemm_path(request):
    from cygrad.kernels import _gemm

    if request.param not in _gemm._gemm_path()[1]:
        pytest.skip(f"this CPU cannot run the {request.param} micro-kernel")
    yield _gemm._force_gemm_path(request.param)
    _gemm._force_gemm_path(None)


@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
# (300, 250, 1|2): rank-1/2 updates (axpy rows); (64, 9, 300): a 9-column output layer
# (dot tiles when B is transposed); (9, 300, 250): just above the dot-tile row limit;
# (1|2|3|4, n, k): the few-row kernel, full and masked strips; (300, 250, 8) and
# (257, 70, 64): short inner dimensions (4-row tiles); (40, 70, 769): three slices of k;
# (40, 3100, 70), (128, 3100, 170): two column blocks of the packed GEMM (NC = 3072),
# the second with the threads sharing a B of over 2 MB (a row split)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 17, 255), (257, 255, 17), (33, 300, 250),
                                   (1023, 31, 257), (96, 1537, 300), (300, 250, 1),
                                   (300, 250, 2), (64, 9, 300), (9, 300, 250), (1, 250, 300),
                                   (2, 129, 3), (3, 65, 300), (4, 300, 250), (300, 250, 8),
                                   (257, 70, 64), (40, 70, 769), (40, 3100, 70),
                                   (128, 3100, 170)])
def test_every_dispatch_path(gemm_path, m, n, k, ta, tb, dtype, rng):
    import cygrad

    assert cygrad.build_info()["gemm_path"] == gemm_path
    a, b = _operands(rng, m, n, k, ta, tb, dtype)
    c1 = run_with_threads(1, K.matmul, a, b, ta, tb)
    assert_gemm_close(c1, a, b, ta, tb)
    assert np.array_equal(c1, run_with_threads(2, K.matmul, a, b, ta, tb))
    base = rng.standard_normal((m, n)).astype(dtype)
    acc = base.copy()
    K.matmul(a, b, ta, tb, out=acc, accumulate=True)
    assert_gemm_close(acc, a, b, ta, tb, base=base)


def test_force_unknown_path():
    from cygrad.kernels import _gemm

    with pytest.raises(ValueError, match="not supported here"):
        _gemm._force_gemm_path("sse9")
