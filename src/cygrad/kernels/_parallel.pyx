# cython: language_level=3
"""The thread layer: a persistent pool that runs chunked loops (csrc/bp_pool.h).

parallel_for(fn, ctx, n, grain, nt) runs fn over the chunks of [0, n) of `grain`
items (the last one shorter) on at most nt threads, the caller included. The
chunks depend on (n, grain) only and are claimed one at a time, so a descheduled
helper never holds the caller back unless it holds a chunk, and a loop whose
chunks write disjoint outputs (and merge partial sums in chunk order) gives the
same bits for any thread count. When helpers cost more than they save (another
process is using the cores), loops run on the caller alone for a while, then
the pool tries its helpers again.
"""

cdef extern from "bp_pool.h" nogil:
    int BP_MAX_THREADS
    ctypedef void (*bp_task_fn)(void *ctx, Py_ssize_t lo, Py_ssize_t hi,
                                int worker) noexcept nogil
    void bp_pool_for(bp_task_fn fn, void *ctx, Py_ssize_t n, Py_ssize_t grain, int nt)
    struct bp_pool_stats:
        long long loops, inline_loops, helper_chunks, caller_chunks, backoffs, backoffs_share
        long long wait_ns
        int workers, adaptive, serial_now
        long long gangs, gangs_spawned
    void bp_pool_get_stats(bp_pool_stats *s)
    void bp_pool_reset_stats()
    void bp_pool_set_adaptive(int on)
    int bp_pool_threaded()
    int bp_pool_threads(int nt)
    int bp_pool_openmp()
    int bp_pool_gang(bp_task_fn fn, void *ctx, int n)
    void bp_pool_blas_callback(int sync, void *dojob, int numjobs, size_t elsize,
                               void *jobdata, int dojob_data)
    void bp_pool_set_blas_top(int top)


MAX_THREADS = BP_MAX_THREADS

import os as _os
if _os.environ.get("CYGRAD_ADAPTIVE", "").strip() in ("0", "off", "false", "no"):
    bp_pool_set_adaptive(0)     # every loop large enough to split wakes the helpers


cdef void parallel_for(task_fn fn, void *ctx, Py_ssize_t n, Py_ssize_t grain,
                       int nt) noexcept nogil:
    if nt <= 1:         # one thread: the whole range in one call, no pool at all
        if n > 0:
            fn(ctx, 0, n, 0)
    else:
        bp_pool_for(<bp_task_fn>fn, ctx, n, grain, nt)


cdef int pool_threads(int nt) noexcept nogil:
    return bp_pool_threads(nt)


cdef bint pool_threaded() noexcept nogil:
    return bp_pool_threaded() != 0


def threaded():
    """True when this build runs loops on helper threads (pthreads and C11 atomics)."""
    return bool(bp_pool_threaded())


def openmp():
    """True in the OpenMP build (CYGRAD_OPENMP=1): loops run on OpenMP teams."""
    return bool(bp_pool_openmp())


def stats(reset=False):
    """The pool's counters: loops run with helpers and on the caller alone, chunks
    run by helpers and callers, fallbacks to one thread, time callers waited for
    helpers (ns), helpers started, whether the fallback is enabled and active,
    gangs run (BLAS calls on the pool, cygrad.blas_on_pool) and those run on
    threads started for them because the pool was held by another loop."""
    cdef bp_pool_stats s
    bp_pool_get_stats(&s)
    if reset:
        bp_pool_reset_stats()
    return {"loops": s.loops, "inline_loops": s.inline_loops,
            "helper_chunks": s.helper_chunks, "caller_chunks": s.caller_chunks,
            "backoffs": s.backoffs, "backoffs_share": s.backoffs_share, "wait_ns": s.wait_ns, "workers": s.workers,
            "adaptive": bool(s.adaptive), "serial_now": bool(s.serial_now),
            "gangs": s.gangs, "gangs_spawned": s.gangs_spawned}


def set_adaptive(bint on):
    """Enable (default) or disable the fallback to one thread when helpers do not
    pay; off, every loop large enough to split wakes the helpers. For tests and
    comparisons."""
    bp_pool_set_adaptive(on)


cdef struct _Spin:
    double *out
    long reps


cdef void _spin_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef _Spin *s = <_Spin *>ctx
    cdef Py_ssize_t i
    cdef long r
    cdef double acc
    for i in range(lo, hi):
        acc = i
        for r in range(s.reps):
            acc = acc * 0.999999 + 1.0
        s.out[i] = acc


def _spin_loop(double[::1] out, long reps, Py_ssize_t grain, int nt):
    """A loop of pure arithmetic over ``out`` (out[i] from i and reps alone), for
    tests of the pool: the result must not depend on nt or on who ran a chunk."""
    cdef _Spin s
    s.out = &out[0] if out.shape[0] else NULL
    s.reps = reps
    with nogil:
        parallel_for(_spin_task, &s, out.shape[0], grain, nt)


def gangs_available():
    """True when this build can run a gang (all jobs at once on distinct threads):
    the pool's build, not the serial or the OpenMP one."""
    return bool(bp_pool_threaded()) and not bp_pool_openmp()


def _set_blas_top(int top):
    """OpenBLAS's MAX_THREADS: the callback numbers a call's jobs from there down."""
    bp_pool_set_blas_top(top)


def _blas_callback_address():
    """The address of bp_pool_blas_callback (csrc/bp_pool.c), the function handed to
    OpenBLAS's openblas_set_threads_callback_function."""
    return <size_t>&bp_pool_blas_callback


cdef extern from *:
    """
    #include <sched.h>
    #include <time.h>
    typedef struct { int n; int count; int done; int timed_out; double timeout_s;
                     int *worker_of; } bp_gang_test;
    static double bp_gang_now(void) {
        struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + 1e-9 * ts.tv_nsec;
    }
    /* job i arrives, then waits until all n have arrived (a barrier: the jobs of a
       gang must run at once), then waits until all n have left the barrier's
       first phase, like OpenBLAS's threads that use each other's packed blocks. */
    static void bp_gang_test_job(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) {
        bp_gang_test *t = (bp_gang_test *)ctx;
        const double t0 = bp_gang_now();
        for (Py_ssize_t i = lo; i < hi; i++) {
            t->worker_of[i] = worker;
            __atomic_fetch_add(&t->count, 1, __ATOMIC_ACQ_REL);
            while (__atomic_load_n(&t->count, __ATOMIC_ACQUIRE) < t->n) {
                sched_yield();
                if (bp_gang_now() - t0 > t->timeout_s) { __atomic_store_n(&t->timed_out, 1, __ATOMIC_RELAXED); return; }
            }
            __atomic_fetch_add(&t->done, 1, __ATOMIC_ACQ_REL);
            while (__atomic_load_n(&t->done, __ATOMIC_ACQUIRE) < t->n) {
                sched_yield();
                if (bp_gang_now() - t0 > t->timeout_s) { __atomic_store_n(&t->timed_out, 1, __ATOMIC_RELAXED); return; }
            }
        }
    }
    """
    ctypedef struct bp_gang_test:
        int n, count, done, timed_out
        double timeout_s
        int *worker_of
    void bp_gang_test_job(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil


def _gang_barrier(int n, double timeout_s=20.0):
    """For tests: a gang of n jobs that each wait until all n have started (a
    barrier, with a timeout instead of a hang). Returns (completed, workers): False
    when a job waited past the timeout (the jobs did not all run at once), and the
    pool worker that ran each job (-1: none ran it)."""
    import numpy as np
    cdef int[::1] w = np.full(max(n, 1), -1, dtype=np.intc)
    cdef bp_gang_test t
    t.n = n
    t.count = 0
    t.done = 0
    t.timed_out = 0
    t.timeout_s = timeout_s
    t.worker_of = &w[0]
    cdef int rc
    with nogil:
        rc = bp_pool_gang(<bp_task_fn>bp_gang_test_job, &t, n)
    if rc != 0:
        raise RuntimeError(f"no gang of {n} jobs in this build (serial, OpenMP, or "
                           f"n > {BP_MAX_THREADS})")
    return (not t.timed_out), list(np.asarray(w)[:n])
