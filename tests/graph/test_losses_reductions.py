"""The common losses (issue 28): reduction="mean" | "sum" for every loss, class
weights for softmax cross-entropy (PyTorch's rule), the mean squared error, binary
cross-entropy on the (B, 1) output of Linear(n, 1). Each kernel against the NumPy
reference, hand-computed values and central differences (the graph op through
gradcheck); the compiled step against the eager graph is in test_compile_guards.py."""

import math

import numpy as np
import pytest

import cygrad as cg
from cygrad import kernels as K
from cygrad import reference as R
from helpers import TOL, run_with_threads


def _close(a, b, dtype, scale=1.0):
    np.testing.assert_allclose(a, b, rtol=TOL[dtype]["rtol"] * 4, atol=TOL[dtype]["atol"] * scale)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("B,C", [(1, 1), (7, 3), (300, 9), (1030, 5)])
def test_softmax_cross_entropy_reductions_and_weights(B, C, weighted, reduction, dtype, rng):
    logits = (rng.standard_normal((B, C)) * 3).astype(dtype)
    labels = rng.integers(0, C, B)
    weight = rng.uniform(0.1, 3.0, C) if weighted else None
    loss, d = K.softmax_cross_entropy(logits, labels, reduction=reduction, weight=weight)
    rloss, rd = R.softmax_cross_entropy(logits, labels, reduction=reduction, weight=weight)
    assert loss == pytest.approx(rloss, rel=1e-5 if dtype == np.float32 else 1e-12)
    _close(d, rd, dtype, 1.0 if reduction == "sum" else 1.0 / B)
    mloss, md = K.softmax_cross_entropy(logits, labels)
    if not weighted and reduction == "sum":     # the sum is B times the mean
        assert loss == pytest.approx(mloss * B, rel=1e-5 if dtype == np.float32 else 1e-12)
        _close(d, md * B, dtype)


def test_weighted_cross_entropy_hand_values():
    # uniform logits over 2 classes: nll = log 2 per row; weights 1 and 3
    loss, d = K.softmax_cross_entropy(np.zeros((3, 2)), np.array([0, 1, 1]),
                                      weight=np.array([1.0, 3.0]))
    assert loss == pytest.approx(math.log(2), rel=1e-15)       # (1 + 3 + 3) log2 / 7
    np.testing.assert_allclose(d, [[-0.5 / 7, 0.5 / 7], [1.5 / 7, -1.5 / 7],
                                   [1.5 / 7, -1.5 / 7]], rtol=1e-14)
    loss, _ = K.softmax_cross_entropy(np.zeros((3, 2)), np.array([0, 1, 1]),
                                      weight=np.array([1.0, 3.0]), reduction="sum")
    assert loss == pytest.approx(7 * math.log(2), rel=1e-15)


def test_weighted_cross_entropy_same_bits_for_1_and_2_threads(dtype, rng):
    logits = rng.standard_normal((10_001, 9)).astype(dtype)
    labels = rng.integers(0, 9, 10_001)
    w = rng.uniform(0, 2, 9)
    a = run_with_threads(1, lambda: K.softmax_cross_entropy(logits, labels, weight=w))
    b = run_with_threads(2, lambda: K.softmax_cross_entropy(logits, labels, weight=w))
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("bad,match", [
    (np.array([1.0, -1.0, 1.0]), r"weight\[1\] = -1.0 must be a finite number >= 0"),
    (np.array([1.0, np.nan, 1.0]), r"weight\[1\] = nan"),
    (np.ones(4), r"weight must have shape \(3,\)"),
    (np.array([0.0, 0.0, 1.0]), "sum to 0.0"),
    (np.array(["a", "b", "c"]), "weight must be a numeric array")])
def test_bad_weights_are_refused_by_name(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        K.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), weight=bad)


@pytest.mark.parametrize("fn,args", [
    ("softmax_cross_entropy", (np.zeros((2, 3)), np.array([0, 1]))),
    ("sigmoid_binary_cross_entropy", (np.zeros(2), np.zeros(2))),
    ("max_margin", (np.zeros(2), np.zeros(2))),
    ("mse_loss", (np.zeros(2), np.zeros(2)))])
def test_a_bad_reduction_is_refused_by_name(fn, args):
    with pytest.raises(ValueError, match=f"{fn}: reduction must be 'mean' or 'sum', got 'none'"):
        getattr(K, fn)(*args, reduction="none")
    with pytest.raises(ValueError, match="reduction must be"):
        getattr(cg, fn)(*[cg.tensor(a) if a.dtype.kind == "f" and i == 0 else a
                          for i, a in enumerate(args)], reduction="none")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(1,), (13,), (4, 1), (300, 7), (2, 3)])
def test_mse_matches_reference_and_hand_values(shape, reduction, dtype, rng):
    p = rng.standard_normal(shape).astype(dtype)
    t = rng.standard_normal(shape)              # float64 targets: converted, as PyTorch won't
    loss, d = K.mse_loss(p, t, reduction=reduction)
    rloss, rd = R.mse_loss(p, t.astype(dtype), reduction=reduction)
    assert d.shape == shape and d.dtype == dtype
    assert loss == pytest.approx(rloss, rel=1e-5 if dtype == np.float32 else 1e-12)
    _close(d, rd, dtype)
    loss, d = K.mse_loss(np.array([1.0, 2.0, 4.0]), np.array([1, 0, 1]), reduction=reduction)
    n = 3 if reduction == "mean" else 1
    assert loss == pytest.approx((0 + 4 + 9) / n, rel=1e-15)
    np.testing.assert_allclose(d, np.array([0.0, 4.0, 6.0]) / n, rtol=1e-15)


def test_mse_refuses_bad_input_by_name():
    with pytest.raises(ValueError, match=r"mse_loss: target must have pred's shape \(3,\)"):
        K.mse_loss(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(TypeError, match="mse_loss: pred must be a float32 or float64"):
        K.mse_loss(np.zeros(3, np.int64), np.zeros(3))
    with pytest.raises(ValueError, match="must not be empty"):
        K.mse_loss(np.zeros(0), np.zeros(0))
    with pytest.raises(TypeError, match="target must not require a gradient"):
        cg.mse_loss(cg.tensor(np.zeros(3)), cg.tensor(np.zeros(3), requires_grad=True))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_on_a_column_of_scores(reduction, dtype, rng):
    s = rng.standard_normal((9, 1)).astype(dtype)
    t = rng.integers(0, 2, (9, 1))
    loss, d = K.sigmoid_binary_cross_entropy(s, t, reduction=reduction)
    loss1, d1 = K.sigmoid_binary_cross_entropy(s[:, 0], t[:, 0], reduction=reduction)
    rloss, rd = R.sigmoid_binary_cross_entropy(s, t, reduction=reduction)
    assert d.shape == (9, 1) and loss == loss1 and np.array_equal(d[:, 0], d1)
    assert loss == pytest.approx(rloss, rel=1e-5 if dtype == np.float32 else 1e-12)
    _close(d, rd, dtype)
    with pytest.raises(ValueError, match=r"targets must have shape \(9, 1\)"):
        K.sigmoid_binary_cross_entropy(s, t[:, 0])


def test_max_margin_sum_is_b_times_the_mean(rng):
    s, sc = rng.standard_normal(20), rng.standard_normal(20)
    lm, dm, dcm = K.max_margin(s, sc)
    ls, ds, dcs = K.max_margin(s, sc, reduction="sum")
    rl, rd, rdc = R.max_margin(s, sc, reduction="sum")
    assert ls == pytest.approx(20 * lm, rel=1e-14) and ls == pytest.approx(rl, rel=1e-14)
    np.testing.assert_array_equal(ds, rd)
    assert set(np.unique(ds)) <= {0.0, -1.0}


@pytest.mark.parametrize("case", ["xent_sum", "xent_weighted", "xent_weighted_sum", "mse",
                                  "mse_sum", "bce_column", "bce_sum", "margin_sum"])
def test_graph_losses_pass_gradcheck(case, rng):
    x = cg.tensor(rng.standard_normal((6, 4)), requires_grad=True)
    W = cg.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    y = rng.integers(0, 3, 6)
    w = np.array([0.5, 2.0, 1.0])
    t = rng.standard_normal((6, 3))

    def fn(x, W):
        z = cg.tanh(x @ W.T)
        if case == "xent_sum":
            return cg.softmax_cross_entropy(z, y, reduction="sum")
        if case.startswith("xent_weighted"):
            return cg.softmax_cross_entropy(z, y, weight=w,
                                            reduction="sum" if case.endswith("sum") else "mean")
        if case.startswith("mse"):
            return cg.mse_loss(z, t, reduction="sum" if case == "mse_sum" else "mean")
        if case.startswith("bce"):
            col = z[:, :1]
            return cg.sigmoid_binary_cross_entropy(
                col, (t[:, :1] > 0).astype(float), reduction="sum" if case == "bce_sum" else "mean")
        return cg.max_margin(z[:, 0], z[:, 1], reduction="sum")
    assert cg.gradcheck(fn, [x, W])
