"""Bad input: a clear exception naming the argument and the offending shape,
dtype or value; never a crash or a silently wrong answer."""

import numpy as np
import pytest

from cygrad import kernels as K

f32, f64 = np.float32, np.float64


def z(*shape, dtype=f64):
    return np.zeros(shape, dtype)


@pytest.mark.parametrize("name", sorted(K.ACTIVATIONS))
def test_activation_bad_input(name):
    f, fb, _ = K.ACTIVATIONS[name]
    with pytest.raises(TypeError, match=r"z must have dtype float32 or float64, got int64"):
        f(np.arange(3))
    with pytest.raises(TypeError, match=r"z must be a numpy.ndarray.*list"):
        f([1.0, 2.0])
    with pytest.raises(ValueError, match=r"out must have shape \(3,\), got \(4,\)"):
        f(z(3), out=z(4))
    with pytest.raises(TypeError, match=r"out must have dtype float64, got float32"):
        f(z(3), out=z(3, dtype=f32))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        f(z(3, 4), out=z(4, 3).T)
    ro = z(3)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out must be writeable"):
        f(z(3), out=ro)
    with pytest.raises(TypeError, match=r"grad_out and saved must have the same dtype, got "
                                        r"float32 and float64"):
        fb(z(3, dtype=f32), z(3))
    with pytest.raises(ValueError, match=r"same shape, got \(3,\) and \(2, 3\)"):
        fb(z(3), z(2, 3))


def test_matmul_bad_input():
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ: op\(a\) is 2x3 "
                                         r"\(a\(2, 3\), trans_a=False\) and op\(b\) is 4x5"):
        K.matmul(z(2, 3), z(4, 5))
    with pytest.raises(ValueError, match=r"op\(a\) is 3x2"):
        K.matmul(z(2, 3), z(4, 5), trans_a=True)
    with pytest.raises(TypeError, match=r"a and b must have the same dtype, got float32 and "
                                        r"float64 \(no implicit casting\)"):
        K.matmul(z(2, 3, dtype=f32), z(3, 4))
    with pytest.raises(ValueError, match=r"a must be 2-D, got shape \(3,\)"):
        K.matmul(z(3), z(3, 4))
    with pytest.raises(TypeError, match="b must have dtype float32 or float64, got int32"):
        K.matmul(z(2, 3), np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4\), got \(4, 2\)"):
        K.matmul(z(2, 3), z(3, 4), out=z(4, 2))
    with pytest.raises(ValueError, match="accumulate=True needs out="):
        K.matmul(z(2, 3), z(3, 4), accumulate=True)
    a = z(3, 3)
    with pytest.raises(ValueError, match="out must not overlap a or b"):
        K.matmul(a, z(3, 3), out=a)


def test_outer_accumulate_bad_input():
    with pytest.raises(ValueError, match=r"dW must have shape \(3, 4\) for delta \(3,\)"):
        K.outer_accumulate(z(4, 3), z(3), z(4))
    with pytest.raises(ValueError, match=r"both be 1-D .* or both 2-D"):
        K.outer_accumulate(z(3, 4), z(3), z(2, 4))
    with pytest.raises(ValueError, match=r"same batch size, got delta \(2, 3\) and x \(5, 4\)"):
        K.outer_accumulate(z(3, 4), z(2, 3), z(5, 4))
    with pytest.raises(ValueError, match="dW is updated in place and must be C-contiguous"):
        K.outer_accumulate(z(4, 3).T, z(3), z(4))
    with pytest.raises(TypeError, match="dW and x must have the same dtype"):
        K.outer_accumulate(z(3, 4), z(3), z(4, dtype=f32))


def test_bias_bad_input():
    with pytest.raises(ValueError, match=r"b must have shape \(4,\) to match z \(3, 4\), "
                                         r"got \(3,\)"):
        K.add_bias(z(3, 4), z(3))
    with pytest.raises(TypeError, match="z and b must have the same dtype"):
        K.add_bias(z(3, 4), z(4, dtype=f32))
    with pytest.raises(ValueError, match=r"dz must be 2-D, got shape \(4,\)"):
        K.bias_grad(z(4))


@pytest.mark.parametrize("bad", [-1, 9, 10, np.iinfo(np.int64).max])
def test_softmax_label_out_of_range(bad):
    labels = np.array([0, 3, bad, 1])
    with pytest.raises(IndexError, match=r"softmax_cross_entropy: labels\[2\] = "):
        K.softmax_cross_entropy(z(4, 9), labels)
    with pytest.raises(IndexError, match=rf"= {bad} is out of range \[0, 9\)"):
        K.softmax_cross_entropy(z(4, 9), labels)


def test_softmax_bad_input():
    with pytest.raises(TypeError, match="labels must have an integer dtype, got float64"):
        K.softmax_cross_entropy(z(2, 3), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\) to match logits "
                                         r"\(2, 3\), got \(3,\)"):
        K.softmax_cross_entropy(z(2, 3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"at least one row and one class, got shape \(0, 3\)"):
        K.softmax_cross_entropy(z(0, 3), np.array([], np.int64))
    with pytest.raises(IndexError, match=r"out of range \[0, 2\)"):
        K.softmax_cross_entropy(z(1, 2), np.array([2], np.uint8))


def test_other_losses_bad_input():
    with pytest.raises(ValueError, match=r"targets\[1\] = 2 is outside \[0, 1\]"):
        K.sigmoid_binary_cross_entropy(z(3), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match=r"targets\[0\] = nan is outside"):
        K.sigmoid_binary_cross_entropy(z(1), np.array([np.nan]))
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\), got \(2,\)"):
        K.sigmoid_binary_cross_entropy(z(3), np.array([0, 1]))
    with pytest.raises(TypeError, match="s_true and s_corrupt must have the same dtype"):
        K.max_margin(z(3), z(3, dtype=f32))
    with pytest.raises(ValueError, match=r"same shape, got \(3,\) and \(2,\)"):
        K.max_margin(z(3), z(2))
    with pytest.raises(ValueError, match="margin must be a number"):
        K.max_margin(z(3), z(3), margin=float("nan"))


@pytest.mark.parametrize("bad", [-1, 20, 21])
@pytest.mark.parametrize("fn", ["gather", "scatter", "sgd"])
def test_window_index_out_of_range(fn, bad):
    table = z(20, 4)
    windows = np.array([[1, 2, 3], [4, bad, 5]])
    dX = z(2, 12)
    call = {"gather": lambda: K.embedding_gather(table, windows),
            "scatter": lambda: K.embedding_scatter_add(table, windows, dX),
            "sgd": lambda: K.embedding_sgd_update(table, windows, dX, 0.1)}[fn]
    with pytest.raises(IndexError, match=rf"windows\[1, 1\] = {bad} is out of range "
                                         rf"\[0, 20\)"):
        call()
    assert not table.any()   # nothing was written before the check failed


def test_embedding_bad_input():
    table = z(20, 4)
    with pytest.raises(ValueError, match=r"dX must have shape \(2, 12\) for windows \(2, 3\) "
                                         r"and grad_table \(20, 4\), got \(2, 8\)"):
        K.embedding_scatter_add(table, np.zeros((2, 3), int), z(2, 8))
    with pytest.raises(TypeError, match="windows must have an integer dtype, got float64"):
        K.embedding_gather(table, z(2, 3))
    with pytest.raises(ValueError, match=r"windows must be 2-D, got shape \(3,\)"):
        K.embedding_gather(table, np.zeros(3, int))
    with pytest.raises(TypeError, match="table and dX must have the same dtype"):
        K.embedding_sgd_update(table, np.zeros((2, 3), int), z(2, 12, dtype=f32), 0.1)
    with pytest.raises(ValueError, match="grad_table is updated in place and must be "
                                         "C-contiguous"):
        K.embedding_scatter_add(z(4, 20).T, np.zeros((2, 3), int), z(2, 12))
    with pytest.raises(ValueError, match="lr must be finite, got inf"):
        K.embedding_sgd_update(table, np.zeros((2, 3), int), z(2, 12), float("inf"))


def test_sgd_update_bad_input():
    with pytest.raises(ValueError, match=r"grad must have the shape of param \(3, 4\), got "
                                         r"\(4, 3\)"):
        K.sgd_update(z(3, 4), z(4, 3), 0.1)
    with pytest.raises(TypeError, match="param and grad must have the same dtype"):
        K.sgd_update(z(3), z(3, dtype=f32), 0.1)
    ro = z(3)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="param is updated in place and must be writeable"):
        K.sgd_update(ro, z(3), 0.1)
    with pytest.raises(ValueError, match="lr must be finite, got nan"):
        K.sgd_update(z(3), z(3), float("nan"))
