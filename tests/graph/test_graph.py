"""The graph executor: the lecture's hand-derived numbers, gradcheck of every op
on both backends, and the behaviour the API promises."""

import math

import numpy as np
import pytest

import cygrad as cg
from cygrad import kernels as K


@pytest.fixture(params=["cygrad", "numpy"])
def backend(request):
    with cg.use_backend(request.param):
        yield request.param


def t(x, **kw):
    return cg.tensor(x, requires_grad=True, **kw)


# ---------------------------------------------------------------- lecture numbers

def test_lecture_max_example(backend):
    """f(x, y, z) = (x + y) max(y, z) at (1, 2, 0): f = 6, grads 2, 5, 0.
    y feeds two nodes: its gradient is the sum 2 + 3."""
    x, y, z = t(1.0), t(2.0), t(0.0)
    f = (x + y) * cg.maximum(y, z)
    f.backward()
    assert f.item() == 6
    assert (x.grad, y.grad, z.grad) == (2, 5, 0)


def test_lecture_three_variable_example(backend):
    """L = c (a + 2b) at (3, 1, 2): L = 10, grads 2, 4, 5."""
    a, b, c = t(3.0), t(1.0), t(2.0)
    L = c * (a + 2 * b)
    L.backward()
    assert L.item() == 10
    assert (a.grad, b.grad, c.grad) == (2, 4, 5)


def test_lecture_two_layer_network(backend):
    x = cg.tensor([0.442, -0.562, 2.795, 2.087])
    W1 = t([[1.0, 3, 2, 4], [2, 1, 4, 3]])
    b1 = t([1.0, -1.0])
    W2 = t([-1.0, 2.0])
    b2 = t(2.0)
    h = cg.relu(W1 @ x + b1)
    z2 = W2 @ h + b2
    out = cg.sigmoid(z2.reshape(1))
    np.testing.assert_allclose(h.data, [13.694, 16.763], rtol=1e-12)
    assert z2.item() == pytest.approx(21.832, abs=1e-12)
    out.backward(np.ones(1))
    s = 1 / (1 + math.exp(-21.832))
    np.testing.assert_allclose(W2.grad, s * (1 - s) * h.data, rtol=1e-6)
    np.testing.assert_allclose(W1.grad, np.outer(s * (1 - s) * W2.data, x.data), rtol=1e-6)
    assert cg.gradcheck(lambda W1, b1, W2, b2: cg.relu(W1 @ x + b1) @ W2 + b2,
                        [W1, b1, W2, b2])


def test_lecture_logistic_regression_step(backend):
    """One SGD step from w = 0, b = 0, eta = 0.1 on x = [0.5, 0.7, 0.5, 0.6, 0.8],
    y = 1: w = [0.025, 0.035, 0.025, 0.03, 0.04], b = 0.05."""
    x = cg.tensor([[0.5, 0.7, 0.5, 0.6, 0.8]])
    w = t(np.zeros((1, 5)))
    b = t(np.zeros(1))
    loss = cg.sigmoid_binary_cross_entropy(cg.linear(x, w, b).reshape(1), np.array([1]))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2), rel=1e-15)
    w.data -= 0.1 * w.grad
    b.data -= 0.1 * b.grad
    np.testing.assert_allclose(w.data[0], [0.025, 0.035, 0.025, 0.03, 0.04], rtol=1e-15)
    assert b.data[0] == pytest.approx(0.05, rel=1e-15)


def test_lecture_window_network_gradients(backend, rng):
    """s = uᵀ tanh(Wx + b): delta = u ∘ (1 − h²) = ∂s/∂b, ∂s/∂W = delta xᵀ,
    ∂s/∂x = Wᵀ delta, ∂s/∂u = h."""
    W = t(rng.standard_normal((8, 20)) * 0.3)
    b = t(rng.standard_normal(8))
    u = t(rng.standard_normal(8))
    x = t(rng.standard_normal(20))
    z = W @ x + b
    z.retain_grad()
    h = cg.tanh(z)
    s = u @ h
    s.backward()
    delta = u.data * (1 - h.data ** 2)
    np.testing.assert_allclose(z.grad, delta, rtol=1e-14)
    np.testing.assert_allclose(b.grad, delta, rtol=1e-14)
    np.testing.assert_allclose(W.grad, np.outer(delta, x.data), rtol=1e-14)
    np.testing.assert_allclose(x.grad, W.data.T @ delta, rtol=1e-13)
    np.testing.assert_allclose(u.grad, h.data, rtol=1e-15)


# ---------------------------------------------------------------- gradcheck, every op

def _rand(rng, *shape):
    return t(rng.standard_normal(shape))


@pytest.mark.parametrize("case", [
    "add", "add_bias", "add_broadcast", "add_scalar", "sub", "rsub", "mul", "mul_broadcast",
    "div", "rdiv", "neg", "matmul_22", "matmul_12", "matmul_21", "matmul_11", "matmul_T",
    "transpose", "reshape", "sum", "sum_axis", "mean", "mean_axis", "maximum", "minimum",
    "concat", "linear",
])
def test_gradcheck_ops(case, backend, rng):
    a, b = _rand(rng, 4, 3), _rand(rng, 4, 3)
    v3 = _rand(rng, 3)
    m34 = _rand(rng, 3, 4)
    pos = t(rng.uniform(0.5, 2.0, (4, 3)))
    fns = {
        "add": (lambda a, b: a + b, [a, b]),
        "add_bias": (lambda a, v: a + v, [a, v3]),
        "add_broadcast": (lambda a, c: a + c, [a, _rand(rng, 4, 1)]),
        "add_scalar": (lambda a: 2.5 + a + 1, [a]),
        "sub": (lambda a, b: a - b, [a, b]),
        "rsub": (lambda a: 1 - a, [a]),
        "mul": (lambda a, b: a * b, [a, b]),
        "mul_broadcast": (lambda a, v: a * v, [a, v3]),
        "div": (lambda a, p: a / p, [a, pos]),
        "rdiv": (lambda p: 2 / p, [pos]),
        "neg": (lambda a: -a, [a]),
        "matmul_22": (lambda a, m: a @ m, [a, m34]),
        "matmul_12": (lambda v, m: v @ m, [v3, m34]),
        "matmul_21": (lambda a, v: a @ v, [a, v3]),
        "matmul_11": (lambda v, w: v @ w, [v3, _rand(rng, 3)]),
        "matmul_T": (lambda a, m: a @ m.T, [a, _rand(rng, 5, 3)]),
        "transpose": (lambda a: a.T * 1, [a]),
        "reshape": (lambda a: a.reshape(2, 6) * 2, [a]),
        "sum": (lambda a: a.sum(), [a]),
        "sum_axis": (lambda a: a.sum(axis=0), [a]),
        "mean": (lambda a: a.mean(), [a]),
        "mean_axis": (lambda a: a.mean(axis=1, keepdims=True), [a]),
        "maximum": (lambda a, b: cg.maximum(a, b), [a, b]),
        "minimum": (lambda a, b: cg.minimum(a, b), [a, b]),
        "concat": (lambda a, b, c: cg.concat([a, b, c], axis=1), [a, b, _rand(rng, 4, 2)]),
        "linear": (lambda x, W, bb: cg.linear(x, W, bb), [a, _rand(rng, 5, 3), _rand(rng, 5)]),
    }
    fn, inputs = fns[case]
    assert cg.gradcheck(fn, inputs)


@pytest.mark.parametrize("name", sorted(K.ACTIVATIONS))
def test_gradcheck_activations(name, backend, rng):
    z = t(rng.standard_normal((3, 7)) * 2)
    f = getattr(cg, name)
    assert cg.gradcheck(lambda z: f(z), [z])


def test_gradcheck_losses(backend, rng):
    logits = t(rng.standard_normal((6, 5)))
    labels = rng.integers(0, 5, 6)
    assert cg.gradcheck(lambda z: cg.softmax_cross_entropy(z, labels), [logits])
    scores = t(rng.standard_normal(7) * 3)
    targets = rng.integers(0, 2, 7)
    assert cg.gradcheck(lambda s: cg.sigmoid_binary_cross_entropy(s, targets), [scores])
    s, sc = t(rng.standard_normal(9)), t(rng.standard_normal(9))
    assert cg.gradcheck(lambda s, sc: cg.max_margin(s, sc, margin=0.5), [s, sc])


def test_gradcheck_window_model_with_embeddings(backend, rng):
    """Softmax cross-entropy of a two-layer window model over trainable embeddings;
    repeated words in the windows make the embedding gradient sum."""
    V, d, w, H1, H2, C = 11, 4, 5, 6, 5, 3
    E = t(rng.standard_normal((V, d)))
    W1, b1 = _rand(rng, H1, w * d), _rand(rng, H1)
    W2, b2 = _rand(rng, H2, H1), _rand(rng, H2)
    U, c = _rand(rng, C, H2), _rand(rng, C)
    windows = rng.integers(0, 4, (7, w))    # few distinct rows: many repeats
    labels = rng.integers(0, C, 7)

    def model(E, W1, b1, W2, b2, U, c):
        x = cg.embedding_windows(E, windows)
        h1 = cg.tanh(cg.linear(x, W1, b1))
        h2 = cg.relu(h1 @ W2.T + b2)
        return cg.softmax_cross_entropy(cg.linear(h2, U, c), labels)

    assert cg.gradcheck(model, [E, W1, b1, W2, b2, U, c])


def test_gradcheck_reports_a_wrong_gradient(rng):
    class BadSquare(cg.Op):
        name = "bad_square"

        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved
            return (g * a,)      # should be 2 a g

    x = cg.tensor(rng.standard_normal(4) + 3, requires_grad=True, name="x")
    with pytest.raises(cg.GradcheckError, match=r"x \(shape \(4,\)\) element \(0,\): "
                                                r"analytic .* vs numeric"):
        cg.gradcheck(lambda x: BadSquare.apply(x).sum(), [x])
    assert cg.gradcheck(lambda x: BadSquare.apply(x).sum(), [x], raise_exception=False) is False


# ---------------------------------------------------------------- backends agree

def test_backends_give_the_same_numbers(rng):
    E0 = rng.standard_normal((50, 8)).astype(np.float32)
    W0 = rng.standard_normal((16, 40)).astype(np.float32) * 0.2
    windows = rng.integers(0, 50, (32, 5))
    labels = rng.integers(0, 4, 32)
    U0 = rng.standard_normal((4, 16)).astype(np.float32)
    results = {}
    for name in ("cygrad", "numpy"):
        with cg.use_backend(name):
            assert cg.get_backend() == name
            E, W, U = t(E0), t(W0), t(U0)
            b, c = t(np.zeros(16, np.float32)), t(np.zeros(4, np.float32))
            h = cg.tanh(cg.linear(cg.embedding_windows(E, windows), W, b))
            loss = cg.softmax_cross_entropy(cg.linear(h, U, c), labels)
            loss.backward()
            results[name] = (loss.item(), E.grad, W.grad, U.grad, b.grad, c.grad)
    assert cg.get_backend() == "cygrad"
    (l1, *g1), (l2, *g2) = results["cygrad"], results["numpy"]
    assert l1 == pytest.approx(l2, rel=1e-6)
    for x, y in zip(g1, g2):
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_use_backend_forms():
    cg.use_backend("numpy")
    try:
        assert cg.get_backend() == "numpy"
    finally:
        cg.use_backend("cygrad")
    with cg.use_backend("numpy"):
        assert cg.get_backend() == "numpy"
    assert cg.get_backend() == "cygrad"
    with pytest.raises(ValueError, match="unknown backend 'torch'"):
        cg.use_backend("torch")


# ---------------------------------------------------------------- behaviour

def test_backward_needs_grad_for_non_scalar():
    x = t(np.ones((2, 3)))
    y = x * 2
    with pytest.raises(RuntimeError, match=r"grad must be given for a non-scalar tensor "
                                           r"\(shape \(2, 3\)\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), the tensor has shape"):
        y.backward(np.ones(3))
    y.backward(np.full((2, 3), 0.5))
    np.testing.assert_array_equal(x.grad, np.ones((2, 3)))


def test_backward_twice_accumulates():
    x = t(3.0)
    y = x * x
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad == 12
    with pytest.raises(RuntimeError, match="already backpropagated through mul.*retain_graph"):
        y.backward()    # the second one freed what mul saved, as in PyTorch
    x.zero_grad()
    (x * 5).backward()
    assert x.grad == 5


@pytest.mark.slow
def test_long_chain_has_no_recursion_limit():
    x = t(1.0)
    y = x
    for _ in range(100_000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad == 1.0


def test_nodes_without_gradient_are_skipped():
    calls = []

    class Spy(cg.Op):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, g):
            calls.append(1)
            return (g * 2,)

    x = t(1.0)
    const = cg.tensor(4.0)
    out = x * 3 + Spy.apply(const)      # Spy's branch needs no gradient
    assert not Spy.apply(const).requires_grad
    out.backward()
    assert x.grad == 3 and calls == [] and const.grad is None


def test_value_used_many_times_sums_gradients():
    x = t(2.0)
    y = x * x * x + x    # 3x^2 + 1 = 13
    y.backward()
    assert x.grad == 13


def test_no_grad():
    x = t(2.0)
    with cg.no_grad():
        y = x * 3
        assert not cg.is_grad_enabled()
    assert cg.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        y.backward()


def test_mixed_dtypes_and_bad_shapes_are_errors():
    a = cg.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    b = cg.tensor(np.ones((2, 3), np.float64), requires_grad=True)
    with pytest.raises(TypeError,
                       match=r"add: inputs mix float32 \(input 0\) and float64 \(input 1\)"):
        a + b
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\) do not broadcast"):
        b + cg.tensor(np.ones(4))
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(2, 3\) do not align"):
        b @ b
    with pytest.raises(ValueError, match=r"linear: need x \(B, D\), W \(H, D\), b \(H,\)"):
        cg.linear(b, cg.tensor(np.ones((4, 2))), cg.tensor(np.ones(4)))
    with pytest.raises(TypeError, match="mul: inputs mix float32 and float64"):
        a * np.ones((2, 3))
    with pytest.raises(TypeError, match="dtype must be float32, float64 or an integer"):
        cg.tensor([1, 2], dtype=np.float16)
    # Python scalars take the tensor's dtype: no upcast
    assert (a * 2.5).dtype == np.float32 and (1 - a).dtype == np.float32


def test_tensor_api():
    x = cg.tensor([[1., 2], [3, 4]], requires_grad=True)
    assert x.dtype == np.float64 and x.shape == (2, 2) and x.ndim == 2 and x.requires_grad
    assert cg.tensor(np.ones(3, np.float32)).dtype == np.float32
    assert cg.tensor([1, 2], dtype=np.float32).dtype == np.float32
    np.testing.assert_array_equal(x.T.data, [[1, 3], [2, 4]])
    assert x.sum().item() == 10 and x.mean().item() == 2.5
    assert x.reshape(4).shape == (4,) and x.reshape((1, 4)).shape == (1, 4)
    assert "requires_grad=True" in repr(x)
    src = np.ones(3)
    cg.tensor(src).data[0] = 7     # tensor() copies, as torch.tensor does
    assert src[0] == 1


def test_embedding_windows_gradient_rows(backend):
    E = t(np.arange(12.0).reshape(6, 2))
    windows = np.array([[0, 1, 1], [5, 1, 0]])
    X = cg.embedding_windows(E, windows)
    np.testing.assert_array_equal(X.data, [[0, 1, 2, 3, 2, 3], [10, 11, 2, 3, 0, 1]])
    X.backward(np.ones((2, 6)))
    np.testing.assert_array_equal(E.grad, [[2, 2], [3, 3], [0, 0], [0, 0], [0, 0], [1, 1]])


def test_sparse_embedding_gradient_matches_dense(backend, rng):
    from cygrad.graph import SparseRows

    E0 = rng.standard_normal((30, 4))
    windows = rng.integers(0, 6, (9, 5))
    g = rng.standard_normal((9, 20))
    grads = []
    for sparse in (False, True):
        E = t(E0)
        cg.embedding_windows(E, windows, sparse=sparse).backward(g)
        grads.append(E.grad)
    assert isinstance(grads[1], SparseRows) and not isinstance(grads[0], SparseRows)
    np.testing.assert_allclose(grads[1].to_dense(), grads[0], rtol=1e-14)
    # a table used by two lookups: the sparse gradients concatenate
    E = t(E0)
    (cg.embedding_windows(E, windows, sparse=True).sum()
     + cg.embedding_windows(E, windows[:3], sparse=True).sum()).backward()
    dense = np.zeros_like(E0)
    np.add.at(dense, windows.reshape(-1), 1.0)
    np.add.at(dense, windows[:3].reshape(-1), 1.0)
    np.testing.assert_allclose(E.grad.to_dense(), dense)
    X = lambda E: cg.embedding_windows(E, windows, sparse=True)   # noqa: E731
    assert cg.gradcheck(lambda E: (X(E) * X(E)).sum(), [t(E0)])


def test_sgd_optimizer_dense_and_sparse(rng):
    from cygrad.optim import SGD

    E0 = rng.standard_normal((40, 3))
    W0 = rng.standard_normal((2, 15))
    windows = rng.integers(0, 10, (6, 5))
    labels = rng.integers(0, 2, 6)
    after = []
    for sparse in (False, True):
        E, W, b = t(E0), t(W0), t(np.zeros(2))
        opt = SGD([E, W, b], lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            loss = cg.softmax_cross_entropy(
                cg.linear(cg.embedding_windows(E, windows, sparse=sparse), W, b), labels)
            loss.backward()
            opt.step()
        after.append((E.data.copy(), W.data.copy(), b.data.copy()))
    for x, y in zip(*after):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)
    # rows outside every window never move
    untouched = np.setdiff1d(np.arange(40), windows)
    np.testing.assert_array_equal(after[1][0][untouched], E0[untouched])
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        SGD([t(E0)], lr=-1)


def test_repr_names_the_op():
    x = cg.tensor([0.5, 1.0], requires_grad=True)
    assert "op=tanh" in repr(cg.tanh(x)) and "op=mul" in repr(x * x)


def test_tensor_dtypes_no_silent_upcast_of_floats():
    with pytest.raises(TypeError, match="float16 is not supported"):
        cg.tensor(np.ones(3, np.float16))
    assert cg.tensor(np.ones(3, np.float16), dtype=np.float32).dtype == np.float32
    assert cg.tensor(np.ones(3, ">f4")).dtype == np.float32
    assert cg.tensor(np.arange(3)).dtype == np.arange(3).dtype   # integers stay integers
    assert cg.tensor(np.array([True, False])).dtype == np.bool_
    assert cg.tensor(np.arange(3), dtype=np.float64).dtype == np.float64
