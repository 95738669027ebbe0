"""Inputs the kernels' raw-pointer loops must not read as they come: non-native
byte order, addresses not aligned to the itemsize, outputs overlapping inputs,
index arrays that change (or alias a table being written) after the check,
masks that are not bool. Each either gives the right answer (inputs are copied
into plain arrays) or a clear error naming the argument: never garbage."""

import numpy as np
import pytest

import cygrad as cg
from cygrad import kernels as K
from cygrad import reference as R
from cygrad.ner.data import read_conll


def big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


def misaligned(a):
    """A C-contiguous copy of a whose data starts one byte past an aligned address."""
    buf = np.zeros(a.nbytes + a.itemsize, np.uint8)
    start = 1 if buf.ctypes.data % a.itemsize == 0 else 0
    out = np.frombuffer(buf, a.dtype, count=a.size, offset=start).reshape(a.shape)
    assert not out.flags.aligned
    out[...] = a
    return out


@pytest.mark.parametrize("make", [big_endian, misaligned], ids=["big-endian", "misaligned"])
def test_unusual_inputs_are_read_correctly(make, rng):
    x = rng.standard_normal((7, 5))
    w = rng.standard_normal((4, 5))
    np.testing.assert_allclose(K.tanh(make(x)), np.tanh(x), rtol=1e-13)
    np.testing.assert_allclose(K.tanh_backward(make(x), make(x)), R.tanh_backward(x, x),
                               rtol=1e-13)
    np.testing.assert_allclose(K.matmul(make(x), make(w), trans_b=True), x @ w.T, rtol=1e-12)
    np.testing.assert_allclose(K.add_bias(make(x), make(x[0])), x + x[0], rtol=1e-15)
    np.testing.assert_allclose(K.bias_grad(make(x)), x.sum(0), rtol=1e-13)
    labels = np.array([0, 1, 2, 3, 4, 0, 1])
    got = K.softmax_cross_entropy(make(x), make(labels))
    want = R.softmax_cross_entropy(x, labels)
    assert got[0] == pytest.approx(want[0], rel=1e-13)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
    table = rng.standard_normal((10, 3))
    win = np.array([[1, 2], [9, 0]])
    np.testing.assert_array_equal(K.embedding_gather(make(table), make(win)),
                                  R.embedding_gather(table, win))


@pytest.mark.parametrize("make", [big_endian, misaligned], ids=["big-endian", "misaligned"])
def test_unusual_outputs_are_refused_by_name(make, rng):
    x = rng.standard_normal(6)
    what = "byte order" if make is big_endian else "aligned"
    with pytest.raises(ValueError, match=f"out must be .*{what}"):
        K.tanh(x, out=make(np.zeros(6)))
    with pytest.raises(ValueError, match=f"param is updated in place and must be .*{what}"):
        K.sgd_update(make(np.zeros(6)), x, 0.1)
    with pytest.raises(ValueError, match=f"table is updated in place and must be .*{what}"):
        K.embedding_sgd_update(make(np.zeros((4, 3))), np.array([[0, 1]]), np.ones((1, 6)), 0.1)


def test_partial_overlap_is_refused():
    buf = np.linspace(-1, 1, 10)
    with pytest.raises(ValueError, match="out overlaps z"):
        K.tanh(buf[:-1], out=buf[1:])
    with pytest.raises(ValueError, match="out overlaps grad_out"):
        K.relu_backward(buf[1:], buf[1:].copy(), out=buf[:-1])
    Z = np.ones((3, 4))
    with pytest.raises(ValueError, match="out overlaps b"):
        K.add_bias(Z, Z[0], out=Z)
    table = np.ones((5, 2))
    with pytest.raises(ValueError, match="out overlaps table"):
        K.embedding_gather(table, np.array([[0, 1]]), out=table[1:3].reshape(1, 4))
    p = np.ones(4)
    with pytest.raises(ValueError, match="param overlaps accum"):
        K.adagrad_update(p, p, np.ones(4), 0.1)
    t, acc = np.ones((6, 2)), np.ones((6, 2))
    with pytest.raises(ValueError, match="table overlaps dX"):
        K.embedding_adagrad_update(t, acc, np.array([[0]]), t[4:5], 0.1)
    flat = np.zeros(9)
    with pytest.raises(ValueError, match="out overlaps logits"):
        K.softmax_cross_entropy(flat[:6].reshape(2, 3), np.array([0, 1]),
                                out=flat[3:].reshape(2, 3))


def test_exact_in_place_calls_still_work(rng):
    x = rng.standard_normal(50)
    want = np.tanh(x)
    assert K.tanh(x, out=x) is x
    np.testing.assert_allclose(x, want, rtol=1e-13)
    Z, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    want = Z + b
    K.add_bias(Z, b, out=Z)
    np.testing.assert_allclose(Z, want, rtol=1e-15)
    logits = rng.standard_normal((4, 3))
    want = R.softmax_cross_entropy(logits, np.arange(4) % 3)[1]
    _, d = K.softmax_cross_entropy(logits, np.arange(4) % 3, out=logits)
    assert d is logits
    np.testing.assert_allclose(logits, want, rtol=1e-12)


def test_index_array_aliasing_the_table_is_read_once(rng):
    """windows viewed from the very table being updated: the kernel works from the
    indices as they were when it was called (its own checked copy)."""
    table = np.zeros((8, 4))
    windows = table.view(np.int64)[:2, :2]      # all 0: row 0 of its own table
    dX = rng.standard_normal((2, 8))
    want = R.embedding_sgd_update(table.copy(), windows.copy(), dX, 0.5)
    K.embedding_sgd_update(table, windows, dX, 0.5)
    np.testing.assert_array_equal(table, want)


def test_read_only_inputs_are_accepted(rng):
    s = rng.standard_normal(5)
    t = (rng.random(5) > 0.5).astype(float)
    s.setflags(write=False)
    t.setflags(write=False)
    assert K.sigmoid_binary_cross_entropy(s, t)[0] == pytest.approx(
        R.sigmoid_binary_cross_entropy(s, t)[0], rel=1e-13)
    sc = s.copy()
    sc.setflags(write=False)
    assert K.max_margin(s, sc)[0] == pytest.approx(R.max_margin(s, sc)[0], rel=1e-13)


def test_viterbi_masks_must_be_bool():
    scores = np.zeros((3, 2))
    with pytest.raises(TypeError, match="allowed must be a numpy.ndarray of bool"):
        K.constrained_viterbi(scores, np.array([0, 3]), np.full((2, 2), 0.5), np.ones(2, bool))
    with pytest.raises(TypeError, match="start_allowed must be a numpy.ndarray of bool"):
        K.constrained_viterbi(scores, np.array([0, 3]), np.ones((2, 2), bool), np.ones(2))
    with pytest.raises(TypeError, match="allowed must be a numpy.ndarray of bool"):
        R.constrained_viterbi(scores, np.array([0, 3]), np.full((2, 2), 0.5), np.ones(2, bool))


def test_gradcheck_refuses_a_zero_step():
    x = cg.tensor(np.ones(2), requires_grad=True)
    for eps in (0, -1e-6, float("nan")):
        with pytest.raises(ValueError, match="eps must be a positive finite number"):
            cg.gradcheck(lambda a: (a * a).sum(), [x], eps=eps)


def test_conll_byte_order_mark_is_not_a_token(tmp_path):
    p = tmp_path / "bom.conll"
    p.write_bytes(b"\xef\xbb\xbfEU B-ORG\nrejects O\n")
    (s,) = read_conll(p)
    assert s.tokens == ["EU", "rejects"]
