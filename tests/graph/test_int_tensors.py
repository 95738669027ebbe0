"""Integer tensors: labels and ids as cygrad tensors, never silently made floats."""

import numpy as np
import pytest

import cygrad as cg
from cygrad import reference as ref


def test_integer_data_keeps_its_dtype_and_cannot_require_grad():
    for dt in (np.int8, np.int32, np.int64, np.uint16, np.bool_):
        t = cg.tensor(np.array([1, 0, 1], dtype=dt))
        assert t.dtype == dt and not t.requires_grad
    assert cg.tensor([3, 1]).dtype == np.array([3, 1]).dtype
    assert cg.tensor(np.array([1, 2], dtype=">i4")).dtype == np.dtype("=i4")
    assert cg.tensor([1, 2], dtype=np.float32).dtype == np.float32     # explicit: numbers
    assert cg.tensor([1, 2], dtype=np.int16).dtype == np.int16
    with pytest.raises(TypeError, match="only float32 and float64 tensors can require "
                                        "gradients, got dtype int64"):
        cg.tensor(np.array([1, 2]), requires_grad=True)
    with pytest.raises(TypeError, match="an integer tensor is made from integer data only"):
        cg.tensor([0.5, 1.5], dtype=np.int64)


def test_arithmetic_on_an_integer_tensor_is_refused_by_name():
    i = cg.tensor(np.array([1, 2, 3]))
    f = cg.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match=r"add: an input is an integer tensor \(int64\); "
                                        r"convert it explicitly"):
        i + 1.0
    with pytest.raises(TypeError,
                       match=r"mul: inputs mix float64 \(input 0\) and int64 \(input 1\)"):
        f * i
    with pytest.raises(TypeError, match="tanh: an input is an integer tensor"):
        cg.tanh(i)


@pytest.mark.parametrize("dt", [np.int32, np.int64, np.uint8])
def test_integer_label_and_id_tensors_are_accepted_where_labels_are_expected(dt):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    y = np.array([0, 3, 1, 1, 2], dtype=dt)
    L = cg.tensor(logits, requires_grad=True)
    loss = cg.softmax_cross_entropy(L, cg.tensor(y))
    loss.backward()
    want_loss, want_d = ref.softmax_cross_entropy(logits, y.astype(np.int64))
    np.testing.assert_allclose(loss.item(), want_loss, rtol=1e-12)
    np.testing.assert_allclose(L.grad, want_d, rtol=1e-12)

    E = cg.tensor(rng.standard_normal((7, 2)), requires_grad=True)
    w = np.array([[0, 6, 2], [1, 1, 5]], dtype=dt)
    X = cg.embedding_windows(E, cg.tensor(w))
    np.testing.assert_array_equal(X.data, E.data[w.astype(np.int64)].reshape(2, 6))


def test_a_float_label_tensor_is_still_refused():
    L = cg.tensor(np.zeros((2, 3)), requires_grad=True)
    with pytest.raises(TypeError, match="labels must be integers, got float64"):
        cg.softmax_cross_entropy(L, cg.tensor(np.array([0., 1.])))


def test_shape_ops_move_integer_tensors_and_gradcheck_keeps_them():
    y = cg.tensor(np.array([[2, 0, 1], [1, 1, 0]]))
    assert y[0].dtype == y.dtype and np.array_equal(y[0].data, [2, 0, 1])
    assert np.array_equal(y.reshape(6).data, [2, 0, 1, 1, 1, 0]) and y.T.shape == (3, 2)
    with pytest.raises(TypeError, match="sum: an input is an integer tensor"):
        y.sum()
    rng = np.random.default_rng(1)
    L = cg.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    labels = cg.tensor(np.array([3, 0, 2]))
    assert cg.gradcheck(lambda L, lab: cg.softmax_cross_entropy(L, lab), [L, labels])


def test_modules_take_integer_id_tensors():
    from cygrad import nn
    emb = nn.Embedding(10, 3, generator=0)
    ids = np.array([[1, 9], [0, 0]])
    np.testing.assert_array_equal(emb(cg.tensor(ids)).data, emb(ids).data)
    with pytest.raises(TypeError, match="indices must be integers, got float64"):
        emb(cg.tensor(ids, dtype=np.float64))
    with pytest.raises(TypeError, match="Parameter: data must be float32 or float64, got int64"):
        nn.Parameter(np.arange(3))


def test_an_integer_dtype_that_cannot_hold_the_data_is_refused():
    with pytest.raises(ValueError, match=r"do not fit dtype int8 \(values -1..300\)"):
        cg.tensor(np.array([300, -1]), dtype=np.int8)
    assert cg.tensor(np.array([100, -1]), dtype=np.int8).data.tolist() == [100, -1]


def test_compile_names_an_integer_tensor_made_of_an_argument():
    W = cg.tensor(np.zeros((3, 4)), requires_grad=True)
    opt = cg.optim.SGD([W], lr=0.1)
    x, y = np.ones((2, 4)), np.array([0, 2])
    step = cg.compile(lambda x, y: cg.softmax_cross_entropy(cg.tensor(x) @ W.T, cg.tensor(y)),
                      optimizer=opt, strict=True)
    with pytest.raises(cg.CompileError, match="makes an integer tensor of its argument"):
        step(x, y)
    assert np.all(W.data == 0)          # nothing updated
