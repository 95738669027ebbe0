"""cygrad.compile: a compiled step is the eager graph's step (parameters, optimiser
state and losses after several steps), for every model the NER command line trains
and for models users write; fallback and strict mode; bad input; no allocation
after the first step; bitwise reproducibility across runs and thread counts."""

import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import cygrad as cg
from cygrad import CompileError, CompileWarning

V, d, w, H, C = 31, 4, 3, 20, 5
ACTS = sorted(cg.ACTIVATIONS)


def _init(kind, dt, rng):
    """Initial parameter arrays for a model kind."""
    u = lambda *s: rng.uniform(-0.4, 0.4, s).astype(dt)    # noqa: E731
    if kind == "tables3":
        D = w * (d + 3 + 2)
        return [u(V, d), u(7, 3), u(4, 2), u(H, D), u(H), u(C, H), u(C)]
    if kind == "dense_input":
        return [u(H, 11), u(H), u(C, H), u(C)]
    if kind == "average":
        return [u(V, d), u(H, d), u(H), u(C, H), u(C)]
    if kind.startswith("deep"):
        sizes = [w * d] + ([24, 16] if kind == "deep2" else [24, 16, 12])
        out = [u(V, d)]
        for a, b in zip(sizes[:-1], sizes[1:]):
            out += [u(b, a), u(b)]
        return out + [u(C, sizes[-1]), u(C)]
    n_out = 1 if kind in ("margin", "logistic") else C
    return [u(V, d), u(H, w * d), u(H), u(n_out, H), u(n_out)]


def _loss_fn(kind, ts, act="tanh"):
    f = cg.ACTIVATIONS[act]

    def hidden(x, layers):
        for k in range(0, len(layers), 2):
            x = f(cg.linear(x, layers[k], layers[k + 1]))
        return x

    if kind == "written":       # the layers written out: x @ W.T + b
        E, W, b, U, c = ts

        def loss_fn(win, labels):
            h = f(cg.embedding_windows(E, win, sparse=True) @ W.T + b)
            return cg.softmax_cross_entropy(h @ U.T + c, labels)
        return loss_fn

    if kind == "tables3":
        E, S, Cs, W, b, U, c = ts

        def loss_fn(words, suffixes, cases, labels):
            x = cg.concat([cg.embedding_windows(E, words, sparse=True),
                           cg.embedding_windows(S, suffixes, sparse=True),
                           cg.embedding_windows(Cs, cases)], axis=1)
            return cg.softmax_cross_entropy(cg.linear(hidden(x, [W, b]), U, c), labels)
        return loss_fn
    if kind == "dense_input":
        W, b, U, c = ts

        def loss_fn(X, labels):
            return cg.softmax_cross_entropy(cg.linear(hidden(X, [W, b]), U, c), labels)
        return loss_fn
    E = ts[0]
    layers, (U, c) = ts[1:-2], ts[-2:]

    def scores(win):
        x = cg.embedding_windows(E, win, sparse=True)
        if kind == "average":
            x = x.reshape(x.shape[0], w, d).mean(axis=1)
        return cg.linear(hidden(x, layers), U, c)

    if kind == "margin":
        def loss_fn(win, corrupt):
            B = win.shape[0]
            return cg.max_margin(scores(win).reshape(B), scores(corrupt).reshape(B))
    elif kind == "logistic":
        def loss_fn(win, targets):
            return cg.sigmoid_binary_cross_entropy(scores(win).reshape(win.shape[0]), targets)
    else:
        def loss_fn(win, labels):
            return cg.softmax_cross_entropy(scores(win), labels)
    return loss_fn


def _batch(kind, B, dt, rng):
    win = rng.integers(0, V, (B, w))
    if kind == "tables3":
        return (win, rng.integers(0, 7, (B, w)), rng.integers(0, 4, (B, w)),
                rng.integers(0, C, B))
    if kind == "dense_input":
        return rng.standard_normal((B, 11)).astype(dt), rng.integers(0, C, B)
    if kind == "margin":
        cor = win.copy()
        cor[:, w // 2] = rng.integers(0, V, B)
        return win, cor
    if kind == "logistic":
        return win, rng.integers(0, 2, B).astype(dt)
    return win, rng.integers(0, C, B)


def _run(kind, dt, opt_name, batches, compiled, act="tanh", frozen=False, lr=0.2, seed=0,
         threads=None, strict=True):
    rng = np.random.default_rng(seed)
    init = _init(kind, dt, rng)
    ts = [cg.tensor(a, requires_grad=not (frozen and i == 0)) for i, a in enumerate(init)]
    trainable = [t for t in ts if t.requires_grad]
    opt = cg.optim.SGD(trainable, lr=lr) if opt_name == "sgd" else \
        cg.optim.Adagrad(trainable, lr=lr)
    loss_fn = _loss_fn(kind, ts, act)
    if compiled:
        step = cg.compile(loss_fn, optimizer=opt, strict=strict, threads=threads)
    losses = []
    for batch in batches:
        if compiled:
            losses.append(step(*batch))
        else:
            opt.zero_grad()
            loss = loss_fn(*batch)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    state = list(getattr(opt, "state", []))
    return losses, [t.data.copy() for t in ts], [s.copy() for s in state], \
        (step if compiled else None)


def _compare(kind, dt, opt_name, sizes, **kw):
    if dt == np.float32:    # float32: a smaller step, so rounding differences stay small
        kw.setdefault("lr", 0.05)
    rng = np.random.default_rng(11)
    batches = [_batch(kind, B, dt, rng) for B in sizes]
    le, pe, se, _ = _run(kind, dt, opt_name, batches, False, **kw)
    lc, pc, sc, step = _run(kind, dt, opt_name, batches, True, **kw)
    tol = dict(rtol=1e-9, atol=1e-12) if dt == np.float64 else dict(rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(lc, le, **tol)
    for k, (a, b) in enumerate(zip(pc, pe)):
        np.testing.assert_allclose(a, b, err_msg=f"parameter {k}", **tol)
    for k, (a, b) in enumerate(zip(sc, se)):
        np.testing.assert_allclose(a, b, err_msg=f"state {k}", **tol)
    return step, pc, pe


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adagrad"])
@pytest.mark.parametrize("kind", ["window", "tables3", "deep2", "deep3", "average", "margin",
                                  "logistic", "dense_input", "written"])
def test_compiled_step_equals_the_eager_step(kind, opt_name, dt, nthreads):
    # B = 37 twice (the plan replays), 1, 7 (new plans), then 37 again and 53 (a batch
    # larger than any seen: the workspace grows)
    step, pc, pe = _compare(kind, dt, opt_name, [37, 37, 37, 1, 7, 37, 53, 53])
    assert step.plans == 4 and step.fallbacks() == []
    assert any(not np.array_equal(a, b) for a, b in zip(pc, _init(kind, dt,
                                                                 np.random.default_rng(0))))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("opt_name", ["sgd", "adagrad"])
def test_every_activation(act, opt_name, nthreads):
    _compare("window", np.float64, opt_name, [29, 29, 29, 5], act=act)
    _compare("deep2", np.float64, opt_name, [13, 13, 13], act=act)


@pytest.mark.parametrize("opt_name", ["sgd", "adagrad"])
def test_frozen_embeddings(opt_name):
    rng = np.random.default_rng(0)
    step, pc, pe = _compare("window", np.float64, opt_name, [17, 17, 17], frozen=True)
    np.testing.assert_array_equal(pc[0], _init("window", np.float64, rng)[0])


@pytest.mark.parametrize("opt_name", ["sgd", "adagrad"])
def test_repeated_words_sum_their_gradients(opt_name):
    """Every window of the batch is the same word: one row takes all B*w slot
    gradients (Adagrad: summed before its single step)."""
    batches = [(np.full((40, w), 3), np.arange(40) % C)] * 3
    le, pe, se, _ = _run("window", np.float64, opt_name, batches, False)
    lc, pc, sc, _ = _run("window", np.float64, opt_name, batches, True)
    np.testing.assert_allclose(lc, le, rtol=1e-10)
    for a, b in zip(pc + sc, pe + se):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_large_batch_uses_threads_and_is_bitwise_reproducible():
    """A batch large enough for threads: the same bits at 1 and 2 threads, and
    across runs."""
    rng = np.random.default_rng(5)
    kind = "tables3"
    batches = [_batch(kind, B, np.float32, rng) for B in (700, 700, 700, 301)]
    results = []
    for nt in (1, 2, 2, 1):
        with cg.threads(nt):
            results.append(_run(kind, np.float32, "adagrad", batches, True, lr=0.05))
    for other in results[1:]:
        assert other[0] == results[0][0]
        for a, b in zip(other[1] + other[2], results[0][1] + results[0][2]):
            np.testing.assert_array_equal(a, b)
    # and equal, to rounding, to the eager graph
    eager = _run(kind, np.float32, "adagrad", batches, False, lr=0.05)
    for a, b in zip(results[0][1], eager[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_threads_argument_is_checked():
    with pytest.raises(ValueError, match="number of threads"):
        _run("window", np.float64, "sgd", [], True, threads=0)


# ---------------------------------------------------------------- fallback, strict

def _model(dt=np.float64):
    rng = np.random.default_rng(0)
    ts = [cg.tensor(a, requires_grad=True) for a in _init("window", dt, rng)]
    return ts, cg.optim.SGD(ts, lr=0.1)


def test_an_op_without_plan_kernel_runs_eagerly_with_one_warning():
    rng = np.random.default_rng(1)
    batches = [_batch("window", 9, np.float64, rng) for _ in range(4)]
    results = []
    for compiled in (True, False):
        (E, W, b, U, c), opt = _model()

        def loss_fn(win, labels):
            h = cg.maximum(cg.linear(cg.embedding_windows(E, win), W, b), 0.0)
            return cg.softmax_cross_entropy(cg.linear(h, U, c), labels)
        losses = []
        if compiled:
            step = cg.compile(loss_fn, optimizer=opt)
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                for bt in batches:
                    losses.append(step(*bt))
            msgs = [str(r.message) for r in rec if issubclass(r.category, CompileWarning)]
            assert len(msgs) == 1 and "'maximum'" in msgs[0], msgs
            assert step.plans == 0 and len(step.fallbacks()) == 1
        else:
            for bt in batches:
                opt.zero_grad()
                loss = loss_fn(*bt)
                loss.backward()
                opt.step()
                losses.append(loss.item())
        results.append((losses, [t.data.copy() for t in (E, W, b, U, c)]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)


def test_matmul_without_a_transposed_parameter_falls_back():
    (E, W, b, U, c), opt = _model()
    Wt = cg.tensor(W.data.T.copy(), requires_grad=True)
    opt = cg.optim.SGD([E, Wt, b, U, c], lr=0.1)

    def loss_fn(win, labels):
        h = cg.tanh(cg.embedding_windows(E, win) @ Wt + b)
        return cg.softmax_cross_entropy(h @ U.T + c, labels)
    step = cg.compile(loss_fn, optimizer=opt)
    with pytest.warns(CompileWarning, match="matmul other than x @ W.T"):
        step(*_batch("window", 5, np.float64, np.random.default_rng(0)))


def test_strict_raises_before_any_update():
    (E, W, b, U, c), opt = _model()
    before = [t.data.copy() for t in (E, W, b, U, c)]

    def loss_fn(win, labels):
        h = cg.tanh(cg.linear(cg.embedding_windows(E, win), W, b)) * 2.0
        return cg.softmax_cross_entropy(cg.linear(h, U, c), labels)
    step = cg.compile(loss_fn, optimizer=opt, strict=True)
    with pytest.raises(CompileError, match="'mul' has no plan kernel"):
        step(*_batch("window", 5, np.float64, np.random.default_rng(0)))
    for a, t in zip(before, (E, W, b, U, c)):
        np.testing.assert_array_equal(a, t.data)


@pytest.mark.parametrize("misuse", ["arith", "index", "numpy"])
def test_numpy_on_a_traced_argument_is_refused(misuse):
    """A NumPy computation on an argument inside loss_fn cannot be replayed: the step
    runs eagerly (warning naming the argument) or, strict, raises; never a plan with
    the first call's values baked in."""
    rng = np.random.default_rng(2)
    for strict in (False, True):
        (E, W, b, U, c), opt = _model()
        keep = np.arange(C)

        def loss_fn(win, labels):
            if misuse == "arith":
                labels = labels % C
            elif misuse == "index":
                labels = keep[labels]
            else:
                labels = np.asarray(labels)
            h = cg.tanh(cg.linear(cg.embedding_windows(E, win), W, b))
            return cg.softmax_cross_entropy(cg.linear(h, U, c), labels)
        step = cg.compile(loss_fn, optimizer=opt, strict=strict)
        bt = _batch("window", 6, np.float64, rng)
        if strict:
            with pytest.raises(CompileError, match="argument 'labels'"):
                step(*bt)
        else:
            with pytest.warns(CompileWarning, match="argument 'labels'"):
                step(*bt)
            assert step.plans == 0


def test_loss_must_be_a_scalar_tensor_and_optimizer_supported():
    (E, W, b, U, c), opt = _model()
    with pytest.raises(TypeError, match="optimizer"):
        cg.compile(lambda x: x, optimizer=None)
    step = cg.compile(lambda win: cg.embedding_windows(E, win), optimizer=opt)
    with pytest.raises(TypeError, match="scalar Tensor"):
        step(np.zeros((2, w), np.int64))
    with pytest.raises(TypeError, match="must be a numpy.ndarray"):
        step([[0, 1, 2]])


# ---------------------------------------------------------------- bad input

def _compiled_window(dt=np.float64, opt_name="sgd"):
    rng = np.random.default_rng(0)
    ts = [cg.tensor(a, requires_grad=True) for a in _init("window", dt, rng)]
    opt = cg.optim.SGD(ts, lr=0.1) if opt_name == "sgd" else cg.optim.Adagrad(ts, lr=0.1)
    step = cg.compile(_loss_fn("window", ts), optimizer=opt, strict=True)
    win, lab = _batch("window", 8, dt, rng)
    step(win, lab)
    step(win, lab)     # the plan runs
    return ts, opt, step, win, lab


@pytest.mark.parametrize("opt_name", ["sgd", "adagrad"])
def test_out_of_range_ids_raise_and_nothing_is_updated(opt_name):
    ts, opt, step, win, lab = _compiled_window(opt_name=opt_name)
    before = [t.data.copy() for t in ts] + [s.copy() for s in getattr(opt, "state", [])]
    for bad_win, bad_lab, what in [
            (np.where(win == win[2, 1], V, win), lab,
             r"win\[2, 1\] = 31 is out of range \[0, 31\)"),
            (win, np.where(np.arange(8) == 5, -1, lab), r"labels\[5\] = -1 is out of range"),
            (win, np.where(np.arange(8) == 0, C, lab), r"labels\[0\] = 5 is out of range")]:
        with pytest.raises(IndexError, match=what):
            step(bad_win, bad_lab)
    after = [t.data for t in ts] + list(getattr(opt, "state", []))
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_other_dtypes_and_shapes_get_the_eager_errors():
    ts, opt, step, win, lab = _compiled_window()
    with pytest.raises(TypeError, match="windows must be integers"):
        step(win.astype(np.float64), lab)
    with pytest.raises(ValueError, match="labels"):
        step(win, lab[:5])
    # other integer dtypes and layouts are copied: same result as int64
    ts2, opt2, step2, _, _ = _compiled_window()
    step(np.asfortranarray(win.astype(np.int32)), lab.astype(np.uint8))
    step2(win, lab)
    for a, b in zip(ts, ts2):       # (the int32 call traced a plan of its own: eager)
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-15)


def test_bad_learning_rate_is_refused():
    ts, opt, step, win, lab = _compiled_window()
    for bad in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
            opt.lr = bad
    before = [t.data.copy() for t in ts]
    opt.lr = 0.0            # a schedule's end: the step changes nothing
    step(win, lab)
    step(win, lab)
    for a, b in zip(ts, before):
        np.testing.assert_array_equal(a.data, b)
    opt.lr = 0.05           # a schedule may change it: the plan reads it at every call
    ref_ts, ref_opt, ref_step, _, _ = _compiled_window()
    ref_opt.lr = 0.05
    step(win, lab)
    ref_step(win, lab)
    for a, b in zip(ts, ref_ts):
        np.testing.assert_array_equal(a.data, b.data)


def test_replaced_parameter_and_state_arrays_are_followed():
    """Loading a checkpoint replaces tensors' arrays and Adagrad's state: the plan
    uses the new ones, and refuses ones of another shape."""
    ts, opt, step, win, lab = _compiled_window(opt_name="adagrad")
    ref_ts, ref_opt, ref_step, _, _ = _compiled_window(opt_name="adagrad")
    new = [np.full_like(t.data, 0.01) for t in ts]
    new_state = [np.full_like(s, 0.5) for s in opt.state]
    for t, r, a in zip(ts, ref_ts, new):
        t.data = a.copy()
        r.data = a.copy()
    opt.state = [s.copy() for s in new_state]
    ref_opt.state = [s.copy() for s in new_state]
    step(win, lab)
    ref_opt.zero_grad()
    loss = _loss_fn("window", ref_ts)(win, lab)
    loss.backward()
    ref_opt.step()
    for a, b in zip(ts, ref_ts):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12)
    ts[1].data = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"changed from \(20, 12\) float64 to \(3, 3\)"):
        step(win, lab)


# ---------------------------------------------------------------- memory

def test_no_allocation_after_the_first_steps():
    """The plan's buffers live in one workspace allocated once; a step allocates no
    array memory (numpy's allocations are traced by tracemalloc)."""
    ts, opt, step, win, lab = _compiled_window()
    rng = np.random.default_rng(0)
    big = [_batch("window", 512, np.float64, rng) for _ in range(3)]
    step(*big[0])
    step(*big[1])
    n_alloc = step.workspace_allocations
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        for k in range(6):
            step(*big[k % 3])
        step(win, lab)      # a smaller batch: its plan fits the workspace
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert step.workspace_allocations == n_alloc
    # one (512, 3) int64 copy alone would be 12 KB
    assert peak - base < 4096, peak - base


def test_threads_calling_one_step_run_one_after_the_other():
    """Calls from several Python threads share the parameters and the workspace: they
    run one at a time (here on one batch, so that their order does not matter)."""
    ts, opt, step, win, lab = _compiled_window()
    ref_ts, ref_opt, ref_step, _, _ = _compiled_window()
    threads = [threading.Thread(target=lambda: [step(win, lab) for _ in range(10)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(40):
        ref_step(win, lab)
    for a, b in zip(ts, ref_ts):
        np.testing.assert_array_equal(a.data, b.data)


def _odd_layout(a, how):
    if how == "big":
        return a.astype(a.dtype.newbyteorder(">"))
    if how == "strided":
        big = np.zeros((2 * a.size,), a.dtype)
        big[::2] = a.reshape(-1)
        return big[::2].reshape(a.shape) if a.ndim == 1 else np.asfortranarray(a)
    buf = np.zeros(a.nbytes + a.itemsize + 1, np.uint8)      # misaligned
    start = 1 if buf.ctypes.data % a.itemsize == 0 else 0
    out = np.frombuffer(buf, a.dtype, count=a.size, offset=start).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("how", ["big", "strided", "misaligned"])
@pytest.mark.parametrize("kind", ["logistic", "dense_input"])
def test_arguments_in_any_layout_are_read_as_plain_ones(kind, how):
    """Float and index arguments that are byte-swapped, strided or misaligned are
    copied into plain arrays before the plan's C loops read them."""
    rng = np.random.default_rng(5)
    batches = [_batch(kind, B, np.float64, rng) for B in (4, 4, 4, 7, 7)]
    odd = [tuple(_odd_layout(a, how) for a in b) for b in batches]
    want = _run(kind, np.float64, "adagrad", batches, compiled=True)
    got = _run(kind, np.float64, "adagrad", odd, compiled=True)
    assert got[0] == want[0]
    for g, w_ in zip(got[1], want[1]):
        np.testing.assert_array_equal(g, w_)
