"""exp, log, pow, abs, softmax, log_softmax and indexing: forward against NumPy,
backward against central differences (gradcheck) and hand-derived cases."""

import numpy as np
import pytest

import cygrad as cg
from helpers import DTYPES

rng = np.random.default_rng(7)


def t(a, grad=True):
    return cg.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


@pytest.mark.parametrize("dt", DTYPES)
def test_forward_matches_numpy(dt):
    a = rng.standard_normal((3, 5)).astype(dt)
    pos = np.abs(a) + 0.5
    x, px = cg.tensor(a), cg.tensor(pos)
    np.testing.assert_array_equal(cg.exp(x).data, np.exp(a))
    np.testing.assert_array_equal(cg.log(px).data, np.log(pos))
    np.testing.assert_array_equal(abs(x).data, np.abs(a))
    np.testing.assert_array_equal((px ** 3).data, pos ** dt(3))
    np.testing.assert_array_equal((2.0 ** x).data, dt(2) ** a)
    e = np.exp(a - a.max(axis=1, keepdims=True))
    sm = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(cg.softmax(x).data, sm, rtol=1e-6 if dt == np.float32 else 1e-14)
    np.testing.assert_allclose(cg.log_softmax(x).data, np.log(sm),
                               rtol=1e-5 if dt == np.float32 else 1e-13)
    assert cg.exp(x).dtype == dt and cg.softmax(x, axis=0).dtype == dt
    np.testing.assert_array_equal(x[1:, ::2].data, a[1:, ::2])
    np.testing.assert_array_equal(x[[0, 0, 2], [1, 1, 4]].data, a[[0, 0, 2], [1, 1, 4]])


def test_softmax_does_not_overflow():
    x = cg.tensor(np.array([[1000.0, 1000.0, -1000.0]]))
    np.testing.assert_allclose(cg.softmax(x).data, [[0.5, 0.5, 0.0]])
    np.testing.assert_allclose(cg.log_softmax(x).data[0, :2], np.log(0.5))


@pytest.mark.parametrize("fn", [
    lambda x: (cg.exp(x) * x).sum(),
    lambda x: cg.log(x * x + 1.0).sum(),
    lambda x: (abs(x) ** 3).sum(),
    lambda x: (x ** x).sum(),          # both sides of pow (x > 0 below)
    lambda x: (2.0 ** x).sum(),
    lambda x: (cg.softmax(x, axis=1) * cg.tensor(np.arange(12.).reshape(3, 4))).sum(),
    lambda x: (cg.softmax(x, axis=0) * x).sum(),
    lambda x: (cg.log_softmax(x) * cg.tensor(np.arange(12.).reshape(3, 4))).sum(),
    lambda x: x[1:, [0, 0, 3]].sum() * 2 + x[0, 1] * x[2],
    lambda x: x[x.data > 1.0].sum(),
], ids=["exp", "log", "abs-pow", "pow-both", "rpow", "softmax1", "softmax0", "log_softmax",
        "index", "bool-index"])
def test_gradients_match_central_differences(fn):
    x = t(rng.random((3, 4)) + 0.5)
    assert cg.gradcheck(fn, [x])


def test_hand_derived_gradients():
    # d/dx sum(log_softmax(x) * onehot(y)) = onehot(y) - softmax(x)
    z = t([[1.0, 2.0, 0.5]])
    (cg.log_softmax(z)[0, 1]).backward()
    p = np.exp(z.data) / np.exp(z.data).sum()
    np.testing.assert_allclose(z.grad, np.array([[0, 1, 0]]) - p, rtol=1e-14)
    # repeated indices add up: x[[0, 0, 0]] sends 3 to x[0]
    x = t([1.0, 2.0])
    x[[0, 0, 0]].sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0])
    # |x| has gradient 0 at 0 (PyTorch's subgradient), sign elsewhere
    x = t([-2.0, 0.0, 3.0])
    abs(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [-1.0, 0.0, 1.0])
    # x ** 2 at 0 and x ** 0: gradient 0, no nan
    x = t([0.0, 1.5])
    ((x ** 2) + (x ** 0.0)).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 3.0])


def test_index_copies_keys_and_refuses_bad_ones():
    x = t(np.arange(6.0))
    idx = np.array([1, 2])
    y = x[idx]
    idx[:] = 5                  # the caller changes its array: backward still uses [1, 2]
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 1, 1, 0, 0, 0])
    with pytest.raises(TypeError, match="indices must be integers"):
        x[np.array([0.5])]
    with pytest.raises(TypeError, match="Tensor cannot index"):
        x[cg.tensor(np.array([0.0]))]
    with pytest.raises(IndexError, match="shape \\(6,\\)"):
        x[7]
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        cg.softmax(x, axis=2)
