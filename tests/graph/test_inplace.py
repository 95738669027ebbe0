"""In-place writes to what a graph saved for backward (issue 13): refused while the
graph can still use it, or detected by the tensor's version at backward; never a
silently wrong gradient."""

import gc
import threading

import numpy as np
import pytest

import cygrad as cg
from cygrad.graph import _guard
from helpers import in_python_threads


def t(a, **kw):
    return cg.tensor(np.asarray(a, dtype=np.float64), requires_grad=True, **kw)


def test_write_between_forward_and_backward_is_refused():
    x, w = t([1.0, 2.0, 3.0]), t([2.0, 2.0, 2.0])
    y = (x * w).sum()
    with pytest.raises(ValueError, match="read-only"):
        w.data[...] = 0
    with pytest.raises(ValueError, match="read-only"):
        x.data += 1
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])     # the w forward saw
    np.testing.assert_array_equal(w.grad, [1.0, 2.0, 3.0])
    w.data[...] = 0       # backward ran: writable again
    assert w.data.flags.writeable and x.data.flags.writeable
    assert _guard.n_protected() == (0, 0)


def test_saved_output_is_protected_too():
    x = t([0.5, -1.0])
    h = cg.tanh(x)      # tanh saves its output
    y = (h * h).sum()
    with pytest.raises(ValueError, match="read-only"):
        h.data[0] = 9.0
    y.backward()
    hh = np.tanh([0.5, -1.0])
    np.testing.assert_allclose(x.grad, 2 * hh * (1 - hh * hh), rtol=1e-12)


def test_dropping_the_graph_lifts_the_protection():
    w = t(np.ones((3, 2)))
    y = cg.linear(t(np.ones((4, 2))), w, t(np.zeros(3))).sum()
    assert not w.data.flags.writeable
    del y
    gc.collect()
    assert w.data.flags.writeable
    assert _guard.n_protected() == (0, 0)


def test_an_array_saved_by_two_live_graphs_waits_for_both():
    x, w = t([1.0, 2.0]), t([3.0, 4.0])
    y1 = (x * w).sum()
    y2 = (w * w).sum()
    y1.backward()
    assert not w.data.flags.writeable           # y2 still needs it
    y2.backward()
    assert w.data.flags.writeable
    np.testing.assert_array_equal(w.grad, [1.0 + 6.0, 2.0 + 8.0])


def test_no_grad_forward_protects_nothing():
    w = t([1.0, 2.0])
    with cg.no_grad():
        y = (w * w).sum()
    w.data[...] = 0
    assert y.item() == 5.0


@pytest.mark.parametrize("opt_cls", [cg.optim.SGD, cg.optim.Adagrad])
def test_optimiser_step_on_a_live_graph_makes_its_backward_refuse(opt_cls):
    x, w = t([1.0, 2.0]), t([3.0, 4.0], name="w")
    opt = opt_cls([w], lr=0.1)
    stale = (x * w).sum()          # e.g. an evaluation outside no_grad, kept alive
    (w * w).sum().backward()
    before = w.data.copy()
    opt.step()                     # allowed (PyTorch allows it too) ...
    assert not np.array_equal(w.data, before)
    assert not w.data.flags.writeable          # ... and stale still protects it
    with pytest.raises(RuntimeError, match=r"mul \(tensor 'w' of shape \(2,\).*version 0, now 1"):
        stale.backward()
    del stale
    gc.collect()
    assert w.data.flags.writeable


def test_optimiser_made_while_protected_keeps_the_parameters_array():
    w = t([1.0, 2.0])
    y = (w * w).sum()
    arr = w.data
    opt = cg.optim.SGD([w], lr=0.5)
    assert w.data is arr          # not replaced by a copy because it was read-only
    y.backward()
    opt.step()
    np.testing.assert_allclose(arr, [0.0, 0.0])


def test_compiled_step_bumps_versions():
    rng = np.random.default_rng(0)
    E = t(rng.standard_normal((10, 3)))
    W = t(rng.standard_normal((4, 6)))
    b = t(np.zeros(4))
    opt = cg.optim.SGD([E, W, b], lr=0.1)

    def loss_fn(windows, labels):
        x = cg.embedding_windows(E, windows, sparse=True)
        return cg.softmax_cross_entropy(cg.linear(x, W, b), labels)

    step = cg.compile(loss_fn, optimizer=opt, strict=True)
    windows = rng.integers(0, 10, (5, 2))
    labels = rng.integers(0, 4, 5)
    step(windows, labels)                 # traces, runs on the graph
    stale = (W * W).sum()
    step(windows, labels)                 # the plan writes W in place
    with pytest.raises(RuntimeError, match="updated in place after the forward pass"):
        stale.backward()


def test_write_through_a_view_is_caught():
    x, w = t(np.ones((2, 3))), t(np.arange(12.0).reshape(4, 3), name="W")
    y = (x @ w.T).sum()       # matmul saves a transposed view of W's array
    with pytest.raises(ValueError, match="read-only"):
        w.data[0, 0] = 100.0
    opt = cg.optim.SGD([w], lr=1.0)
    (w * 1.0).sum().backward()
    opt.step()
    with pytest.raises(RuntimeError, match="updated in place"):
        y.backward()
    del y
    gc.collect()
    assert w.data.flags.writeable and _guard.n_protected() == (0, 0)


def test_views_wait_for_their_base():
    w = t(np.arange(6.0).reshape(2, 3))
    wt = w.T                        # a view tensor
    y1 = (wt * wt).sum()            # protects wt's array and its base, w's
    y2 = (w * w).sum()              # protects w's array again
    y1.backward()                   # wt's count ends while w's base is still held
    assert not wt.data.flags.writeable
    y2.backward()
    assert wt.data.flags.writeable and w.data.flags.writeable
    assert _guard.n_protected() == (0, 0)


def test_retain_graph_keeps_the_protection_until_the_last_backward():
    x = t([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    assert not x.data.flags.writeable
    y.backward()
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])
    assert x.data.flags.writeable
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_embedding_windows_backward_uses_the_ids_forward_saw():
    E = t(np.arange(12.0).reshape(6, 2))
    windows = np.array([[0, 1], [2, 3]])
    y = (cg.embedding_windows(E, windows) * 1.0).sum()
    windows[:] = 5            # the caller reuses its buffer for the next batch
    y.backward()
    expect = np.zeros((6, 2))
    expect[:4] = 1.0
    np.testing.assert_array_equal(E.grad, expect)


def test_an_array_that_was_read_only_before_stays_read_only():
    a = np.array([1.0, 2.0])
    a.flags.writeable = False
    w = cg.Tensor(a, requires_grad=True)
    y = (w * w).sum()
    y.backward()
    assert not a.flags.writeable
    np.testing.assert_array_equal(w.grad, [2.0, 4.0])


def test_threads_building_graphs_on_shared_parameters():
    w = t(np.ones((8, 4)))

    def work():
        rng = np.random.default_rng(threading.get_ident() % 1000)
        for _ in range(200):
            x = cg.tensor(rng.standard_normal((3, 4)))
            y = (x @ w.T).sum()
            if rng.random() < 0.5:
                y.backward()
            del y

    errors = in_python_threads(work)
    gc.collect()
    assert not errors
    assert w.data.flags.writeable
    assert _guard.n_protected() == (0, 0)
