"""cygrad.ner.WindowTrainer, the window model's compiled training step, held to
three independent oracles: the NumPy twin in cygrad.kernels.reference, the graph
executor (the same model built from graph ops, with cygrad.optim.SGD), and
numeric central-difference gradients of the loss."""

import numpy as np
import pytest

import cygrad as cg
from cygrad import reference as R
from cygrad.ner import WindowTrainer
from cygrad.optim import SGD


def params(rng, V=60, d=6, w=5, H=37, C=9, dtype=np.float64):
    return {
        "E": (rng.standard_normal((V, d)) * 0.5).astype(dtype),
        "W": (rng.standard_normal((H, w * d)) / np.sqrt(w * d)).astype(dtype),
        "b": (rng.standard_normal(H) * 0.1).astype(dtype),
        "U": (rng.standard_normal((C, H)) / np.sqrt(H)).astype(dtype),
        "c": (rng.standard_normal(C) * 0.1).astype(dtype),
    }


def batch(rng, B, V=60, w=5, C=9, vocab=None):
    # a small id range forces repeated words within and across windows
    return rng.integers(0, vocab or V, (B, w)), rng.integers(0, C, B)


def assert_params_close(a, b, **tol):
    for k in "EWbUc":
        np.testing.assert_allclose(a[k], b[k], err_msg=k, **tol)


# B = 1 (one example), 3 (tails), 8, 33 (dot and packed paths), 130 and 300 (row
# mode of the forward pass at 2 threads, packed products), all with repeated words
@pytest.mark.parametrize("B", [1, 2, 3, 8, 33, 130, 300])
def test_matches_numpy_reference(B, dtype, nthreads, rng):
    p = params(rng, dtype=dtype, H=300 if B >= 130 else 37)
    fused, ref = WindowTrainer(**p), R.WindowTrainer(**p)
    for _ in range(4):
        windows, labels = batch(rng, B, vocab=12)
        lf = fused.step(windows, labels, 0.3)
        lr_ = ref.step(windows, labels, 0.3)
        assert lf == pytest.approx(lr_, rel=1e-5 if dtype == np.float32 else 1e-12)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    assert_params_close(fused.arrays(), ref.arrays(), **tol)


def test_matches_graph_executor(rng):
    """The compiled step computes the gradients the eager graph computes (issue #5's condition
    for a fused path): same parameters after several SGD steps."""
    p = params(rng, w=3, H=20, C=4)
    fused = WindowTrainer(**p)
    t = {k: cg.tensor(v, requires_grad=True) for k, v in p.items()}
    opt = SGD(t.values(), lr=0.5)
    for _ in range(5):
        windows, labels = batch(rng, 16, w=3, C=4, vocab=10)
        x = cg.embedding_windows(t["E"], windows, sparse=True)
        h = cg.tanh(cg.linear(x, t["W"], t["b"]))
        loss = cg.softmax_cross_entropy(cg.linear(h, t["U"], t["c"]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert fused.step(windows, labels, 0.5) == pytest.approx(loss.item(), rel=1e-12)
    assert_params_close(fused.arrays(), {k: v.data for k, v in t.items()},
                        rtol=1e-10, atol=1e-12)


def test_step_is_the_numeric_gradient(rng):
    """p_new = p - lr * dJ/dp, with dJ/dp from central differences of the loss
    (float64, h = 1e-6); step(..., lr=0) returns J without changing anything."""
    p = params(rng, V=8, d=3, w=3, H=5, C=3)
    windows = np.array([[1, 2, 1], [0, 1, 7], [2, 2, 2]])   # repeated words
    labels = np.array([0, 2, 1])

    def loss(q):
        return WindowTrainer(**q).step(windows, labels, 0.0)

    lr = 1e-3
    t = WindowTrainer(**p)
    j0 = t.step(windows, labels, lr)
    assert j0 == loss(p)
    new = t.arrays()
    h = 1e-6
    for k in "EWbUc":
        num = np.zeros_like(p[k])
        for idx in np.ndindex(p[k].shape):
            q = {n: v.copy() for n, v in p.items()}
            q[k][idx] += h
            up = loss(q)
            q[k][idx] -= 2 * h
            num[idx] = (up - loss(q)) / (2 * h)
        np.testing.assert_allclose((p[k] - new[k]) / lr, num, rtol=1e-6, atol=1e-8, err_msg=k)
    # rows of E outside the batch are untouched, bit for bit
    untouched = np.setdiff1d(np.arange(8), windows)
    np.testing.assert_array_equal(new["E"][untouched], p["E"][untouched])


def test_lr_zero_changes_nothing_and_inputs_are_copied(rng):
    p = params(rng)
    keep = {k: v.copy() for k, v in p.items()}
    t = WindowTrainer(**p)
    windows, labels = batch(rng, 7)
    t.step(windows, labels, 0.0)
    assert_params_close(t.arrays(), keep, rtol=0, atol=0)
    t.step(windows, labels, 0.1)
    assert_params_close(p, keep, rtol=0, atol=0)          # caller's arrays untouched
    a = t.arrays()
    a["W"][...] = 0                                       # arrays() returns copies
    assert np.abs(t.arrays()["W"]).max() > 0


@pytest.mark.parametrize("B", [5, 40, 300])
def test_reproducible_for_a_thread_count_and_close_across(B, rng):
    p = params(rng, dtype=np.float32, H=300)
    data = [batch(rng, B) for _ in range(3)]
    results = {}
    for nt, run in [(1, 0), (1, 1), (2, 0), (2, 1)]:
        t = WindowTrainer(**p, threads=nt)
        losses = [t.step(w, lab, 0.2) for w, lab in data]
        results[nt, run] = (losses, t.arrays())
    for nt in (1, 2):
        assert results[nt, 0][0] == results[nt, 1][0]
        assert_params_close(results[nt, 0][1], results[nt, 1][1], rtol=0, atol=0)
    assert_params_close(results[1, 0][1], results[2, 0][1], rtol=1e-4, atol=1e-6)


def test_threads_setting(rng):
    p = params(rng)
    assert WindowTrainer(**p).threads is None
    assert WindowTrainer(**p, threads=2).threads == 2
    for bad in (0, -2, 257, 10**6, 2**31):
        with pytest.raises(ValueError, match=r"int in \[1, 256\]"):
            WindowTrainer(**p, threads=bad)


def test_bad_input_is_rejected_with_a_clear_message(rng):
    p = params(rng)
    with pytest.raises(TypeError, match="W has dtype float32 but E has float64"):
        WindowTrainer(**{**p, "W": p["W"].astype(np.float32)})
    with pytest.raises(TypeError, match="E must be float32 or float64, got int64"):
        WindowTrainer(**{**p, "E": np.zeros((4, 6), np.int64)})
    with pytest.raises(ValueError, match=r"W must be H x \(w\*d\) with d = E.shape\[1\] = 6"):
        WindowTrainer(**{**p, "W": np.zeros((37, 31))})
    with pytest.raises(ValueError, match=r"b must have shape \(37,\)"):
        WindowTrainer(**{**p, "b": np.zeros(36)})
    with pytest.raises(ValueError, match=r"U must have shape \(C, 37\)"):
        WindowTrainer(**{**p, "U": np.zeros((9, 36))})
    with pytest.raises(ValueError, match=r"c must have shape \(9,\)"):
        WindowTrainer(**{**p, "c": np.zeros(8)})
    with pytest.raises(ValueError, match="E must be 2-D"):
        WindowTrainer(**{**p, "E": np.zeros(6)})
    with pytest.raises(ValueError, match="W holds NaN"):
        WindowTrainer(**{**p, "W": np.full((37, 30), np.nan)})

    t = WindowTrainer(**p)
    windows, labels = batch(rng, 4)
    with pytest.raises(IndexError, match=r"windows\[1, 2\] = 60 is out of range \[0, 60\)"):
        t.step(np.where(np.arange(20).reshape(4, 5) == 7, 60, windows), labels, 0.1)
    with pytest.raises(IndexError, match=r"labels\[0\] = -1"):
        t.step(windows, np.r_[-1, labels[1:]], 0.1)
    with pytest.raises(ValueError, match=r"windows must have shape \(B, 5\)"):
        t.step(windows[:, :4], labels, 0.1)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        t.step(windows, labels[:3], 0.1)
    with pytest.raises(TypeError, match="windows must have an integer dtype"):
        t.step(windows.astype(float), labels, 0.1)
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        t.step(windows, labels, float("nan"))
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        t.step(windows, labels, -0.1)
    with pytest.raises(ValueError, match="the batch is empty"):
        t.step(windows[:0], labels[:0], 0.1)
    # a rejected step leaves the parameters as they were
    assert_params_close(t.arrays(), p, rtol=0, atol=0)


def test_int32_and_strided_windows_are_accepted(rng):
    p = params(rng)
    a, b = WindowTrainer(**p), WindowTrainer(**p)
    windows, labels = batch(rng, 6)
    wide = np.zeros((6, 10), np.int32)
    wide[:, ::2] = windows
    la = a.step(wide[:, ::2], labels.astype(np.int32), 0.1)
    lb = b.step(windows, labels, 0.1)
    assert la == lb
    assert_params_close(a.arrays(), b.arrays(), rtol=0, atol=0)


@pytest.mark.parametrize("activation", sorted(cg.kernels.ACTIVATIONS))
@pytest.mark.parametrize("B", [1, 7, 300, 4100])     # 4100: two chunks of rows
def test_window_scores_matches_the_reference(activation, B, dtype, nthreads, rng):
    """Inference in one pass (gather from two tables, hidden layer, scores) against
    the reference kernels step by step."""
    from cygrad.ner._scores import window_scores
    E = rng.standard_normal((50, 6)).astype(dtype)
    S = rng.standard_normal((20, 3)).astype(dtype)
    W = (rng.standard_normal((33, 5 * 9)) / 6).astype(dtype)
    b, U, c = (rng.standard_normal(s).astype(dtype) for s in [(33,), (4, 33), (4,)])
    we, ws = rng.integers(0, 50, (B, 5)), rng.integers(0, 20, (B, 5))
    got = window_scores([E, S], [we, ws], W, b, U, c, activation=activation)
    X = np.concatenate([R.embedding_gather(E, we), R.embedding_gather(S, ws)], axis=1)
    f = R.leaky_relu if activation == "leaky_relu" else getattr(R, activation)
    want = f(X @ W.T + b) @ U.T + c
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(got, want, **tol)


def test_window_scores_do_not_depend_on_threads_or_parts(rng):
    """Rows are cut into parts that threads claim one at a time (the whole range on
    one thread, parts of 256 rows on two): the same bits either way."""
    from cygrad.ner._scores import window_scores
    E = rng.standard_normal((500, 12)).astype(np.float32)
    W = (rng.standard_normal((64, 5 * 12)) / 8).astype(np.float32)
    b, U, c = (rng.standard_normal(s).astype(np.float32) for s in [(64,), (9, 64), (9,)])
    we = rng.integers(0, 500, (4100, 5))
    with cg.threads(1):
        one = window_scores([E], [we], W, b, U, c)
    with cg.threads(2):
        two = window_scores([E], [we], W, b, U, c)
    np.testing.assert_array_equal(one, two)
    want = R.tanh(R.embedding_gather(E, we) @ W.T + b) @ U.T + c
    np.testing.assert_allclose(one, want, rtol=2e-5, atol=2e-5)


def test_window_scores_bad_input(rng):
    from cygrad.ner._scores import window_scores
    E = rng.standard_normal((10, 4))
    W, b, U, c = np.zeros((3, 12)), np.zeros(3), np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(IndexError, match=r"ids\[0\]\[1, 0\] = 10 is out of range"):
        window_scores([E], [np.array([[0, 1, 2], [10, 0, 0]])], W, b, U, c)
    with pytest.raises(ValueError, match="activation must be one of"):
        window_scores([E], [np.zeros((1, 3), int)], W, b, U, c, activation="softplus")
    with pytest.raises(TypeError, match="must be a C-contiguous float32/float64"):
        window_scores([E.astype(np.float32)], [np.zeros((1, 3), int)], W, b, U, c)
    with pytest.raises(ValueError, match="do not fit an input of size 8"):
        window_scores([E], [np.zeros((1, 2), int)], W, b, U, c)
    with pytest.raises(ValueError, match=r"U must be 2-d, got shape \(\)"):
        window_scores([E], [np.zeros((1, 3), int)], W, b, np.zeros(()), c)
    with pytest.raises(ValueError, match=r"tables\[0\] must be 2-d"):
        window_scores([E.reshape(-1)], [np.zeros((1, 3), int)], W, b, U, c)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
@pytest.mark.parametrize("B", [1, 7, 300, 4100])
def test_window_scores_typed_matches_the_reference(activation, B, dtype, nthreads, rng):
    """Scores from per-type slot projections against the reference model on the
    windows the types describe: X = the types' input vectors slot by slot."""
    from cygrad.ner._scores import window_scores_typed
    T, d, w, H, C = 40, 7, 5, 33, 4
    Xt = rng.standard_normal((T, d)).astype(dtype)
    W = (rng.standard_normal((H, w * d)) / 6).astype(dtype)
    b, U, c = (rng.standard_normal(s).astype(dtype) for s in [(H,), (C, H), (C,)])
    types = rng.integers(0, T, (B, w))
    # P[t, j*H:(j+1)*H] = W[:, j*d:(j+1)*d] @ Xt[t]
    P = np.concatenate([Xt @ W[:, j * d:(j + 1) * d].T for j in range(w)], axis=1)
    got = window_scores_typed(np.ascontiguousarray(P), types, b, U, c, activation=activation)
    X = Xt[types].reshape(B, w * d)
    f = getattr(R, activation)
    want = f(X @ W.T + b) @ U.T + c
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(got, want, **tol)


def test_window_scores_typed_do_not_depend_on_threads(rng):
    from cygrad.ner._scores import window_scores_typed
    P = rng.standard_normal((300, 5 * 64)).astype(np.float32)
    b, U, c = (rng.standard_normal(s).astype(np.float32) for s in [(64,), (9, 64), (9,)])
    types = rng.integers(0, 300, (4100, 5))
    with cg.threads(1):
        one = window_scores_typed(P, types, b, U, c)
    with cg.threads(2):
        two = window_scores_typed(P, types, b, U, c)
    np.testing.assert_array_equal(one, two)


def test_window_scores_typed_bad_input(rng):
    from cygrad.ner._scores import window_scores_typed
    P, b, U, c = np.zeros((4, 6)), np.zeros(3), np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(IndexError, match=r"types\[1, 1\] = 4 is out of range"):
        window_scores_typed(P, np.array([[0, 1], [2, 4]]), b, U, c)
    with pytest.raises(ValueError, match=r"must have w\*H = 3\*3 columns"):
        window_scores_typed(P, np.zeros((1, 3), int), b, U, c)
    with pytest.raises(ValueError, match="do not fit 3 hidden units"):
        window_scores_typed(P, np.zeros((1, 2), int), b, np.zeros((2, 4)), c)
    with pytest.raises(TypeError, match="b must be a C-contiguous float32/float64"):
        window_scores_typed(P, np.zeros((1, 2), int), b.astype(np.float32), U, c)
    with pytest.raises(ValueError, match="activation must be one of"):
        window_scores_typed(P, np.zeros((1, 2), int), b, U, c, activation="softplus")
    for bad in [dict(U=np.zeros(())), dict(b=np.zeros((3, 1))), dict(c=np.zeros((2, 1)))]:
        args = {**dict(b=b, U=U, c=c), **bad}
        with pytest.raises(ValueError, match=r"must be [12]-d, got shape"):
            window_scores_typed(P, np.zeros((1, 2), int), **args)


@pytest.mark.parametrize("path", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("B", [1, 8, 40, 300])
def test_every_gemm_path(path, B, rng):
    """The compiled step on each micro-kernel path the CPU supports (forced in turn)."""
    from cygrad.kernels import _gemm
    if path not in _gemm._gemm_path()[1]:
        pytest.skip(f"this CPU cannot run the {path} micro-kernel")
    p = params(rng, H=300, dtype=np.float64)
    try:
        _gemm._force_gemm_path(path)
        fused = WindowTrainer(**p, threads=2)
        ref = R.WindowTrainer(**p)
        for _ in range(3):
            windows, labels = batch(rng, B, vocab=12)
            assert fused.step(windows, labels, 0.3) == pytest.approx(
                ref.step(windows, labels, 0.3), rel=1e-12)
    finally:
        _gemm._force_gemm_path(None)
    assert_params_close(fused.arrays(), ref.arrays(), rtol=1e-10, atol=1e-12)


def test_concurrent_steps_on_one_trainer_are_serialised(rng):
    """step() releases the GIL; steps from several Python threads on one trainer run
    one after the other, so 2 x 20 steps on the same batch equal 40 in a row."""
    import threading
    p = params(rng, dtype=np.float64)
    windows, labels = batch(rng, 16)
    shared, alone = WindowTrainer(**p), WindowTrainer(**p)
    workers = [threading.Thread(target=lambda: [shared.step(windows, labels, 0.1)
                                                for _ in range(20)]) for _ in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for _ in range(40):
        alone.step(windows, labels, 0.1)
    assert_params_close(shared.arrays(), alone.arrays(), rtol=1e-12, atol=1e-14)
