/* cygrad's thread layer: a persistent pool that runs chunked loops.
 *
 * bp_pool_for(fn, ctx, n, grain, nt) runs fn(ctx, lo, hi, worker) over the chunks
 * [0, grain), [grain, 2 grain), ... of [0, n) on at most nt threads, the caller
 * being one of them, and returns when every chunk is done. The chunks are fixed
 * by (n, grain) alone; threads claim them one at a time from a shared counter,
 * and the loop is complete when its chunks are done, not when every thread has
 * arrived: a helper that the OS has not scheduled finds nothing left to do, and
 * the caller never waits for a thread that holds no chunk. A kernel whose chunk
 * results do not depend on which thread computes them (per-chunk partial sums,
 * merged in chunk order, rather than per-thread ones) is therefore bitwise the
 * same for any thread count. `worker` (0 for the caller, < nt) only selects
 * per-thread scratch.
 *
 * The pool also measures, per loop, what the helpers saved the caller (its own
 * chunk rate times the chunks they did) against what it spent waiting for them;
 * when a window of loops shows a loss (the machine is busy and the helpers are
 * descheduled), it runs loops on the caller alone and probes again later, with
 * an exponential backoff. A loop that starts while another is in flight (another
 * Python thread, or a chunk that itself calls bp_pool_for) runs on its caller
 * alone. After fork() the child starts with no helpers and makes new ones.
 */
#ifndef BP_POOL_H
#define BP_POOL_H

#include <stddef.h>

#define BP_MAX_THREADS 256

typedef void (*bp_task_fn)(void *ctx, ptrdiff_t lo, ptrdiff_t hi, int worker);

void bp_pool_for(bp_task_fn fn, void *ctx, ptrdiff_t n, ptrdiff_t grain, int nt);

/* bp_pool_for's type: C code compiled into several extensions is handed the one
 * pool's entry point (cygrad._parallel.parallel_for) instead of linking a copy. */
typedef void (*bp_for_fn)(bp_task_fn fn, void *ctx, ptrdiff_t n, ptrdiff_t grain, int nt);

/* The threads a loop asked for nt would get now: 1 while the pool runs loops on
 * their callers alone (a backoff period), else nt (capped). A kernel that splits
 * its work into one part per thread asks first, so that it takes its one-thread
 * path, unsplit, when helpers would not come. Reaching the end of a backoff
 * period, it starts the probe. */
int bp_pool_threads(int nt);

/* Counters for tests and reports (since the process started, or the last reset). */
struct bp_pool_stats {
    long long loops;          /* loops run with helpers woken */
    long long inline_loops;   /* loops run on the caller alone (backoff, busy, 1 chunk) */
    long long helper_chunks;  /* chunks run by helpers */
    long long caller_chunks;  /* chunks run by callers in loops with helpers */
    long long backoffs;       /* times the pool fell back to the caller alone */
    long long backoffs_share; /* ... of which because helpers ran too few chunks (else: stalls) */
    long long wait_ns;        /* time callers waited for helpers' chunks */
    int workers;              /* helper threads started */
    int adaptive;             /* fallback enabled */
    int serial_now;           /* currently in a backoff period */
    long long gangs;          /* gangs run on the pool (bp_pool_gang) */
    long long gangs_spawned;  /* ... on threads of their own (the pool could not grow) */
};

/* Run fn(ctx, i, i + 1, worker) for i in [0, n), all n at once on n distinct
 * threads (the caller one of them): jobs that wait on each other, such as
 * OpenBLAS's level-3 threads. Never falls back to fewer threads; when the pool is
 * held by another Python thread's loop, waits for it. Gangs run one at a time in
 * the process. Returns 0, or -1 (nothing run) when this build has no pool
 * (serial, OpenMP), n > BP_MAX_THREADS, or the caller is itself running a pool
 * loop's chunk or a gang's job. */
int bp_pool_gang(bp_task_fn fn, void *ctx, int n);

/* OpenBLAS's caller-managed threading (openblas_set_threads_callback_function,
 * OpenBLAS >= 0.3.27): dojob(i, jobdata + i * elsize, dojob_data) for every i in
 * [0, numjobs), run as one gang; returns when all are done. */
typedef void (*bp_blas_dojob)(int thread_num, void *jobdata, int dojob_data);
void bp_pool_blas_callback(int sync, bp_blas_dojob dojob, int numjobs, size_t elsize,
                           void *jobdata, int dojob_data);
/* OpenBLAS's MAX_THREADS (the smallest of the registered libraries'): the
 * callback numbers a call's jobs top - numjobs .. top - 1. */
void bp_pool_set_blas_top(int top);

void bp_pool_get_stats(struct bp_pool_stats *s);
void bp_pool_reset_stats(void);
/* 1: fall back to one thread when helpers do not pay (default); 0: never. */
void bp_pool_set_adaptive(int on);
/* Non-zero when this build has threads (pthreads and C11 atomics). */
int bp_pool_threaded(void);
/* Non-zero in the OpenMP build (CYGRAD_OPENMP=1): loops run on OpenMP teams. */
int bp_pool_openmp(void);

#endif
