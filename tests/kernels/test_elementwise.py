"""Activations, add_bias and bias_grad against the NumPy reference."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cygrad import kernels as K
from cygrad import reference as R
from helpers import TOL, readonly, run_with_threads

NAMES = sorted(K.ACTIVATIONS)
# 0 and 1 elements, primes (no multiple of any vector width or split), a size
# above the threading threshold that is no multiple of 64, and a 3-D array.
SHAPES = [(0,), (1,), (7,), (13, 17), (257, 131), (100_003,), (3, 5, 7)]


def test_both_modules_list_the_same_activations():
    assert set(K.ACTIVATIONS) == set(R.ACTIVATIONS) == {
        "sigmoid", "tanh", "relu", "leaky_relu", "hardtanh", "gelu", "silu"}
    for name, (f, b, saves) in K.ACTIVATIONS.items():
        assert R.ACTIVATIONS[name][2] == saves
        assert saves == ("output" if name in ("sigmoid", "tanh") else "input")
        assert f.__name__ == name and b.__name__ == name + "_backward"


def _inputs(rng, shape, dtype, scale=4.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _close(actual, expected, dtype, name=""):
    tol = dict(TOL[dtype])
    if name == "gelu":
        # The reference's 0.5 z (1 + tanh u) cancels in the far negative tail,
        # where the kernel's z * sigmoid(2u) stays accurate: compare absolutely there.
        tol["atol"] = max(tol["atol"], 64 * np.finfo(dtype).eps)
    np.testing.assert_allclose(actual, expected, **tol)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("use_out", [False, True], ids=["new", "out"])
def test_activation_matches_reference(name, shape, use_out, dtype, nthreads, rng):
    f, fb, saves = K.ACTIVATIONS[name]
    rf, rfb, _ = R.ACTIVATIONS[name]
    z = _inputs(rng, shape, dtype)
    g = _inputs(rng, shape, dtype, 1.0)
    out = np.empty_like(z) if use_out else None
    y = f(z, out=out)
    if use_out:
        assert y is out
    assert y.dtype == dtype and y.shape == z.shape
    _close(y, rf(z), dtype, name)
    saved = y if saves == "output" else z
    gout = np.empty_like(z) if use_out else None
    gi = fb(g, saved, out=gout)
    assert gi.dtype == dtype and gi.shape == z.shape
    _close(gi, rfb(g, saved), dtype, name)


@pytest.mark.parametrize("name", NAMES)
def test_activation_readonly_and_noncontiguous_inputs(name, dtype, rng):
    f, fb, saves = K.ACTIVATIONS[name]
    rf, rfb, _ = R.ACTIVATIONS[name]
    base = _inputs(rng, (60, 40), dtype)
    z = readonly(base)
    zt = base.T  # Fortran-ordered view: copied by the kernel
    _close(f(z), rf(z), dtype, name)
    _close(f(zt), rf(zt), dtype, name)
    g = readonly(_inputs(rng, (60, 40), dtype, 1.0))
    saved = readonly(f(z) if saves == "output" else z)
    _close(fb(g, saved), rfb(g, saved), dtype, name)
    _close(fb(g.T, saved.T), rfb(g.T, saved.T), dtype, name)


@pytest.mark.parametrize("name", NAMES)
def test_activation_in_place(name, dtype, rng):
    f, fb, _ = K.ACTIVATIONS[name]
    z = _inputs(rng, (1000,), dtype)
    expected = R.ACTIVATIONS[name][0](z)
    f(z, out=z)
    _close(z, expected, dtype, name)


@pytest.mark.parametrize("name", NAMES)
def test_activation_same_bits_for_1_and_2_threads(name, dtype, rng):
    f, fb, saves = K.ACTIVATIONS[name]
    z = _inputs(rng, (300_001,), dtype)
    g = _inputs(rng, (300_001,), dtype, 1.0)
    y1, y2 = (run_with_threads(n, f, z) for n in (1, 2))
    assert np.array_equal(y1, y2)
    s = y1 if saves == "output" else z
    b1, b2 = (run_with_threads(n, fb, g, s) for n in (1, 2))
    assert np.array_equal(b1, b2)


def test_exact_values():
    z = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(K.relu(z), [0, 0, 0, 0, 0.5, 1, 2])
    np.testing.assert_array_equal(K.hardtanh(z), [-1, -1, -0.5, 0, 0.5, 1, 1])
    np.testing.assert_allclose(K.leaky_relu(z, negative_slope=0.1),
                               [-0.2, -0.1, -0.05, 0, 0.5, 1, 2], rtol=1e-15)
    assert K.sigmoid(np.zeros(1))[0] == 0.5
    assert K.tanh(np.zeros(1))[0] == 0.0
    np.testing.assert_allclose(K.tanh(z), np.tanh(z), rtol=1e-15)
    np.testing.assert_allclose(K.sigmoid(np.array([np.log(3.0)])), [0.75], rtol=1e-15)
    # relu'(0) = 0, hardtanh'(+-1) = 0: the conventions the reference states.
    np.testing.assert_array_equal(K.relu_backward(np.ones(3), np.array([-1.0, 0.0, 1.0])),
                                  [0, 0, 1])
    np.testing.assert_array_equal(
        K.hardtanh_backward(np.ones(4), np.array([-1.0, -0.5, 0.5, 1.0])), [0, 1, 1, 0])


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "gelu", "silu"])
def test_extreme_inputs_are_stable(name, dtype):
    f, fb, saves = K.ACTIVATIONS[name]
    big = np.finfo(dtype).max
    z = np.array([-big, -1e4, -800, -90, -30, -1e-30, 0, 1e-30, 30, 90, 800, 1e4, big],
                 dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = f(z)
        gi = fb(np.ones_like(z), y if saves == "output" else z)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(gi)), (y, gi)
    if name == "sigmoid":
        assert y[0] == 0 and y[-1] == 1 and np.all(np.diff(y) >= 0)
    if name == "tanh":
        assert y[0] == -1 and y[-1] == 1 and y[5] == dtype(-1e-30) and y[7] == dtype(1e-30)


def test_subnormal_sigmoid_tail():
    # sigmoid(-720) = e^-720 / (1 + e^-720) is subnormal in float64; it must not
    # collapse to a wrong normal number or to 0.
    z = np.array([-700.0, -720.0, -740.0, -746.0])
    expected = np.exp(z)  # 1 + e^z == 1 exactly here
    np.testing.assert_allclose(K.sigmoid(z)[:2], expected[:2], rtol=1e-12)
    assert 0 < K.sigmoid(z)[2] < 1e-320 and K.sigmoid(z)[3] == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_nan_and_inf_propagate_like_numpy(name, dtype):
    f, fb, saves = K.ACTIVATIONS[name]
    rf, rfb, _ = R.ACTIVATIONS[name]
    z = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=dtype)
    with np.errstate(all="ignore"):
        expected = rf(z)
    y = f(z)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(y[finite], expected[finite], **TOL[dtype])


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES),
       z=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0,
                                                 max_side=40),
                    elements=st.floats(-50, 50, allow_nan=False)))
def test_activation_property(name, z):
    f, fb, saves = K.ACTIVATIONS[name]
    rf, rfb, _ = R.ACTIVATIONS[name]
    _close(f(z), rf(z), np.float64, name)
    g = np.ones_like(z)
    s = f(z) if saves == "output" else z
    _close(fb(g, s), rfb(g, s), np.float64, name)
    z32 = z.astype(np.float32)
    _close(f(z32), rf(z32), np.float32, name)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (1, 1), (7, 300), (517, 13),
                                   (4096, 300)], ids=str)
def test_add_bias_and_bias_grad(shape, dtype, nthreads, rng):
    z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    np.testing.assert_array_equal(K.add_bias(z, b), R.add_bias(z, b))
    out = np.empty_like(z)
    assert K.add_bias(readonly(z), readonly(b), out=out) is out
    np.testing.assert_array_equal(out, R.add_bias(z, b))
    zc = z.copy()
    K.add_bias(zc, b, out=zc)
    np.testing.assert_array_equal(zc, R.add_bias(z, b))
    # bias_grad sums in double, so float32 agrees with a float64 sum rounded once
    gb = K.bias_grad(z)
    assert gb.dtype == dtype and gb.shape == (shape[1],)
    np.testing.assert_allclose(gb, R.bias_grad(z), rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * max(1, shape[0]))
    out = np.empty(shape[1], dtype)
    assert K.bias_grad(z.T.copy().T, out=out) is out
    np.testing.assert_allclose(out, gb, rtol=0, atol=0)


def test_bias_grad_accumulates_in_double():
    # 10^6 rows of 0.1 in float32: a float32 running sum drifts far off 1e5.
    dz = np.full((1_000_000, 3), 0.1, dtype=np.float32)
    np.testing.assert_allclose(K.bias_grad(dz), np.float32(1e6 * np.float64(np.float32(0.1))),
                               rtol=0)
    # a float32 running sum would be off by percent: make sure this test could fail
    assert abs(np.cumsum(dz[:, 0])[-1] - 1e5) > 100


def test_bias_grad_same_bits_for_1_and_2_threads(dtype, rng):
    dz = rng.standard_normal((3001, 300)).astype(dtype)
    assert np.array_equal(run_with_threads(1, K.bias_grad, dz),
                          run_with_threads(2, K.bias_grad, dz))


def test_many_dimensions():
    # out= allocation must not assume a small ndim (NumPy allows 64 dimensions)
    z = np.arange(4.0).reshape((1,) * 38 + (2, 2))
    for name in ("tanh", "relu"):
        np.testing.assert_allclose(K.ACTIVATIONS[name][0](z), R.ACTIVATIONS[name][0](z),
                                   **TOL[np.float64])
