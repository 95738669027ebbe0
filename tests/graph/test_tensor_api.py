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


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5), (7,)])
def test_layer_norm_against_numpy_and_numeric_gradients(shape):
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape) * 3 + 1
    w, b = rng.normal(size=shape[-1]), rng.normal(size=shape[-1])
    y = cg.layer_norm(cg.tensor(x), cg.tensor(w), cg.tensor(b), eps=1e-5)
    mu = x.mean(axis=-1, keepdims=True)
    ref = (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(y.data, ref, rtol=1e-12, atol=1e-12)
    g = rng.normal(size=shape)
    assert cg.gradcheck(lambda a, c, d: (cg.layer_norm(a, c, d) * g).sum(),
                        [cg.tensor(x, requires_grad=True), cg.tensor(w, requires_grad=True),
                         cg.tensor(b, requires_grad=True)])


def test_nn_layer_norm_trains_and_refuses_bad_sizes():
    ln = nn.LayerNorm(4, dtype=np.float64)
    assert [n for n, _ in ln.named_parameters()] == ["weight", "bias"]
    x = np.random.default_rng(0).normal(size=(3, 4))
    out = ln(x)
    np.testing.assert_allclose(out.data.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(out.data.std(axis=-1), 1, rtol=1e-4)
    (out * out).sum().backward()
    assert ln.weight.grad.shape == (4,) and ln.bias.grad.shape == (4,)
    plain = nn.LayerNorm(4, elementwise_affine=False, dtype=np.float64)
    assert plain.parameters() == [] and repr(plain) == \
        "LayerNorm(4, eps=1e-05, elementwise_affine=False)"
    np.testing.assert_allclose(plain(x).data, out.data, rtol=1e-12)
    with pytest.raises(ValueError, match=r"weight and bias must be \(5,\)"):
        nn.LayerNorm(4, dtype=np.float64)(np.ones((2, 5)))
    with pytest.raises(ValueError, match="normalized_shape must be a positive integer"):
        nn.LayerNorm(0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("opt", ["sgd", "adagrad", "adam", "momentum"])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_a_compiled_step_with_layer_norm_trains_as_the_eager_graph(dt, opt, threads,
                                                                   threaded_plans):
    """layer_norm has plan tasks (the kernel's rows; the weight's and the bias's
    gradients summed by the eager op's column-sum kernel): compiled steps equal the
    eager graph bit for bit with Adagrad, Adam and SGD with momentum (gradient
    mode), and to rounding with plain SGD (its -lr rides on the loss gradient);
    batches smaller than the first run on the same plan."""
    make = {"sgd": lambda p: cg.optim.SGD(p, lr=0.1),
            "adagrad": lambda p: cg.optim.Adagrad(p, lr=0.1),
            "adam": lambda p: cg.optim.Adam(p, lr=0.01),
            "momentum": lambda p: cg.optim.SGD(p, lr=0.1, momentum=0.9)}[opt]
    m, ref = (nn.Sequential(nn.Linear(5, 40, generator=0, dtype=dt), nn.LayerNorm(40, dtype=dt),
                            nn.Tanh(), nn.Linear(40, 3, generator=1, dtype=dt))
              for _ in range(2))
    o, oref = make(m.parameters()), make(ref.parameters())
    step = cg.compile(lambda x, y: cg.softmax_cross_entropy(m(x), y), o, strict=True,
                      dynamic_rows=True)
    rng = np.random.default_rng(0)
    with cg.threads(threads):
        for k, B in enumerate([300, 300, 17, 300]):
            x, y = rng.normal(size=(B, 5)).astype(dt), rng.integers(0, 3, B)
            got = step(x, y)
            oref.zero_grad()
            loss = cg.softmax_cross_entropy(ref(cg.tensor(x)), y)
            loss.backward()
            oref.step()
            np.testing.assert_allclose(got, float(loss.data), rtol=1e-6)
            for i, (a, b) in enumerate(zip(m.parameters(), ref.parameters())):
                if opt == "sgd":
                    tol = 2e-5 if dt == np.float32 else 1e-12
                    np.testing.assert_allclose(a.data, b.data, rtol=tol, atol=tol)
                else:
                    np.testing.assert_array_equal(a.data, b.data, err_msg=f"param {i} step {k}")
    assert step.plans == 1 and not step.fallbacks()


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_the_layer_norm_kernel_against_the_numpy_reference(dt):
    from cygrad import kernels as K
    from cygrad import reference as R
    rng = np.random.default_rng(3)
    for B, D in [(1, 1), (7, 3), (33, 50), (300, 784)]:
        x = (rng.normal(size=(B, D)) * 3 + 1).astype(dt)
        w, b, g = rng.normal(size=D).astype(dt), rng.normal(size=D).astype(dt), \
            rng.normal(size=(B, D)).astype(dt)
        tol = dict(rtol=2e-5, atol=2e-5) if dt == np.float32 else dict(rtol=1e-12, atol=1e-12)
        got, want = K.layer_norm(x, w, b, 1e-5), R.layer_norm(x, w, b, 1e-5)
        for a, c in zip(got, want):
            np.testing.assert_allclose(a, c, **tol)
        for a, c in zip(K.layer_norm_backward(g, w, got[1], got[2]),
                        R.layer_norm_backward(g, w, got[1], got[2])):
            np.testing.assert_allclose(a, c, **tol)
        runs = []
        for nt in (1, 2, 3):        # rows are independent: the same bits for any count
            with cg.threads(nt):
                runs.append(K.layer_norm(x, w, b) + K.layer_norm_backward(g, w, got[1], got[2]))
        for other in runs[1:]:
            for a, c in zip(runs[0], other):
                np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match="weight must have shape"):
        K.layer_norm(np.ones((2, 3)), np.ones(4), np.ones(3))
    with pytest.raises(ValueError, match="eps"):
        K.layer_norm(np.ones((2, 3)), np.ones(3), np.ones(3), eps=0)
    with pytest.raises(TypeError, match="float32|dtype|mix"):
        K.layer_norm(np.ones((2, 3)), np.ones(3, np.float32), np.ones(3))




def test_a_layer_norm_eps_changed_after_compiling_trains_as_eagerly():
    """The plan bakes eps in: nn.LayerNorm's eps set after compiling is a guarded
    setting, so the compiled step follows it as the eager graph does."""
    ms = [nn.Sequential(nn.Linear(5, 40, generator=0, dtype=np.float64),
                        nn.LayerNorm(40, dtype=np.float64),
                        nn.Linear(40, 3, generator=1, dtype=np.float64)) for _ in range(2)]
    opts = [cg.optim.Adagrad(m.parameters(), lr=0.1) for m in ms]
    step = cg.compile(lambda x, y: cg.softmax_cross_entropy(ms[0](x), y), opts[0], strict=False)
    rng = np.random.default_rng(0)
    for k in range(4):
        if k == 2:
            ms[0][1].eps = ms[1][1].eps = 0.5
        x, y = rng.normal(size=(8, 5)), rng.integers(0, 3, 8)
        step(x, y)
        opts[1].zero_grad()
        cg.softmax_cross_entropy(ms[1](cg.tensor(x)), y).backward()
        opts[1].step()
        for a, b in zip(ms[0].parameters(), ms[1].parameters()):
            np.testing.assert_array_equal(a.data, b.data, err_msg=f"step {k}")
