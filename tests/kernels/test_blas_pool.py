"""OpenBLAS's parallel jobs on cygrad's pool (cygrad.blas_on_pool, csrc/bp_pool.c's
gangs): a gang runs all its jobs at once on distinct threads, whatever the pool is
doing; NumPy's products give the same bits on the pool as on OpenBLAS's own
threads, from several Python threads at once (beside the LU factorisation, which
still runs on OpenBLAS's own threads) and in a forked child."""

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import cygrad
from cygrad.kernels import _blas, _parallel
from helpers import run_at_once, subprocess_env

gangs = pytest.mark.skipif(not _parallel.gangs_available(),
                           reason="this build has no pool (serial or OpenMP build): no gangs")


@pytest.fixture
def on_pool():
    """OpenBLAS's jobs on cygrad's pool for the test (skipped where no OpenBLAS
    offers it), given back after."""
    if not [e for e in cygrad.blas_on_pool(True) if e["on"]]:
        cygrad.blas_on_pool(False)
        pytest.skip("no OpenBLAS with caller-managed threading (>= 0.3.27, pthreads) loaded")
    yield
    cygrad.blas_on_pool(False)


def _run(code, timeout=120, env=None):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, env={**subprocess_env(), **(env or {})})
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
        assert all(e["why"] for e in cygrad.blas_on_pool(True))
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
    """)
    assert out.strip() == "5"


@gangs
def test_a_gang_while_another_thread_holds_the_pool(forced_helpers):
    """A gang that finds the pool running another Python thread's loop waits for
    it, then runs every job at once; the loop's result is untouched."""
    out = np.zeros(64)
    t = threading.Thread(target=_parallel._spin_loop, args=(out, 30_000_000, 1, 2), daemon=True)
    t.start()
    time.sleep(0.2)
    done, workers = _parallel._gang_barrier(3, 60.0)
    t.join(timeout=120)
    assert not t.is_alive()
    assert done and len(set(workers)) == 3
    np.testing.assert_array_equal(out, _spin_reference(64, 30_000_000))


def _spin_reference(n, reps):
    ref = np.zeros(n)
    _parallel._spin_loop(ref, reps, n, 1)
    return ref


def _products(rng):
    out = []
    for m, k, n in [(512, 512, 512), (1000, 300, 700), (64, 2048, 64), (2048, 250, 300),
                    (300, 2048, 250), (7, 3000, 5)]:
        for dt in (np.float32, np.float64):
            out.append((rng.standard_normal((m, k)).astype(dt),
                        rng.standard_normal((k, n)).astype(dt)))
    for dt in (np.float32, np.float64):     # other layouts: transposed, strided
        out.append((rng.standard_normal((300, 700)).astype(dt).T,
                    rng.standard_normal((600, 300)).astype(dt)[::2]))
    return out


@gangs
@pytest.mark.parametrize("blas_threads", [2, 3, 4])
def test_numpy_products_on_the_pool_equal_openblas_threads(blas_threads, on_pool):
    threadpoolctl = pytest.importorskip("threadpoolctl")
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
def test_numpy_and_cygrad_products_from_several_python_threads(on_pool):
    """Python threads calling NumPy and cygrad at once: gangs run one at a time
    (their jobs' indices pick OpenBLAS's per-thread buffers), cygrad's loops beside
    them; every result exact."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
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

        raised, hung = run_at_once([lambda s=s: work(s) for s in range(4)], timeout=300)
        assert not hung, "a thread hung"
    assert not raised
    assert not errors


@gangs
@pytest.mark.parametrize("blas_threads", [2, 4])
def test_lu_factorisation_beside_gangs_from_another_thread(blas_threads, on_pool):
    """OpenBLAS queues the LU factorisation's jobs (solve, inv) on its own threads,
    which stay: gangs from another Python thread must not share their indices
    (buffers, status words), or the factorisation waits forever or is wrong."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(1)
    a = rng.standard_normal((700, 700))
    rhs = rng.standard_normal((700, 3))
    c = rng.standard_normal((600, 600)).astype(np.float32)
    with threadpoolctl.threadpool_limits(blas_threads, user_api="blas"):
        want_x, want_inv, want_c = np.linalg.solve(a, rhs), np.linalg.inv(a), c @ c
        bad = []

        def lu():
            for _ in range(12):
                if not np.array_equal(np.linalg.solve(a, rhs), want_x):
                    bad.append("solve")
                if not np.array_equal(np.linalg.inv(a), want_inv):
                    bad.append("inv")

        def products():
            for _ in range(150):
                if not np.array_equal(c @ c, want_c):
                    bad.append("matmul")

        raised, hung = run_at_once([lu, products], timeout=300)
        assert not hung, "a BLAS call hung"
    assert not raised
    assert not bad


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


def test_openblas_left_alone_unless_asked():
    """Opt-in: `import cygrad` leaves OpenBLAS alone; CYGRAD_BLAS_ON_POOL=1 hands
    every OpenBLAS that offers it to the pool."""
    code = """
        import cygrad
        print(len(cygrad.build_info()["blas_on_pool"]))
    """
    assert _run(code).strip() == "0"
    can = any(e["on"] for e in cygrad.blas_on_pool(True))
    cygrad.blas_on_pool(False)
    assert _run(code, env={"CYGRAD_BLAS_ON_POOL": "1"}).strip() == ("1" if can else "0")


def test_blas_on_pool_reports_each_openblas():
    entries = cygrad.blas_on_pool(True)
    try:
        for e in entries:
            assert {"path", "version", "on"} <= set(e)
            assert e["on"] or e["why"]
        on = sorted(e["path"] for e in entries if e["on"])
        assert cygrad.build_info()["blas_on_pool"] == on == _blas.blas_status()
    finally:
        off = cygrad.blas_on_pool(False)
    assert cygrad.build_info()["blas_on_pool"] == []
    assert all(not e["on"] for e in off)
