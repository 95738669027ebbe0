"""Embedding gather / scatter-add / sparse SGD and dense SGD against NumPy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cygrad import kernels as K
from cygrad import reference as R
from helpers import readonly, run_with_threads


def _problem(rng, V, d, B, w, dtype, repeats=True):
    table = rng.standard_normal((V, d)).astype(dtype)
    hi = max(1, V // 10) if repeats else V   # few distinct rows: many repeats
    windows = rng.integers(0, hi, (B, w))
    dX = rng.standard_normal((B, w * d)).astype(dtype)
    return table, windows, dX


@pytest.mark.parametrize("V,d,B,w", [(1, 1, 1, 1), (5, 3, 0, 5), (5, 0, 4, 5), (5, 3, 4, 0),
                                     (20, 50, 7, 5), (20_000, 50, 512, 5),
                                     (1000, 301, 257, 3)])
def test_gather_matches_reference(V, d, B, w, dtype, nthreads, rng):
    table, windows, _ = _problem(rng, V, d, B, w, dtype, repeats=False)
    X = K.embedding_gather(table, windows)
    assert X.shape == (B, w * d) and X.dtype == dtype
    np.testing.assert_array_equal(X, R.embedding_gather(table, windows))
    out = np.empty((B, w * d), dtype)
    assert K.embedding_gather(readonly(table), windows.astype(np.int32), out=out) is out
    np.testing.assert_array_equal(out, X)


@pytest.mark.parametrize("V,d,B,w", [(1, 1, 1, 1), (5, 3, 0, 5), (20, 50, 7, 5),
                                     (20_000, 50, 512, 5), (1000, 301, 257, 3)])
@pytest.mark.parametrize("repeats", [False, True], ids=["spread", "repeated"])
def test_scatter_add_matches_reference(V, d, B, w, repeats, dtype, nthreads, rng):
    grad, windows, dX = _problem(rng, V, d, B, w, dtype, repeats)
    expected = R.embedding_scatter_add(grad.astype(np.float64), windows, dX.astype(np.float64))
    got = K.embedding_scatter_add(grad, windows, readonly(dX))
    assert got is grad
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(grad, expected, rtol=tol, atol=tol * B)


def test_scatter_add_repeated_index_hand_values():
    g = np.zeros((3, 2))
    windows = np.array([[1, 1, 2], [1, 0, 1]])
    dX = np.arange(12, dtype=np.float64).reshape(2, 6)
    K.embedding_scatter_add(g, windows, dX)
    # row 1 gets slots (0,0) (0,1) (1,0) (1,2): [0,1]+[2,3]+[6,7]+[10,11]
    np.testing.assert_array_equal(g, [[8, 9], [18, 22], [4, 5]])


@pytest.mark.parametrize("fn", ["scatter", "sgd"])
def test_scatter_same_bits_for_1_and_2_threads(fn, dtype, rng):
    # 20000 x 5 x 50 slots-elements: above the threshold where scatter uses threads
    table, windows, dX = _problem(rng, 20_000, 50, 20_000, 5, dtype, repeats=True)
    results = []
    for n in (1, 2, 1):
        t = table.copy()
        if fn == "scatter":
            run_with_threads(n, K.embedding_scatter_add, t, windows, dX)
        else:
            run_with_threads(n, K.embedding_sgd_update, t, windows, dX, 0.1)
        results.append(t)
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])


@pytest.mark.parametrize("V,d,B,w", [(10, 4, 3, 5), (20_000, 50, 512, 5)])
def test_embedding_sgd_update_touches_only_window_rows(V, d, B, w, dtype, nthreads, rng):
    table, windows, dX = _problem(rng, V, d, B, w, dtype, repeats=True)
    before = table.copy()
    expected = R.embedding_sgd_update(table.copy(), windows, dX, 0.05)
    K.embedding_sgd_update(table, windows, dX, 0.05)
    np.testing.assert_allclose(table, expected, rtol=1e-5 if dtype == np.float32 else 1e-13,
                               atol=1e-6 if dtype == np.float32 else 1e-14)
    untouched = np.setdiff1d(np.arange(V), windows)
    np.testing.assert_array_equal(table[untouched], before[untouched])


def test_sparse_update_equals_dense_update_of_scatter(rng):
    """SGD on the touched rows == dense SGD with the scattered gradient."""
    table, windows, dX = _problem(rng, 50, 6, 20, 5, np.float64, repeats=True)
    dense = table.copy()
    g = np.zeros_like(table)
    K.embedding_scatter_add(g, windows, dX)
    K.sgd_update(dense, g, 0.3)
    K.embedding_sgd_update(table, windows, dX, 0.3)
    np.testing.assert_allclose(table, dense, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (300, 250), (1_000_003,)], ids=str)
def test_sgd_update(shape, dtype, nthreads, rng):
    p = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    expected = R.sgd_update(p.copy(), g, 0.01)
    assert K.sgd_update(p, readonly(g), 0.01) is p
    np.testing.assert_allclose(p, expected, rtol=1e-6 if dtype == np.float32 else 1e-15,
                               atol=1e-7 if dtype == np.float32 else 1e-16)


@settings(max_examples=50, deadline=None)
@given(V=st.integers(1, 30), d=st.integers(0, 12), B=st.integers(0, 20), w=st.integers(0, 7),
       seed=st.integers(0, 2**32 - 1))
def test_gather_scatter_property(V, d, B, w, seed):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((V, d))
    windows = rng.integers(0, V, (B, w))
    np.testing.assert_array_equal(K.embedding_gather(table, windows),
                                  R.embedding_gather(table, windows))
    dX = rng.standard_normal((B, w * d))
    g = np.zeros((V, d))
    K.embedding_scatter_add(g, windows, dX)
    np.testing.assert_allclose(g, R.embedding_scatter_add(np.zeros((V, d)), windows, dX),
                               rtol=1e-13, atol=1e-13)
    # scatter-add is the adjoint of gather: <gather(T), dX> == <T, scatter(dX)>
    assert np.vdot(K.embedding_gather(table, windows), dX) == pytest.approx(
        np.vdot(table, g), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("shape", [(0,), (7,), (300, 250), (100_003,)], ids=str)
def test_adagrad_update(shape, dtype, nthreads, rng):
    p = rng.standard_normal(shape).astype(dtype)
    G = rng.uniform(0, 1, shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    ep, eG = p.copy(), G.copy()
    R.adagrad_update(ep, eG, g, 0.05)
    assert K.adagrad_update(p, G, readonly(g), 0.05) is p
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(G, eG, **tol)
    np.testing.assert_allclose(p, ep, **tol)


@pytest.mark.parametrize("B", [1, 7, 512])
def test_embedding_adagrad_update(B, dtype, rng):
    table, windows, dX = _problem(rng, 300, 13, B, 5, dtype, repeats=True)
    G = rng.uniform(0, 1, table.shape).astype(dtype)
    et, eG = table.copy(), G.copy()
    R.embedding_adagrad_update(et, eG, windows, dX, 0.1)
    before = table.copy()
    K.embedding_adagrad_update(table, G, windows, dX, 0.1)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(G, eG, **tol)
    np.testing.assert_allclose(table, et, **tol)
    untouched = np.setdiff1d(np.arange(300), windows)
    np.testing.assert_array_equal(table[untouched], before[untouched])


@pytest.mark.parametrize("V", [1, 255, 256, 1000, 65_536, 70_000, 2 ** 20 + 3])  # 1-3 passes
def test_sparse_adagrad_sums_each_rows_slots_in_order(V, rng):
    """The slots of a row are summed in slot order before the row's one update
    (sorting the slots by row: any id range, many repeats), against a loop. The
    slot gradients span 16 orders of magnitude, so that another order of the
    additions would give other sums (checked: the reversed order misses)."""
    B, w, d = 600, 5, 2
    ids = rng.choice(np.unique(np.r_[rng.integers(0, V, 40), V - 1, 0]), (B, w))
    rows = np.unique(ids)
    dX = rng.choice([-1.0, 1.0], (B, w * d)) * 10.0 ** rng.integers(0, 16, (B, w * d)) \
        * rng.uniform(1, 2, (B, w * d))
    table, G = np.zeros((V, d)), np.zeros((V, d))
    table[rows] = rng.standard_normal((len(rows), d))
    G[rows] = rng.uniform(0.1, 1, (len(rows), d))
    flat = ids.reshape(-1)

    def expected(order):
        t, acc = table[rows], G[rows]
        for q, r in enumerate(rows):
            g = np.zeros(d)
            for j in order(np.flatnonzero(flat == r)):
                g = g + dX[j // w, (j % w) * d:(j % w + 1) * d]
            acc[q] += g * g
            t[q] -= 0.1 * g / (np.sqrt(acc[q]) + 1e-8)
        return t, acc
    want_t, want_G = expected(lambda js: js)
    rev_t, rev_G = expected(lambda js: js[::-1])
    K.embedding_adagrad_update(table, G, ids, dX, 0.1)
    np.testing.assert_allclose(G[rows], want_G, rtol=1e-14, atol=0)
    np.testing.assert_allclose(table[rows], want_t, rtol=1e-13, atol=1e-15)
    if V > 1:   # the test can tell the orders apart (one row of 3,000 slots: a sum so
        # large that both orders round alike)
        assert not np.allclose(G[rows], rev_G, rtol=1e-14, atol=0)


def test_sparse_adagrad_equals_dense_adagrad_of_scatter(rng):
    table, windows, dX = _problem(rng, 40, 6, 20, 5, np.float64, repeats=True)
    G = np.full_like(table, 0.1)
    dense_t, dense_G = table.copy(), G.copy()
    g = np.zeros_like(table)
    K.embedding_scatter_add(g, windows, dX)
    touched = np.unique(windows)
    # dense Adagrad restricted to the touched rows (untouched rows have g = 0 and
    # would still move G by 0 and the table by 0)
    K.adagrad_update(dense_t, dense_G, g, 0.3)
    K.embedding_adagrad_update(table, G, windows, dX, 0.3)
    np.testing.assert_allclose(table[touched], dense_t[touched], rtol=1e-13)
    np.testing.assert_allclose(G, dense_G, rtol=1e-13)


def test_adagrad_bad_input():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match="lr must be a positive number"):
        K.adagrad_update(z, z.copy(), z.copy(), 0.0)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        K.adagrad_update(z, z.copy(), z.copy(), 0.1, eps=-1)
    with pytest.raises(ValueError, match=r"accum and grad must have the shape of param"):
        K.adagrad_update(z, np.zeros((4, 3)), z, 0.1)
    with pytest.raises(IndexError, match=r"windows\[0, 1\] = 3 is out of range \[0, 3\)"):
        K.embedding_adagrad_update(z, z.copy(), np.array([[0, 3]]), np.zeros((1, 8)), 0.1)
    with pytest.raises(ValueError, match=r"accum must have the shape of table"):
        K.embedding_adagrad_update(z, np.zeros((4, 3)), np.array([[0, 1]]), np.zeros((1, 8)),
                                   0.1)
