"""OpenBLAS's parallel jobs on cygrad's pool (cygrad.blas_on_pool, csrc/bp_pool.c's
gangs): a gang runs all its jobs at once on distinct threads, whatever the pool is
doing; NumPy's products give the same bits on the pool as on OpenBLAS's own
threads, from several Python threads at once and in a forked child."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import cygrad
from cygrad.kernels import _blas, _parallel

gangs = pytest.mark.skipif(not _parallel.gangs_available(),
                           reason="this build has no pool (serial or OpenMP build): no gangs")


def _adopted():
    return [e for e in cygrad.blas_on_pool(True) if e["on"]]


def _run(code, timeout=120, env=None):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_builds_without_the_pool_refuse_gangs():
    if _parallel.gangs_available():
        with pytest.raises(RuntimeError, match="no gang of 300 jobs"):
            _parallel._gang_barrier(300, 1.0)      # more than BP_MAX_THREADS
    else:
        with pytest.raises(RuntimeError, match="no gang"):
            _parallel._gang_barrier(2, 1.0)
        assert not any(e["on"] for e in cygrad.blas_on_pool(True))
        assert cygrad.build_info()["blas_on_pool"] == []


@gangs
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_a_gangs_jobs_run_at_once_on_distinct_threads(n):
    """Each job waits until all n have started (a barrier, timed out instead of
    hanging): on a 2-core machine, 3 to 8 jobs are oversubscribed; the pool must
    still give each its own thread, helpers started for the gang included."""
    done, workers = _parallel._gang_barrier(n, 30.0)
    assert done, workers
    assert sorted(workers) == sorted(set(workers)) and len(workers) == n and min(workers) >= 0


@gangs
def test_gang_in_a_fresh_process_joins_helpers_started_for_it():
    """Helpers started for a gang take part in it (a helper that took the loop in
    flight at its start for an old one would leave a job to nobody)."""
    out = _run("""
        from cygrad.kernels import _parallel
        for n in (2, 3, 5, 8, 4):
            done, workers = _parallel._gang_barrier(n, 20.0)
            assert done and len(set(workers)) == n, (n, workers)
        print(_parallel.stats()["gangs"])
    """, env={"CYGRAD_BLAS_ON_POOL": "0"})
    assert out.strip() == "5"


@gangs
def test_a_gang_while_another_thread_holds_the_pool(forced_helpers):
    """A gang that finds the pool running another Python thread's loop runs on
    threads started for it, and still completes (every job at once)."""
    out = np.zeros(64)
    before = _parallel.stats()["gangs_spawned"]
    t = threading.Thread(target=_parallel._spin_loop, args=(out, 30_000_000, 1, 2))
    t.start()
    time.sleep(0.2)
    done, workers = _parallel._gang_barrier(3, 30.0)
    t.join()
    assert done and len(set(workers)) == 3
    assert _parallel.stats()["gangs_spawned"] > before
    np.testing.assert_array_equal(out, _spin_reference(64, 30_000_000))


def _spin_reference(n, reps):
    ref = np.zeros(n)
    _parallel._spin_loop(ref, reps, n, 1)
    return ref


@pytest.fixture
def forced_helpers():
    _parallel.set_adaptive(False)
    yield
    _parallel.set_adaptive(True)


def _products(rng):
    out = []
    for m, k, n in [(512, 512, 512), (1000, 300, 700), (64, 2048, 64), (2048, 250, 300),
                    (300, 2048, 250), (7, 3000, 5)]:
        for dt in (np.float32, np.float64):
            out.append((rng.standard_normal((m, k)).astype(dt),
                        rng.standard_normal((k, n)).astype(dt)))
    return out


@gangs
@pytest.mark.parametrize("blas_threads", [2, 3, 4])
def test_numpy_products_on_the_pool_equal_openblas_threads(blas_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _adopted():
        pytest.skip("no OpenBLAS with caller-managed threading (>= 0.3.27, pthreads) loaded")
    rng = np.random.default_rng(blas_threads)
    pairs = _products(rng)
    with threadpoolctl.threadpool_limits(blas_threads, user_api="blas"):
        try:
            cygrad.blas_on_pool(False)
            g0 = _parallel.stats()["gangs"]
            own = [a @ b for a, b in pairs]
            assert _parallel.stats()["gangs"] == g0         # OpenBLAS's own threads
        finally:
            cygrad.blas_on_pool(True)
        with cygrad.threads(1):     # cygrad's own setting does not limit a gang
            pool = [a @ b for a, b in pairs]
        assert _parallel.stats()["gangs"] > g0
    for (a, b), x, y in zip(pairs, own, pool):
        np.testing.assert_array_equal(x, y, err_msg=f"{a.shape} @ {b.shape} {a.dtype}")


@gangs
def test_numpy_and_cygrad_products_from_several_python_threads():
    """Python threads calling NumPy and cygrad at once: gangs run one at a time
    (their jobs' indices pick OpenBLAS's per-thread buffers), cygrad's loops beside
    them; every result exact."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _adopted():
        pytest.skip("no OpenBLAS with caller-managed threading loaded")
    rng = np.random.default_rng(0)
    pairs = _products(rng)[:6]
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        want = [a @ b for a, b in pairs]
        want_cy = [cygrad.kernels.matmul(a, b) for a, b in pairs]
        errors = []

        def work(seed):
            r = np.random.default_rng(seed)
            for _ in range(15):
                i = int(r.integers(len(pairs)))
                a, b = pairs[i]
                if not np.array_equal(a @ b, want[i]):
                    errors.append(("numpy", i))
                if not np.array_equal(cygrad.kernels.matmul(a, b), want_cy[i]):
                    errors.append(("cygrad", i))

        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors


@gangs
def test_forked_child_runs_numpy_products_on_its_pool():
    if cygrad.build_info()["openmp"]:
        pytest.skip("OpenMP build")
    out = _run("""
        import os, numpy as np, cygrad, threadpoolctl
        from cygrad.kernels import _parallel
        if not any(e["on"] for e in cygrad.blas_on_pool(True)):
            print("skip"); raise SystemExit
        a = np.random.default_rng(0).standard_normal((600, 600))
        with threadpoolctl.threadpool_limits(2, user_api="blas"):
            want = a @ a
            for _ in range(3):
                pid = os.fork()
                if pid == 0:
                    g = _parallel.stats()["gangs"]
                    ok = np.array_equal(a @ a, want) and _parallel.stats()["gangs"] > g
                    os._exit(0 if ok else 3)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0, status
        print("ok")
    """, timeout=120)
    if out.strip() == "skip":
        pytest.skip("no OpenBLAS with caller-managed threading loaded")
    assert out.strip() == "ok"


def test_environment_switch_leaves_openblas_alone():
    out = _run("""
        import cygrad
        print(cygrad.build_info()["blas_on_pool"])
    """, env={"CYGRAD_BLAS_ON_POOL": "0"})
    assert out.strip() == "[]"


def test_blas_on_pool_reports_each_openblas():
    entries = cygrad.blas_on_pool(True)
    for e in entries:
        assert {"path", "version", "on"} <= set(e)
        assert e["on"] or e["why"]
    assert cygrad.build_info()["blas_on_pool"] == sorted(e["path"] for e in entries if e["on"])
    assert _blas.blas_status() == cygrad.build_info()["blas_on_pool"]
