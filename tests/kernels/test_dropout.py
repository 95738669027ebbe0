"""Dropout (issue 14): the keyed-mask kernel against the NumPy reference (bit for
bit), its statistics, its gradient, the graph op, and compiled steps with
dropout equal to the eager graph and the same for any thread count."""

import numpy as np
import pytest

import cygrad as cg
from cygrad import kernels as K
from cygrad import reference as R


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("shape", [(1,), (7,), (37, 301), (3, 4, 5)])
def test_kernel_equals_reference(dtype, p, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    for key in (0, 1, 12345, 2 ** 40 + 7, 2 ** 63 - 2):
        for stream in (0, 3):
            got = K.dropout(x, p, key, stream=stream)
            want = R.dropout(x, p, key, stream=stream)
            assert got.dtype == dtype and got.shape == shape
            np.testing.assert_array_equal(got, want)
            # inverted dropout: kept elements scaled by 1 / (1 - p), the others 0
            kept = R.dropout_mask(shape, p, key, stream)
            np.testing.assert_array_equal(got[~kept], 0)
            np.testing.assert_allclose(got[kept], x[kept] / dtype(1 - p), rtol=2e-7 if
                                       dtype == np.float32 else 1e-15)


def test_in_place_strided_and_byte_swapped_inputs():
    x = np.random.default_rng(2).standard_normal((40, 50))
    want = R.dropout(x, 0.3, 9)
    y = x.copy()
    assert K.dropout(y, 0.3, 9, out=y) is y
    np.testing.assert_array_equal(y, want)
    xt = np.asfortranarray(x)
    np.testing.assert_array_equal(K.dropout(xt, 0.3, 9), want)      # copied, C order
    np.testing.assert_array_equal(K.dropout(x.astype(">f8"), 0.3, 9), want)
    with pytest.raises(ValueError, match="out"):
        K.dropout(x[:-1], 0.3, 9, out=x[1:])


def test_same_bits_for_any_thread_count():
    x = np.random.default_rng(3).standard_normal(300_001).astype(np.float32)
    outs = []
    for nt in (1, 2):
        with cg.threads(nt):
            outs.append(K.dropout(x, 0.4, 77))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], R.dropout(x, 0.4, 77))


def test_mask_statistics():
    n = 400_000
    for p in (0.1, 0.5, 0.8):
        rates = [R.dropout_mask((n,), p, k).mean() for k in range(8)]
        sd = np.sqrt(p * (1 - p) / n)
        assert abs(np.mean(rates) - (1 - p)) < 5 * sd / np.sqrt(8)
    m = [R.dropout_mask((n,), 0.5, k, s).astype(float) for k, s in ((1, 0), (2, 0), (1, 1))]
    bound = 5 / np.sqrt(n)
    assert abs(np.corrcoef(m[0], m[1])[0, 1]) < bound      # another key
    assert abs(np.corrcoef(m[0], m[2])[0, 1]) < bound      # another stream, same key
    assert abs(np.corrcoef(m[0][:-1], m[0][1:])[0, 1]) < bound   # neighbours
    assert not np.array_equal(m[0], m[1]) and not np.array_equal(m[0], m[2])


@pytest.mark.parametrize("bad, err, what", [
    (dict(p=1.0), ValueError, r"p must be in \[0, 1\), got 1.0"),
    (dict(p=-0.1), ValueError, "p must be in"),
    (dict(p=float("nan")), ValueError, "p must be in"),
    (dict(p="0.5"), TypeError, "p must be a number"),
    (dict(key=-1), ValueError, "key must be in"),
    (dict(key=2 ** 63), ValueError, "key must be in"),
    (dict(key=1.5), TypeError, "key must be an integer"),
    (dict(stream=-1), ValueError, "stream must be an integer"),
    (dict(stream=2 ** 32), ValueError, "stream must be an integer"),
])
def test_bad_arguments_are_named(bad, err, what):
    kw = dict(x=np.ones(4), p=0.5, key=3, stream=0)
    kw.update(bad)
    with pytest.raises(err, match=what):
        K.dropout(kw["x"], kw["p"], kw["key"], stream=kw["stream"])
    with pytest.raises(TypeError, match="x"):
        K.dropout(np.ones(4, np.int64), 0.5, 3)


def test_graph_op_gradient_and_backends():
    rng = np.random.default_rng(4)
    x0 = rng.standard_normal((6, 9))
    # central differences through a dropout between two nonlinearities
    assert cg.gradcheck(lambda x: cg.tanh(cg.dropout(cg.sigmoid(x), 0.4, 11, stream=2)),
                        [cg.tensor(x0, requires_grad=True)])
    x = cg.tensor(x0, requires_grad=True)
    y = cg.dropout(x, 0.4, 11)
    g = rng.standard_normal(x0.shape)
    (y * cg.tensor(g)).sum().backward()
    mask = R.dropout_mask(x0.shape, 0.4, 11)
    np.testing.assert_array_equal(x.grad, np.where(mask, g / 0.6, 0.0))
    with cg.use_backend("numpy"):
        np.testing.assert_array_equal(cg.dropout(cg.tensor(x0), 0.4, 11).data, y.data)
    assert cg.dropout(x, 0.4, 11, training=False) is x
    np.testing.assert_array_equal(cg.dropout(x, 0.4, np.array(11)).data, y.data)
    with pytest.raises(ValueError, match=r"key must be one integer, or two \(key, row\)"):
        cg.dropout(x, 0.4, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="the key's row must be in"):
        cg.dropout(x, 0.4, np.array([1, -2]))


def _window_model(dt, opt_name, p_in=0.2, p_h=0.5, seed=0):
    rng = np.random.default_rng(seed)
    V, d, w, H, C = 60, 5, 3, 40, 6
    ts = [cg.tensor((rng.standard_normal(s) * 0.3).astype(dt), requires_grad=True)
          for s in [(V, d), (H, w * d), (H,), (C, H), (C,)]]
    opt = (cg.optim.Adagrad(ts, lr=0.1) if opt_name == "adagrad" else cg.optim.SGD(ts, lr=0.1))
    E, W, b, U, c = ts

    def loss_fn(win, lab, key):
        x = cg.dropout(cg.embedding_windows(E, win, sparse=True), p_in, key)
        h = cg.dropout(cg.tanh(cg.linear(x, W, b)), p_h, key, stream=1)
        return cg.softmax_cross_entropy(cg.linear(h, U, c), lab)
    return ts, opt, loss_fn


def _batches(n, B, seed=5):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 60, (B, 3)), rng.integers(0, 6, B), np.array(rng.integers(0, 2 ** 62)))
            for _ in range(n)]


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("opt_name", ["sgd", "adagrad"])
def test_compiled_step_with_dropout_equals_eager(dt, opt_name):
    batches = _batches(6, 13) + _batches(2, 160, seed=6)      # a larger batch: a new plan
    t1, o1, f1 = _window_model(dt, opt_name)
    step = cg.compile(f1, optimizer=o1, strict=True)
    t2, o2, f2 = _window_model(dt, opt_name)
    for win, lab, key in batches:
        a = step(win, lab, key)
        o2.zero_grad()
        loss = f2(win, lab, key)
        loss.backward()
        o2.step()
        o2.zero_grad()
        tol = 1e-9 if dt == np.float64 else 2e-5
        assert a == pytest.approx(loss.item(), rel=tol)
    for x, y in zip(t1, t2):
        np.testing.assert_allclose(x.data, y.data, rtol=tol, atol=tol)
    assert step.plans == 2


def test_compiled_dropout_is_bitwise_the_same_for_1_and_2_threads():
    batches = _batches(5, 256)
    finals = []
    for nt in (1, 2):
        ts, opt, f = _window_model(np.float32, "adagrad")
        step = cg.compile(f, optimizer=opt, strict=True, threads=nt)
        losses = [step(*b) for b in batches]
        finals.append(([t.data.copy() for t in ts], losses))
    for a, b in zip(finals[0][0], finals[1][0]):
        np.testing.assert_array_equal(a, b)
    assert finals[0][1] == finals[1][1]


def test_compiled_dropout_needs_the_key_as_an_argument():
    ts, opt, _ = _window_model(np.float64, "sgd")
    E, W, b, U, c = ts

    def frozen_key(win, lab):
        x = cg.dropout(cg.embedding_windows(E, win, sparse=True), 0.5, 7)
        return cg.softmax_cross_entropy(cg.linear(cg.tanh(cg.linear(x, W, b)), U, c), lab)
    win, lab, _ = _batches(1, 8)[0]
    with pytest.raises(cg.CompileError, match="key that is not an argument"):
        cg.compile(frozen_key, optimizer=opt, strict=True)(win, lab)
    ts, opt, f = _window_model(np.float64, "sgd")
    step = cg.compile(f, optimizer=opt, strict=True)
    with pytest.raises(TypeError, match="key must be a numpy.ndarray"):
        step(win, lab, 5)
    step(win, lab, np.array(5))
    with pytest.raises(IndexError, match=r"dropout: key\[\] = -5 is out of range"):
        step(win, lab, np.array(-5))


@pytest.mark.parametrize("loss", ["softmax", "crf"])
def test_ner_training_with_dropout_is_the_same_for_1_and_2_threads(tmp_path, loss):
    from cygrad.ner import corpus
    from cygrad.ner.data import read_conll
    from cygrad.ner.model import Config
    from cygrad.ner.train import TrainConfig, train
    tr, dv = read_conll(corpus.path("train"))[:400], read_conll(corpus.path("test"))[:50]
    params = []
    for nt in (1, 2):
        m, _ = train(tr, dv, str(tmp_path / f"t{nt}"), Config(hidden=(64,), dim=16, loss=loss),
                     TrainConfig(epochs=2, batch_size=256, dropout=0.5, hidden_dropout=0.3,
                                 word_dropout=0.5),
                     log=lambda *a: None, progress=False, threads=nt)
        params.append(m.params)
    for k in params[0]:
        np.testing.assert_array_equal(params[0][k], params[1][k], err_msg=k)


def test_dropout_options_are_checked():
    from cygrad.ner.train import TrainConfig
    for bad in (dict(dropout=1.0), dict(hidden_dropout=-0.1), dict(word_dropout=-1.0)):
        with pytest.raises(ValueError, match=list(bad)[0]):
            TrainConfig(**bad)



@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_a_key_with_a_row_draws_those_rows_of_a_larger_batch(dt, nthreads):
    """dropout(x[a:b], p, [key, a]) is rows a:b of dropout(x, p, key): in the
    kernel (first = a * row size, flat indices modulo 2**32), the NumPy reference,
    the graph op and its gradient, and a compiled step (data-parallel ranks draw one
    process's masks so)."""
    from cygrad import kernels as K
    from cygrad import reference as R
    rng = np.random.default_rng(5)
    x = rng.normal(size=(13, 7)).astype(dt)
    full = K.dropout(x, 0.3, 99, stream=2)
    for a, b in ((0, 13), (4, 9), (12, 13)):
        np.testing.assert_array_equal(K.dropout(x[a:b], 0.3, 99, stream=2, first=a * 7),
                                      full[a:b])
        np.testing.assert_array_equal(R.dropout(x[a:b], 0.3, 99, stream=2, first=a * 7),
                                      full[a:b])
        t = cg.tensor(x[a:b], requires_grad=True)
        y = cg.dropout(t, 0.3, np.array([99, a]), stream=2)
        np.testing.assert_array_equal(y.data, full[a:b])
        y.sum().backward()
        np.testing.assert_array_equal(t.grad, (full[a:b] != 0) / dt(0.7))
    # indices wrap at 2**32 alike everywhere
    big = 2 ** 32 - 3
    np.testing.assert_array_equal(K.dropout(x, 0.3, 5, first=big),
                                  R.dropout(x, 0.3, 5, first=big))
    # compiled: a step whose key argument is (key, row) draws the rows' masks
    ps = [cg.tensor(rng.normal(size=(3, 7)).astype(dt), requires_grad=True),
          cg.tensor(np.zeros(3, dt), requires_grad=True)]
    ps2 = [cg.tensor(p.data.copy(), requires_grad=True) for p in ps]

    def loss(W, b):
        return lambda xb, k, t: cg.mse_loss(cg.dropout(cg.tanh(cg.linear(xb, W, b)), 0.5, k), t)
    step = cg.compile(loss(*ps), cg.optim.SGD(ps, lr=0.1), strict=True)
    opt2 = cg.optim.SGD(ps2, lr=0.1)
    target = np.ones((5, 3), dt)
    for a in (0, 3, 8):
        k = np.array([1234 + a, a], np.int64)
        step(x[a:a + 5], k, target)
        opt2.zero_grad()
        loss(*ps2)(x[a:a + 5], k, target).backward()
        opt2.step()
        for p, q in zip(ps, ps2):
            np.testing.assert_allclose(p.data, q.data,
                                       rtol=1e-5 if dt == np.float32 else 1e-12)
