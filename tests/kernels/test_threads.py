"""The thread layer (cygrad.kernels._parallel): every kernel and the training steps give
bitwise the same result for 1, 2 and 3 (oversubscribed) threads; the results
stay correct and the calls terminate while another process keeps a core busy;
a child forked after the parent used threads works; the thread setting may
change between steps of a training run; concurrent Python threads share the
pool safely. No timing is asserted here (speed lives in
benches/report_contention.py)."""

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import cygrad
import cygrad as cg
from cygrad import kernels as K
from cygrad.kernels import _parallel
from cygrad.ner import WindowTrainer
from cygrad.optim import Adagrad
from helpers import in_python_threads

THREAD_COUNTS = (1, 2, 3)


def _same_for_every_thread_count(fn):
    """fn() under each thread count; asserts the outputs are bitwise identical and
    that the parallel runs did publish loops to the helpers."""
    results = {}
    for nt in THREAD_COUNTS:
        _parallel.stats(reset=True)
        with cygrad.threads(nt):
            results[nt] = fn()
        if nt > 1 and _parallel.threaded():
            assert _parallel.stats()["loops"] > 0, "the threaded path was not taken"
    results = {nt: r if isinstance(r, tuple) else (r,) for nt, r in results.items()}
    ref = results[1]
    for nt in THREAD_COUNTS[1:]:
        for a, b in zip(ref, results[nt], strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                          err_msg=f"{nt} threads differ from 1")
    return ref


def _kernel_cases(rng, dt):
    big = rng.standard_normal(100_003).astype(dt)
    Z = rng.standard_normal((501, 300)).astype(dt)
    bias = rng.standard_normal(300).astype(dt)
    logits = rng.standard_normal((3001, 9)).astype(dt)
    labels = rng.integers(0, 9, 3001)
    table = rng.standard_normal((5000, 50)).astype(dt)
    win = rng.integers(0, 5000, (1000, 5))
    # drawn though unused, so that the draws after it (and the cases) stay as they were
    rng.standard_normal((1000, 250)).astype(dt)
    big_win = rng.integers(0, 3000, (17_000, 5))      # past the scatter's thread threshold
    big_dX = rng.standard_normal((17_000, 250)).astype(dt)
    grad = rng.standard_normal(100_003).astype(dt)
    cases = {
        "tanh": lambda: K.tanh(big),
        "gelu_backward": lambda: K.gelu_backward(big, big),
        "add_bias": lambda: K.add_bias(Z, bias),
        "bias_grad": lambda: K.bias_grad(Z),
        "softmax_cross_entropy": lambda: K.softmax_cross_entropy(logits, labels),
        "embedding_gather": lambda: K.embedding_gather(table, win),
        "embedding_scatter_add": lambda: K.embedding_scatter_add(
            np.zeros((3000, 50), dt), big_win, big_dX),
        "embedding_sgd_update": lambda: K.embedding_sgd_update(table[:3000].copy(), big_win,
                                                               big_dX, 0.1),
        "sgd_update": lambda: K.sgd_update(big.copy(), grad, 0.1),
        "adagrad_update": lambda: K.adagrad_update(big.copy(), np.abs(grad), grad, 0.1),
    }
    for name, (m, k, n, ta, tb) in {
        "matmul rows": (300, 250, 300, False, True),          # Z = X Wᵀ
        "matmul cols": (40, 300, 250, False, False),          # dX = dZ W, few rows
        "matmul dW": (300, 512, 250, True, False),            # dW = dZᵀ X
        "matmul shared B": (300, 1000, 600, False, False),    # B packed once for all
        "matmul odd": (131, 257, 97, True, True),
    }.items():
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
        cases[name] = (lambda a=a, b=b, ta=ta, tb=tb:
                       K.matmul(a, b, trans_a=ta, trans_b=tb))
    return cases


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
def test_kernels_bitwise_identical_for_any_thread_count(dt, forced_helpers, rng):
    for name, fn in _kernel_cases(rng, dt).items():
        try:
            _same_for_every_thread_count(fn)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


def test_viterbi_bitwise_identical_for_any_thread_count(forced_helpers, rng):
    C = 9
    lengths = rng.integers(1, 40, 300)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    scores = rng.standard_normal((offsets[-1], C))
    allowed = rng.random((C, C)) < 0.7
    np.fill_diagonal(allowed, True)
    start = np.ones(C, bool)
    _same_for_every_thread_count(lambda: K.constrained_viterbi(scores, offsets, allowed, start))


def _window_params(rng, dt, V=400, d=50, w=5, H=300, C=9):
    return dict(E=(rng.standard_normal((V, d)) * 0.1).astype(dt),
                W=(rng.standard_normal((H, w * d)) * 0.06).astype(dt),
                b=np.zeros(H, dt), U=(rng.standard_normal((C, H)) * 0.06).astype(dt),
                c=np.zeros(C, dt))


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("B", [40, 300])      # column mode and row mode of the forward pass
def test_fused_step_bitwise_identical_for_any_thread_count(B, dt, forced_helpers, rng):
    p = _window_params(rng, dt)
    batches = [(rng.integers(0, 60, (B, 5)), rng.integers(0, 9, B)) for _ in range(4)]

    def train():
        t = WindowTrainer(**p)
        losses = [t.step(w, y, lr=0.1) for w, y in batches]
        a = t.arrays()
        return tuple([np.array(losses)] + [a[k] for k in "EWbUc"])

    _same_for_every_thread_count(train)


def _graph_train(p, batches):
    E, W, b, U, c = (cg.tensor(p[k].copy(), requires_grad=True) for k in "EWbUc")
    opt = Adagrad([E, W, b, U, c], lr=0.05)
    losses = []
    for windows, labels in batches:
        opt.zero_grad()
        x = cg.embedding_windows(E, windows, sparse=True)
        h = cg.tanh(cg.linear(x, W, b))
        loss = cg.softmax_cross_entropy(cg.linear(h, U, c), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return tuple([np.array(losses)] + [t.data for t in (E, W, b, U, c)])


def test_graph_training_bitwise_identical_for_any_thread_count(forced_helpers, rng):
    p = _window_params(rng, np.float32)
    batches = [(rng.integers(0, 60, (256, 5)), rng.integers(0, 9, 256)) for _ in range(3)]
    _same_for_every_thread_count(lambda: _graph_train(p, batches))


def test_thread_setting_changed_between_steps(forced_helpers, rng):
    """set_num_threads between steps (1, 2, 3, ...) trains to the same bits as one
    fixed thread count."""
    p = _window_params(rng, np.float32)
    batches = [(rng.integers(0, 60, (200, 5)), rng.integers(0, 9, 200)) for _ in range(9)]
    fixed, changing = WindowTrainer(**p), WindowTrainer(**p)
    n0 = cygrad.get_num_threads()
    try:
        for i, (w, y) in enumerate(batches):
            cygrad.set_num_threads(1)
            a = fixed.step(w, y, lr=0.1)
            cygrad.set_num_threads(THREAD_COUNTS[i % 3])
            assert changing.step(w, y, lr=0.1) == a
    finally:
        cygrad.set_num_threads(n0)
    for k in "EWbUc":
        np.testing.assert_array_equal(fixed.arrays()[k], changing.arrays()[k])


def test_pool_chunks_any_grain_and_thread_count(forced_helpers):
    for n in (0, 1, 7, 1000, 4099):
        want = np.empty(n)
        _parallel._spin_loop(want, 50, n + 1, 1)
        for grain in (1, 3, 64, 5000):
            for nt in (1, 2, 3, 8):
                got = np.full(n, np.nan)
                _parallel._spin_loop(got, 50, grain, nt)
                np.testing.assert_array_equal(got, want, err_msg=f"n={n} grain={grain} nt={nt}")


def test_concurrent_python_threads_share_the_pool(forced_helpers, rng):
    """Loops started while another is in flight run on their own callers: every
    thread's results are right."""
    a = rng.standard_normal((300, 400))
    b = rng.standard_normal((400, 200))
    z = rng.standard_normal(200_000)
    want_c, want_t = a @ b, np.tanh(z)

    def work():
        with cygrad.threads(2):
            for _ in range(20):
                np.testing.assert_allclose(K.matmul(a, b), want_c, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(K.tanh(z), want_t, rtol=1e-13)

    errors = in_python_threads(work)
    assert not errors, errors[0]


def test_threads_block_is_per_python_thread():
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def other():
        inside.wait()
        seen["other"] = cygrad.get_num_threads()
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with cygrad.threads(3):
        inside.set()
        release.wait()
        seen["mine"] = cygrad.get_num_threads()
    t.join()
    assert seen["mine"] == 3
    assert seen["other"] == cygrad.get_num_threads()


def test_thread_count_is_capped():
    assert _parallel.MAX_THREADS == cygrad._config.MAX_THREADS == 256
    with pytest.raises(ValueError, match=r"int in \[1, 256\]"):
        cygrad.set_num_threads(10**6)
    with pytest.raises(ValueError, match=r"int in \[1, 256\]"):
        cygrad.set_num_threads(2**31)


def _run_child(code, timeout=120):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.skipif(not _parallel.threaded(), reason="a serial build has no helper threads")
def test_fork_after_threads():
    """A child forked after the parent ran loops on helper threads makes its own
    helpers (the parent's did not survive the fork) instead of hanging."""
    if cygrad.build_info()["openmp"]:
        pytest.skip("the CYGRAD_OPENMP=1 build: GNU libgomp is not fork-safe (a child of a "
                    "process that ran an OpenMP region hangs in its first one); the pool "
                    "build, the default, is")
    out = _run_child("""
        import os, numpy as np, cygrad
        from cygrad import kernels as K
        from cygrad.kernels import _parallel
        _parallel.set_adaptive(False)
        a = np.random.default_rng(0).standard_normal((400, 400))
        cygrad.set_num_threads(2)
        want = K.matmul(a, a)
        assert _parallel.stats()["workers"] >= 1
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                ok = np.array_equal(K.matmul(a, a), want) and _parallel.stats()["workers"] >= 1
                os._exit(0 if ok else 3)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
        print("ok")
    """, timeout=60)
    assert out.strip() == "ok"


def test_correct_and_terminating_beside_a_busy_process():
    """With another process keeping a core busy (the state of a laptop or a CI
    runner), kernels and training steps at the default thread count, with the
    pool's fallback on, give the one-thread results bit for bit and finish."""
    busy = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
        parent = os.getppid()
        while os.getppid() == parent:       # ends by itself if the tests die
            for _ in range(1000000):
                pass
        """)])
    try:
        out = _run_child("""
            import numpy as np, cygrad
            from cygrad import kernels as K
            from cygrad.ner import WindowTrainer
            rng = np.random.default_rng(1)
            a = rng.standard_normal((512, 512)).astype(np.float32)
            z = rng.standard_normal(300_000)
            p = dict(E=rng.normal(0, .1, (500, 50)).astype(np.float32),
                     W=rng.normal(0, .06, (300, 250)).astype(np.float32),
                     b=np.zeros(300, np.float32), U=rng.normal(0, .06, (9, 300)).astype(np.float32),
                     c=np.zeros(9, np.float32))
            batches = [(rng.integers(0, 500, (B, 5)), rng.integers(0, 9, B))
                       for B in (1, 32, 512) for _ in range(30)]
            def run():
                t = WindowTrainer(**p)
                losses = [t.step(w, y, lr=0.05) for w, y in batches]
                return [K.matmul(a, a), K.tanh(z), np.array(losses)] + list(t.arrays().values())
            with cygrad.threads(1):
                want = run()
            for _ in range(3):
                got = run()         # default threads, adaptive pool
                for x, y in zip(want, got):
                    assert np.array_equal(x, y)
            print("ok")
        """, timeout=300)
        assert out.strip() == "ok"
    finally:
        busy.kill()
        busy.wait()


# ---------------------------------------------------------------- threadpoolctl (issue 29)

def test_threadpoolctl_lists_and_limits_cygrads_pool():
    threadpoolctl = pytest.importorskip("threadpoolctl", minversion="3.5")
    from cygrad import _config
    before = cygrad.get_num_threads()
    (info,) = [i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "cygrad"]
    assert info["user_api"] == "cygrad" and info["num_threads"] == before
    assert info["version"] == cygrad.__version__
    assert "_cygrad_threads" in info["filepath"]
    with threadpoolctl.threadpool_limits(1):
        assert cygrad.get_num_threads() == 1 and _config.resolve() == 1
        (inside,) = [i for i in threadpoolctl.threadpool_info()
                     if i["internal_api"] == "cygrad"]
        assert inside["num_threads"] == 1
    assert cygrad.get_num_threads() == before          # restored
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert cygrad.get_num_threads() == before      # another library's limit only
    with threadpoolctl.threadpool_limits({"cygrad": 1}):
        assert cygrad.get_num_threads() == 1
    with cygrad.threads(2), threadpoolctl.threadpool_limits(1):
        assert cygrad.get_num_threads() == 2            # a threads() block keeps its own
    assert cygrad.get_num_threads() == before


def test_threadpoolctl_limits_give_the_same_bits():
    threadpoolctl = pytest.importorskip("threadpoolctl", minversion="3.5")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((250, 200))
    with threadpoolctl.threadpool_limits(1):
        one = cygrad.kernels.matmul(a, b, trans_b=True)
    np.testing.assert_array_equal(one, cygrad.kernels.matmul(a, b, trans_b=True))
