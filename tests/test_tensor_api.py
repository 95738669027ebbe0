"""What PyTorch users type without thinking (#33): Tensor.max/min (with axis; the
gradient routed to the extreme element, split at ties), argmax/argmin,
astype/to, flatten, squeeze/unsqueeze, view, requires_grad_; Module.apply and
requires_grad_. Each against NumPy and numeric gradients."""

import numpy as np
import pytest

import cygrad as cg
from cygrad import nn


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_values_and_gradients(op, axis, keepdims):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 5))
    t = cg.tensor(a, requires_grad=True)
    out = getattr(t, op)(axis=axis, keepdims=keepdims)
    np.testing.assert_array_equal(out.data, getattr(np, op)(a, axis=axis, keepdims=keepdims))
    w = rng.normal(size=out.shape)
    (out * w).sum().backward()
    # the gradient goes to the extreme element of each slice (no ties here)
    expect = np.zeros_like(a)
    idx = getattr(np, "arg" + op)(a, axis=axis)
    if axis is None:
        expect.flat[idx] = np.asarray(w).reshape(-1)[0]
    else:
        np.put_along_axis(expect, np.expand_dims(idx, axis), w.reshape(
            np.expand_dims(idx, axis).shape), axis)
    np.testing.assert_allclose(t.grad, expect)
    assert cg.gradcheck(lambda x: (getattr(x, op)(axis=axis, keepdims=keepdims) * w).sum(),
                        [cg.tensor(a, requires_grad=True)])


def test_max_splits_the_gradient_among_ties_and_argmax_is_numpys():
    t = cg.tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 5.0]]), requires_grad=True)
    t.max(axis=1).sum().backward()
    np.testing.assert_array_equal(t.grad, [[0, 0.5, 0.5], [0, 0, 1]])
    np.testing.assert_array_equal(t.argmax(axis=1), [1, 2])
    np.testing.assert_array_equal(t.argmin(axis=0), [0, 1, 0])
    assert t.argmax() == 5
    with pytest.raises(ValueError, match="max: axis 2 is out of range for 2 dimensions"):
        t.max(axis=2)
    with pytest.raises(ValueError, match="an empty tensor has no max"):
        cg.tensor(np.zeros((0, 3))).max()


def test_astype_and_to_cast_and_bring_the_gradient_back():
    a = np.random.default_rng(1).normal(size=(3, 4))
    t = cg.tensor(a, requires_grad=True)
    f = t.astype(np.float32)
    assert f.dtype == np.float32 and f.to(np.float64).dtype == np.float64
    np.testing.assert_array_equal(f.data, a.astype(np.float32))
    (f * f).sum().backward()
    assert t.grad.dtype == np.float64
    np.testing.assert_allclose(t.grad, 2 * a.astype(np.float32), rtol=1e-6)
    assert t.astype(np.float64) is t
    ids = cg.tensor(np.array([1, 2, 3]))
    np.testing.assert_array_equal(ids.astype(np.float32).data, [1, 2, 3])
    with pytest.raises(TypeError, match="astype: float32 and float64 tensors"):
        t.astype(np.int64)
    # the mix of dtypes names which input is which
    with pytest.raises(TypeError, match=r"inputs mix float64 \(input 0\) and float32 "
                                        r"\(input 1\)"):
        t + f


def test_shape_helpers_are_reshapes_with_their_gradients():
    a = np.arange(24.0).reshape(2, 3, 4)
    t = cg.tensor(a, requires_grad=True)
    assert t.flatten().shape == (24,) and t.flatten(1).shape == (2, 12)
    assert t.flatten(0, 1).shape == (6, 4)
    assert t.view(4, 6).shape == (4, 6) and t.view((6, 4)).shape == (6, 4)
    u = t.unsqueeze(0)
    assert u.shape == (1, 2, 3, 4) and t.unsqueeze(-1).shape == (2, 3, 4, 1)
    assert u.squeeze().shape == (2, 3, 4) and u.squeeze(0).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="squeeze: dimension 1 has size 2, not 1"):
        u.squeeze(1)
    with pytest.raises(ValueError, match="unsqueeze: axis 5 is out of range"):
        t.unsqueeze(5)
    w = np.random.default_rng(2).normal(size=(6, 4))
    (t.flatten(0, 1) * w).sum().backward()
    np.testing.assert_array_equal(t.grad, w.reshape(2, 3, 4))


def test_requires_grad_and_module_apply():
    t = cg.tensor(np.ones(3))
    assert t.requires_grad_() is t and t.requires_grad
    with pytest.raises(TypeError, match="only float32 and float64"):
        cg.tensor(np.arange(3)).requires_grad_()
    with pytest.raises(ValueError, match="use detach"):
        (t * 2).requires_grad_(False)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Sequential(nn.Linear(4, 2)))
    seen = []
    assert model.apply(lambda m: seen.append(type(m).__name__)) is model
    assert seen == ["Linear", "Sequential", "Tanh", "Linear", "Sequential"]
    # the common use: re-initialise every Linear
    model.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
    assert all(not p.data.any() for n, p in model.named_parameters() if "weight" in n)
    assert model.requires_grad_(False) is model
    assert not any(p.requires_grad for p in model.parameters())
    model.requires_grad_()
    assert all(p.requires_grad for p in model.parameters())
