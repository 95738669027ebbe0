"""Fused losses against the reference, hand-computed values and central differences."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cygrad import kernels as K
from cygrad import reference as R
from helpers import TOL, readonly, run_with_threads


def numeric_grad(f, x, h=1e-6):
    """Central differences (f(x + h) - f(x - h)) / 2h, in float64, every element."""
    x = x.astype(np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        fp = f(x)
        x[i] = old - h
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


@pytest.mark.parametrize("B,C", [(1, 1), (1, 9), (7, 2), (33, 9), (257, 5), (4096, 9),
                                 (1000, 131)])
def test_softmax_cross_entropy_matches_reference(B, C, dtype, nthreads, rng):
    logits = (rng.standard_normal((B, C)) * 3).astype(dtype)
    labels = rng.integers(0, C, B)
    loss, d = K.softmax_cross_entropy(logits, labels)
    rloss, rd = R.softmax_cross_entropy(logits, labels)
    assert isinstance(loss, float) and d.dtype == dtype and d.shape == (B, C)
    assert loss == pytest.approx(rloss, rel=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(d, rd, rtol=TOL[dtype]["rtol"] * 4, atol=TOL[dtype]["atol"] / B)
    out = np.empty_like(logits)
    loss2, d2 = K.softmax_cross_entropy(readonly(logits), labels.astype(np.int32), out=out)
    assert d2 is out and loss2 == loss
    np.testing.assert_array_equal(out, d)


def test_softmax_cross_entropy_in_place(dtype, rng):
    logits = rng.standard_normal((300, 9)).astype(dtype)
    labels = rng.integers(0, 9, 300)
    rloss, rd = R.softmax_cross_entropy(logits, labels)
    z = logits.copy()
    loss, d = K.softmax_cross_entropy(z, labels, out=z)
    assert d is z
    assert loss == pytest.approx(rloss, rel=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(d, rd, rtol=TOL[dtype]["rtol"] * 4, atol=TOL[dtype]["atol"])


def test_softmax_cross_entropy_hand_values():
    # Uniform logits over C classes: loss = log C, gradient (1/C - onehot) / B.
    loss, d = K.softmax_cross_entropy(np.zeros((2, 4)), np.array([1, 3]))
    assert loss == pytest.approx(math.log(4), rel=1e-15)
    np.testing.assert_allclose(d, [[0.125, -0.375, 0.125, 0.125],
                                   [0.125, 0.125, 0.125, -0.375]], rtol=1e-15)
    # Two classes with logits (0, log 3): p = (1/4, 3/4).
    loss, d = K.softmax_cross_entropy(np.array([[0.0, math.log(3)]]), np.array([0]))
    assert loss == pytest.approx(math.log(4), rel=1e-15)
    np.testing.assert_allclose(d, [[0.25 - 1, 0.75]], rtol=1e-15)


def test_softmax_cross_entropy_numeric_gradient(rng):
    logits = rng.standard_normal((5, 7))
    labels = rng.integers(0, 7, 5)
    _, d = K.softmax_cross_entropy(logits, labels)
    num = numeric_grad(lambda z: K.softmax_cross_entropy(z, labels)[0], logits)
    np.testing.assert_allclose(d, num, rtol=1e-6, atol=1e-9)


def test_softmax_cross_entropy_is_stable(dtype):
    logits = np.array([[1e4, 0, -1e4], [-1e4, -1e4, -1e4], [80, 90, 100]], dtype=dtype)
    labels = np.array([0, 2, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, d = K.softmax_cross_entropy(logits, labels)
    expected = (0 + math.log(3) + (20 + math.log(1 + math.exp(-10) + math.exp(-20)))) / 3
    assert loss == pytest.approx(expected, rel=1e-6)
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d.sum(axis=1), 0, atol=1e-7)


def test_softmax_cross_entropy_nan_propagates():
    logits = np.array([[0.0, np.nan], [0.0, 1.0]])
    loss, d = K.softmax_cross_entropy(logits, np.array([0, 1]))
    assert math.isnan(loss) and np.all(np.isnan(d[0])) and np.all(np.isfinite(d[1]))


def test_softmax_cross_entropy_same_bits_for_1_and_2_threads(dtype, rng):
    logits = rng.standard_normal((10_001, 9)).astype(dtype)
    labels = rng.integers(0, 9, 10_001)
    l1, d1 = run_with_threads(1, K.softmax_cross_entropy, logits, labels)
    l2, d2 = run_with_threads(2, K.softmax_cross_entropy, logits, labels)
    assert l1 == l2 and np.array_equal(d1, d2)


@settings(max_examples=50, deadline=None)
@given(B=st.integers(1, 50), C=st.integers(1, 20), scale=st.floats(0.01, 50),
       seed=st.integers(0, 2**32 - 1))
def test_softmax_cross_entropy_property(B, C, scale, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, C)) * scale
    labels = rng.integers(0, C, B)
    loss, d = K.softmax_cross_entropy(logits, labels)
    rloss, rd = R.softmax_cross_entropy(logits, labels)
    assert loss == pytest.approx(rloss, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(d, rd, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d.sum(axis=1), 0, atol=1e-14)


def test_sigmoid_bce_matches_reference_and_gradient(dtype, rng):
    s = (rng.standard_normal(101) * 5).astype(dtype)
    t = rng.integers(0, 2, 101)
    loss, d = K.sigmoid_binary_cross_entropy(s, t)
    rloss, rd = R.sigmoid_binary_cross_entropy(s, t)
    assert loss == pytest.approx(rloss, rel=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(d, rd, **TOL[dtype])
    s64 = s.astype(np.float64)
    num = numeric_grad(lambda x: K.sigmoid_binary_cross_entropy(x, t)[0], s64)
    _, d64 = K.sigmoid_binary_cross_entropy(s64, t)
    np.testing.assert_allclose(d64, num, rtol=1e-6, atol=1e-9)
    # soft targets and bool targets
    tf = rng.uniform(0, 1, 101)
    assert K.sigmoid_binary_cross_entropy(s64, tf)[0] == pytest.approx(
        R.sigmoid_binary_cross_entropy(s64, tf)[0], rel=1e-13)
    assert K.sigmoid_binary_cross_entropy(s64, t.astype(bool))[0] == pytest.approx(
        R.sigmoid_binary_cross_entropy(s64, t)[0], rel=1e-13)


def test_sigmoid_bce_lecture_logistic_step():
    """Lecture 3: logistic regression from w = 0, b = 0, eta = 0.1, one example
    x = [0.5, 0.7, 0.5, 0.6, 0.8] with y = 1 gives w = 0.05 x, b = 0.05."""
    x = np.array([[0.5, 0.7, 0.5, 0.6, 0.8]])
    w = np.zeros((1, 5))
    b = np.zeros(1)
    score = K.matmul(x, w, trans_b=True).reshape(1) + b
    loss, ds = K.sigmoid_binary_cross_entropy(score, np.array([1]))
    assert loss == pytest.approx(math.log(2), rel=1e-15)
    assert ds[0] == -0.5
    dw = np.zeros_like(w)
    K.outer_accumulate(dw, ds, x[0])
    K.sgd_update(w, dw, 0.1)
    K.sgd_update(b, ds, 0.1)
    np.testing.assert_allclose(w[0], [0.025, 0.035, 0.025, 0.03, 0.04], rtol=1e-15)
    assert b[0] == pytest.approx(0.05, rel=1e-15)


def test_sigmoid_bce_extremes():
    s = np.array([-1e4, -800.0, 0.0, 800.0, 1e4])
    t = np.array([0, 1, 1, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, d = K.sigmoid_binary_cross_entropy(s, t)
    assert loss == pytest.approx((0 + 800 + math.log(2) + 800 + 0) / 5, rel=1e-15)
    np.testing.assert_allclose(d * 5, [0, -1, -0.5, 1, 0], atol=1e-15)


def test_max_margin_hand_values(dtype):
    s = np.array([3.0, 0.5, 1.0, 0.0], dtype=dtype)
    sc = np.array([1.0, 0.5, 0.0, 2.0], dtype=dtype)
    # margins 1 - s + sc: -1 (inactive), 1, 0 (tie: inactive), 3
    loss, ds, dsc = K.max_margin(s, sc)
    assert loss == pytest.approx((0 + 1 + 0 + 3) / 4)
    np.testing.assert_array_equal(ds, np.array([0, -0.25, 0, -0.25], dtype))
    np.testing.assert_array_equal(dsc, np.array([0, 0.25, 0, 0.25], dtype))
    rl, rds, rdsc = R.max_margin(s, sc)
    assert loss == pytest.approx(rl)
    np.testing.assert_array_equal(ds, rds)
    np.testing.assert_array_equal(dsc, rdsc)
    loss2, *_ = K.max_margin(s, sc, margin=2.0)
    assert loss2 == pytest.approx((0 + 2 + 1 + 4) / 4)


def test_max_margin_numeric_gradient(rng):
    s = rng.standard_normal(9)
    sc = rng.standard_normal(9)
    _, ds, dsc = K.max_margin(s, sc)
    np.testing.assert_allclose(ds, numeric_grad(lambda x: K.max_margin(x, sc)[0], s),
                               atol=1e-8)
    np.testing.assert_allclose(dsc, numeric_grad(lambda x: K.max_margin(s, x)[0], sc),
                               atol=1e-8)
