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
    void bp_pool_get_stats(bp_pool_stats *s)
    void bp_pool_reset_stats()
    void bp_pool_set_adaptive(int on)
    int bp_pool_threaded()
    int bp_pool_threads(int nt)
    int bp_pool_openmp()


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
    helpers (ns), helpers started, whether the fallback is enabled and active."""
    cdef bp_pool_stats s
    bp_pool_get_stats(&s)
    if reset:
        bp_pool_reset_stats()
    return {"loops": s.loops, "inline_loops": s.inline_loops,
            "helper_chunks": s.helper_chunks, "caller_chunks": s.caller_chunks,
            "backoffs": s.backoffs, "backoffs_share": s.backoffs_share, "wait_ns": s.wait_ns, "workers": s.workers,
            "adaptive": bool(s.adaptive), "serial_now": bool(s.serial_now)}


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
