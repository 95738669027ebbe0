/* cygrad's thread pool: see bp_pool.h for the contract.
 *
 * One loop is in flight at a time (a flag taken with an atomic exchange; a
 * caller that finds it taken runs its loop alone). The loop's description lives
 * in fixed atomic fields; `claim` packs the loop's generation (high 32 bits) and
 * the next chunk index (low 32 bits), so a helper that wakes late, holding an old
 * generation, fails its compare-and-swap and never runs a chunk of a loop that
 * is not the one it read. A loop's fields are only rewritten after all of its
 * chunks are done, and a chunk is only claimed while the loop is unfinished, so
 * a successful claim always pairs with the fields the helper read before it.
 *
 * Waiting: helpers spin on the generation word for a short while after a loop
 * (the next kernel call of a training step is microseconds away), yielding the
 * core every few microseconds so that a spinning helper never holds back a
 * thread of ours that shares its core, then sleep on a futex (a condition
 * variable off Linux). The caller spins for a short while on the done count,
 * then sleeps too: an idle core lets the OS run a descheduled helper there.
 */
#define _GNU_SOURCE
#include "bp_pool.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>

#if defined(BP_NO_THREADS) || defined(__STDC_NO_ATOMICS__) || defined(_WIN32)
#define BP_THREADED 0
#else
#define BP_THREADED 1
#endif

static long long st_inline;       /* counted without helpers: plain, under `busy` or racy */

#if !BP_THREADED

void bp_pool_for(bp_task_fn fn, void *ctx, ptrdiff_t n, ptrdiff_t grain, int nt)
{
    (void)nt;
    if (grain < 1) grain = 1;
    for (ptrdiff_t lo = 0; lo < n; lo += grain) fn(ctx, lo, lo + grain < n ? lo + grain : n, 0);
    st_inline++;
}
void bp_pool_get_stats(struct bp_pool_stats *s)
{
    *s = (struct bp_pool_stats){0};
    s->inline_loops = st_inline;
}
void bp_pool_reset_stats(void) { st_inline = 0; }
void bp_pool_set_adaptive(int on) { (void)on; }
int bp_pool_threaded(void) { return 0; }
int bp_pool_threads(int nt) { (void)nt; return 1; }
int bp_pool_openmp(void) { return 0; }
int bp_pool_gang(bp_task_fn fn, void *ctx, int n) { (void)fn; (void)ctx; (void)n; return -1; }

#elif defined(BP_OPENMP)

/* The OpenMP build (CYGRAD_OPENMP=1): the same loops over the same chunks, claimed
 * one at a time by an OpenMP team (schedule(dynamic, 1)), for programs that already
 * run an OpenMP runtime and want one set of threads. No adaptive fallback: a team
 * waits for every member at the end of a region, so on a busy machine a
 * descheduled member holds the loop back (benches/report_contention.py measures
 * it); and GNU libgomp is not fork-safe: a child of a process that ran a region
 * may hang in its own first one. The pool above is the default build. */
#include <omp.h>

static long long st_loops, st_chunks;

void bp_pool_for(bp_task_fn fn, void *ctx, ptrdiff_t n, ptrdiff_t grain, int nt)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    const ptrdiff_t chunks = (n + grain - 1) / grain;
    if (nt > BP_MAX_THREADS) nt = BP_MAX_THREADS;
    if (nt > chunks) nt = (int)chunks;
    if (nt <= 1 || omp_in_parallel()) {
        for (ptrdiff_t lo = 0; lo < n; lo += grain)
            fn(ctx, lo, lo + grain < n ? lo + grain : n, 0);
        __atomic_fetch_add(&st_inline, 1, __ATOMIC_RELAXED);
        return;
    }
    __atomic_fetch_add(&st_loops, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&st_chunks, chunks, __ATOMIC_RELAXED);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (ptrdiff_t c = 0; c < chunks; c++) {
        const ptrdiff_t lo = c * grain;
        fn(ctx, lo, lo + grain < n ? lo + grain : n, omp_get_thread_num());
    }
}

void bp_pool_get_stats(struct bp_pool_stats *s)
{
    *s = (struct bp_pool_stats){0};
    s->loops = __atomic_load_n(&st_loops, __ATOMIC_RELAXED);
    s->inline_loops = __atomic_load_n(&st_inline, __ATOMIC_RELAXED);
    s->caller_chunks = __atomic_load_n(&st_chunks, __ATOMIC_RELAXED);
    s->workers = omp_get_max_threads();
}

void bp_pool_reset_stats(void)
{
    __atomic_store_n(&st_loops, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&st_chunks, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&st_inline, 0, __ATOMIC_RELAXED);
}

void bp_pool_set_adaptive(int on) { (void)on; }
int bp_pool_threaded(void) { return 1; }
int bp_pool_threads(int nt) { return nt < 1 ? 1 : nt > BP_MAX_THREADS ? BP_MAX_THREADS : nt; }
int bp_pool_openmp(void) { return 1; }
/* An OpenMP team may be smaller than asked for (dynamic adjustment, nesting): a
   gang's jobs could then wait for a member that never comes. Not offered here. */
int bp_pool_gang(bp_task_fn fn, void *ctx, int n) { (void)fn; (void)ctx; (void)n; return -1; }

#else

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* tuning (nanoseconds) */
#define HELPER_SPIN_NS 200000   /* a helper spins this long after a loop, then sleeps */
#define YIELD_AFTER_NS 5000     /* ... and yields its core between checks after this */
#define CALLER_SPIN_NS 30000    /* the caller spins this long for the last chunks */
#define STALL_NS 250000         /* a wait this much longer than the caller's own work */
#define WINDOW_NS 16000000      /* the adaptive decision is taken over >= 16 ms of loops */
#define WINDOW_LOOPS 32         /* ... and at least this many loops */
#define BACKOFF_MIN_NS 50000000LL   /* first fallback lasts 50 ms */
#define BACKOFF_MAX_NS 1000000000LL /* ... doubling to at most 1 s */

static inline long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---------------------------------------------------------- sleep and wake */

#if defined(__linux__)
static void word_wait(atomic_uint *w, unsigned seen)
{
    syscall(SYS_futex, (unsigned *)w, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}
static void word_wake(atomic_uint *w)
{
    syscall(SYS_futex, (unsigned *)w, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
static pthread_mutex_t ww_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ww_cond = PTHREAD_COND_INITIALIZER;
static void word_wait(atomic_uint *w, unsigned seen)
{
    pthread_mutex_lock(&ww_lock);
    if (atomic_load(w) == seen) pthread_cond_wait(&ww_cond, &ww_lock);
    pthread_mutex_unlock(&ww_lock);
}
static void word_wake(atomic_uint *w)
{
    (void)w;
    pthread_mutex_lock(&ww_lock);
    pthread_cond_broadcast(&ww_cond);
    pthread_mutex_unlock(&ww_lock);
}
#endif

/* ------------------------------------------------------------------ state */

static struct {
    atomic_int busy;                    /* a loop is in flight */
    atomic_uint gen;                    /* loop generation: helpers wait on it */
    atomic_uint_least64_t claim;        /* gen << 32 | next chunk */
    atomic_uint done;                   /* chunks finished in this loop */
    _Atomic(bp_task_fn) fn;
    _Atomic(void *) ctx;
    atomic_llong n, grain;
    atomic_uint nchunks;
    atomic_int nt;                      /* participants of this loop */
    atomic_int sleepers;                /* helpers asleep on gen */
    atomic_int caller_asleep;           /* the caller sleeps on done */
    int workers;                        /* helpers started (ids 1..workers) */
    /* adaptive state: serial and probe_at are also read by bp_pool_threads, the
       rest is touched by the caller holding `busy` only */
    atomic_int adaptive;
    atomic_int serial;                  /* in a backoff period ... */
    atomic_llong probe_at;              /* ... until then */
    long long backoff, win_ns, win_stall, win_saved, win_helped, win_fair;
    int win_loops;
    /* statistics */
    atomic_llong helper_chunks;
    long long loops, caller_chunks, backoffs, backoffs_share, wait_ns;
} P = { .adaptive = 1, .backoff = BACKOFF_MIN_NS };

/* Run chunks of loop generation g until none is left; returns how many this
 * thread ran. */
static unsigned run_chunks(unsigned g, int worker)
{
    const bp_task_fn fn = atomic_load_explicit(&P.fn, memory_order_relaxed);
    void *const ctx = atomic_load_explicit(&P.ctx, memory_order_relaxed);
    const long long n = atomic_load_explicit(&P.n, memory_order_relaxed);
    const long long grain = atomic_load_explicit(&P.grain, memory_order_relaxed);
    const unsigned nchunks = atomic_load_explicit(&P.nchunks, memory_order_relaxed);
    unsigned ran = 0;
    uint_least64_t v = atomic_load_explicit(&P.claim, memory_order_acquire);
    for (;;) {
        if ((unsigned)(v >> 32) != g || (unsigned)v >= nchunks) break;
        if (!atomic_compare_exchange_weak_explicit(&P.claim, &v, v + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;       /* v now holds the current value */
        const long long lo = (long long)(unsigned)v * grain;
        fn(ctx, (ptrdiff_t)lo, (ptrdiff_t)(lo + grain < n ? lo + grain : n), worker);
        ran++;
        if (atomic_fetch_add(&P.done, 1) + 1 == nchunks && atomic_load(&P.caller_asleep))
            word_wake(&P.done);
        v = atomic_load_explicit(&P.claim, memory_order_acquire);
    }
    return ran;
}

static unsigned helper_start_gen[BP_MAX_THREADS];
static _Thread_local int tl_in_pool;     /* this thread runs a loop's chunks or a gang's job */

static void *helper(void *arg)
{
    const int id = (int)(intptr_t)arg;
    /* the generation before this helper was started: a loop published since (a
       gang waits for every helper) is one it must join */
    unsigned seen = helper_start_gen[id];
    tl_in_pool = 1;
    for (;;) {
        unsigned g = atomic_load_explicit(&P.gen, memory_order_acquire);
        if (g == seen) {
            const long long t0 = now_ns();
            for (int i = 1;; i++) {
                cpu_relax();
                g = atomic_load_explicit(&P.gen, memory_order_acquire);
                if (g != seen) break;
                if ((i & 63) == 0) {
                    const long long dt = now_ns() - t0;
                    if (dt > HELPER_SPIN_NS) break;
                    if (dt > YIELD_AFTER_NS) sched_yield();
                }
            }
            while (g == seen) {
                atomic_fetch_add(&P.sleepers, 1);
                g = atomic_load(&P.gen);
                if (g == seen) word_wait(&P.gen, seen);
                atomic_fetch_sub(&P.sleepers, 1);
                g = atomic_load(&P.gen);
            }
        }
        seen = g;
        if (id < atomic_load_explicit(&P.nt, memory_order_relaxed)) {
            const unsigned ran = run_chunks(g, id);
            if (ran) atomic_fetch_add_explicit(&P.helper_chunks, ran, memory_order_relaxed);
        }
    }
    return NULL;
}

/* Start helpers up to ids 1..want-1; returns how many exist. Caller holds busy. */
static int grow(int want)
{
    while (P.workers + 1 < want) {
        helper_start_gen[P.workers + 1] = atomic_load(&P.gen);
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &at, helper, (void *)(intptr_t)(P.workers + 1));
        pthread_attr_destroy(&at);
        if (rc != 0) break;
        P.workers++;
    }
    return P.workers;
}

static pthread_mutex_t gang_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_llong st_gangs, st_gang_spawned;

static void after_fork_child(void)
{
    /* the helpers did not survive the fork: start from an empty pool */
    atomic_store(&P.busy, 0);
    atomic_store(&P.sleepers, 0);
    atomic_store(&P.caller_asleep, 0);
    P.workers = 0;
    pthread_mutex_unlock(&gang_lock);         /* taken before the fork */
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
/* No gang is in flight across a fork: its helpers would be lost with the lock held. */
static void before_fork(void) { pthread_mutex_lock(&gang_lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&gang_lock); }
static void init_once(void) { pthread_atfork(before_fork, after_fork_parent, after_fork_child); }

static void run_inline(bp_task_fn fn, void *ctx, ptrdiff_t n, ptrdiff_t grain)
{
    for (ptrdiff_t lo = 0; lo < n; lo += grain) fn(ctx, lo, lo + grain < n ? lo + grain : n, 0);
}

/* The adaptive decision, after a loop with helpers (caller holds busy). A loop
 * stalled when the caller, out of chunks, waited for the helpers longer than it
 * had worked itself plus STALL_NS: an OS time slice lost by a helper holding a
 * chunk, not a helper finishing a larger share. In a loop that did not stall,
 * the helpers saved the caller about its own time per chunk times the chunks
 * they ran (at most nt - 1 times the loop's time: a caller descheduled in its
 * own chunk must not make that estimate unbounded). The helpers are kept when,
 * over a window, they ran at least half of their fair share of the chunks
 * ((nt - 1) / nt of them) and the stalls cost no more than the other loops
 * saved: else the loops run on their callers alone for a backoff period. On a
 * busy machine helpers fail the first test (not scheduled in time to take a
 * chunk) or the second (descheduled holding one, often). */
static void account(long long t0, long long t1, long long t2, unsigned own, unsigned nchunks,
                    int nt)
{
    const long long mine = t1 - t0, wait = t2 - t1, took = t2 - t0;
    P.win_helped += nchunks - own;
    P.win_fair += (long long)nchunks * (nt - 1) / nt;
    if (wait > mine + STALL_NS) {
        P.win_stall += wait;
    } else {
        const long long cap = (long long)(nt - 1) * took;
        const long long saved = own ? mine * (long long)(nchunks - own) / own : cap;
        P.win_saved += saved < cap ? saved : cap;
    }
    P.win_ns += took;
    P.win_loops++;
    if (P.win_ns < WINDOW_NS || P.win_loops < WINDOW_LOOPS) return;
    const int share_ok = 2 * P.win_helped >= P.win_fair;
    if (!(share_ok && P.win_stall <= P.win_saved)
        && atomic_load_explicit(&P.adaptive, memory_order_relaxed)) {
        atomic_store_explicit(&P.probe_at, t2 + P.backoff, memory_order_relaxed);
        atomic_store_explicit(&P.serial, 1, memory_order_relaxed);
        P.backoff = P.backoff * 2 < BACKOFF_MAX_NS ? P.backoff * 2 : BACKOFF_MAX_NS;
        P.backoffs++;
        P.backoffs_share += !share_ok;
    } else {
        P.backoff = BACKOFF_MIN_NS;
    }
    P.win_ns = P.win_stall = P.win_saved = P.win_helped = P.win_fair = 0;
    P.win_loops = 0;
}

/* Publish a loop (the caller holds busy): fields, then the claim word, then the
 * generation; wakes sleeping helpers. Returns the loop's generation. */
static unsigned publish(bp_task_fn fn, void *ctx, ptrdiff_t n, ptrdiff_t grain, unsigned nchunks,
                        int nt)
{
    atomic_store_explicit(&P.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&P.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&P.n, (long long)n, memory_order_relaxed);
    atomic_store_explicit(&P.grain, (long long)grain, memory_order_relaxed);
    atomic_store_explicit(&P.nchunks, nchunks, memory_order_relaxed);
    atomic_store_explicit(&P.nt, nt, memory_order_relaxed);
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    const unsigned g = atomic_load_explicit(&P.gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&P.claim, (uint_least64_t)g << 32, memory_order_release);
    atomic_store(&P.gen, g);
    if (atomic_load(&P.sleepers) > 0) word_wake(&P.gen);
    return g;
}

/* The caller, out of chunks at time t1, waits until the loop's nchunks are done:
 * it spins a little, then sleeps on the done count. */
static void wait_done(unsigned nchunks, long long t1)
{
    unsigned d = atomic_load_explicit(&P.done, memory_order_acquire);
    if (d >= nchunks) return;
    for (int i = 1; d < nchunks; i++) {
        cpu_relax();
        d = atomic_load_explicit(&P.done, memory_order_acquire);
        if ((i & 63) == 0 && now_ns() - t1 > CALLER_SPIN_NS) break;
    }
    while (d < nchunks) {
        atomic_store(&P.caller_asleep, 1);
        d = atomic_load(&P.done);
        if (d < nchunks) word_wait(&P.done, d);
        atomic_store(&P.caller_asleep, 0);
        d = atomic_load(&P.done);
    }
}

/* ------------------------------------------------------------------ gangs
 *
 * A gang is n jobs that may wait on each other (OpenBLAS's level-3 threads each
 * pack a part of B and use the others' parts), so all n must run at once on n
 * distinct threads: never on the caller alone, never with fewer helpers than
 * jobs, whatever the adaptive fallback says. It is an ordinary loop of n
 * one-item chunks with nt = n and all n - 1 helpers started: each thread claims
 * one job at a time and only claims another after finishing one, so a job that
 * waits for others leaves them to the n - 1 other threads, which keep claiming
 * until every job is taken (jobs that do not wait on each other are still
 * taken by whoever comes first). A gang that finds the pool running another
 * Python thread's loop waits for that loop to end (it does not depend on the
 * gang). Gangs run one at a time (gang_lock): a job's index, which OpenBLAS uses
 * to pick per-thread buffers, is then unique among gangs. A gang asked for from
 * inside a pool loop's chunk or a gang's job is refused (-1): the loop holding
 * the pool could then wait for itself. */

static void gang_on_new_threads(bp_task_fn fn, void *ctx, int n);

int bp_pool_gang(bp_task_fn fn, void *ctx, int n)
{
    if (n <= 0) return 0;
    if (n > BP_MAX_THREADS || tl_in_pool) return -1;
    pthread_once(&once, init_once);
    pthread_mutex_lock(&gang_lock);
    tl_in_pool = 1;
    if (n == 1) {
        fn(ctx, 0, 1, 0);
    } else {
        for (int i = 0; atomic_exchange_explicit(&P.busy, 1, memory_order_acquire); i++) {
            if (i < 16) {
                sched_yield();
            } else {
                const struct timespec ts = {0, 20000};
                nanosleep(&ts, NULL);
            }
        }
        if (grow(n) + 1 < n) {
            atomic_store_explicit(&P.busy, 0, memory_order_release);
            gang_on_new_threads(fn, ctx, n);
        } else {
            const unsigned g = publish(fn, ctx, n, 1, (unsigned)n, n);
            run_chunks(g, 0);
            wait_done((unsigned)n, now_ns());
            atomic_store_explicit(&P.busy, 0, memory_order_release);
        }
    }
    atomic_fetch_add(&st_gangs, 1);
    tl_in_pool = 0;
    pthread_mutex_unlock(&gang_lock);
    return 0;
}

/* The pool could not start n - 1 helpers (a thread limit): one more try with
 * threads of the gang's own, else the jobs, which wait on each other, cannot run. */
struct spawned_job { bp_task_fn fn; void *ctx; ptrdiff_t i; };

static void *spawned_main(void *arg)
{
    struct spawned_job *j = (struct spawned_job *)arg;
    tl_in_pool = 1;
    j->fn(j->ctx, j->i, j->i + 1, (int)j->i);
    return NULL;
}

static void gang_on_new_threads(bp_task_fn fn, void *ctx, int n)
{
    pthread_t th[BP_MAX_THREADS];
    struct spawned_job jobs[BP_MAX_THREADS];
    for (int i = 1; i < n; i++) {
        jobs[i] = (struct spawned_job){fn, ctx, i};
        const int rc = pthread_create(&th[i], NULL, spawned_main, &jobs[i]);
        if (rc != 0) {
            fprintf(stderr, "cygrad: cannot start thread %d of the %d a BLAS call's jobs need "
                    "at once (%s): limit OpenBLAS's threads (OPENBLAS_NUM_THREADS) or call "
                    "cygrad.blas_on_pool(False)\n", i, n, strerror(rc));
            abort();
        }
    }
    fn(ctx, 0, 1, 0);
    for (int i = 1; i < n; i++) pthread_join(th[i], NULL);
    atomic_fetch_add(&st_gang_spawned, 1);
}

void bp_pool_for(bp_task_fn fn, void *ctx, ptrdiff_t n, ptrdiff_t grain, int nt)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    ptrdiff_t nchunks = (n - 1) / grain + 1;
    if (nchunks > (ptrdiff_t)UINT32_MAX / 2) {      /* keep the chunk index in 31 bits */
        grain = (n - 1) / ((ptrdiff_t)UINT32_MAX / 2) + 1;
        nchunks = (n - 1) / grain + 1;
    }
    if (nt > BP_MAX_THREADS) nt = BP_MAX_THREADS;
    if (nt > nchunks) nt = (int)nchunks;
    if (nt <= 1 || atomic_exchange_explicit(&P.busy, 1, memory_order_acquire)) {
        run_inline(fn, ctx, n, grain);
        __atomic_fetch_add(&st_inline, 1, __ATOMIC_RELAXED);
        return;
    }
    if (bp_pool_threads(nt) == 1) {
        atomic_store_explicit(&P.busy, 0, memory_order_release);
        run_inline(fn, ctx, n, grain);
        __atomic_fetch_add(&st_inline, 1, __ATOMIC_RELAXED);
        return;
    }
    pthread_once(&once, init_once);
    if (grow(nt) + 1 < nt) nt = P.workers + 1;
    if (nt <= 1) {
        atomic_store_explicit(&P.busy, 0, memory_order_release);
        run_inline(fn, ctx, n, grain);
        __atomic_fetch_add(&st_inline, 1, __ATOMIC_RELAXED);
        return;
    }
    const unsigned g = publish(fn, ctx, n, grain, (unsigned)nchunks, nt);
    const long long t0 = now_ns();
    tl_in_pool = 1;
    const unsigned own = run_chunks(g, 0);
    tl_in_pool = 0;
    const long long t1 = now_ns();
    wait_done((unsigned)nchunks, t1);
    const long long t2 = now_ns();
    P.loops++;
    P.caller_chunks += own;
    P.wait_ns += t2 - t1;
    account(t0, t1, t2, own, (unsigned)nchunks, nt);
    atomic_store_explicit(&P.busy, 0, memory_order_release);
}

int bp_pool_threads(int nt)
{
    if (nt <= 1) return 1;
    if (atomic_load_explicit(&P.serial, memory_order_relaxed)) {
        if (atomic_load_explicit(&P.adaptive, memory_order_relaxed)
            && now_ns() < atomic_load_explicit(&P.probe_at, memory_order_relaxed))
            return 1;
        atomic_store_explicit(&P.serial, 0, memory_order_relaxed);  /* probe: a window */
    }
    return nt > BP_MAX_THREADS ? BP_MAX_THREADS : nt;
}

void bp_pool_get_stats(struct bp_pool_stats *s)
{
    s->loops = P.loops;
    s->inline_loops = __atomic_load_n(&st_inline, __ATOMIC_RELAXED);
    s->helper_chunks = atomic_load(&P.helper_chunks);
    s->caller_chunks = P.caller_chunks;
    s->backoffs = P.backoffs;
    s->backoffs_share = P.backoffs_share;
    s->wait_ns = P.wait_ns;
    s->workers = P.workers;
    s->adaptive = atomic_load(&P.adaptive);
    s->serial_now = atomic_load(&P.serial);
    s->gangs = atomic_load(&st_gangs);
    s->gangs_spawned = atomic_load(&st_gang_spawned);
}

void bp_pool_reset_stats(void)
{
    P.loops = P.caller_chunks = P.backoffs = P.backoffs_share = P.wait_ns = 0;
    atomic_store(&P.helper_chunks, 0);
    atomic_store(&st_gangs, 0);
    atomic_store(&st_gang_spawned, 0);
    __atomic_store_n(&st_inline, 0, __ATOMIC_RELAXED);
}

void bp_pool_set_adaptive(int on)
{
    atomic_store(&P.adaptive, on != 0);
}

int bp_pool_threaded(void) { return 1; }
int bp_pool_openmp(void) { return 0; }

#endif

/* OpenBLAS's threads callback (openblas_set_threads_callback_function): its
 * parallel jobs, run as a gang of cygrad's pool. Only registered by builds with
 * the pool (cygrad.blas_on_pool). */
static int blas_top;             /* OpenBLAS's MAX_THREADS: job indices end there */

void bp_pool_set_blas_top(int top) { __atomic_store_n(&blas_top, top, __ATOMIC_RELAXED); }

struct blas_jobs { bp_blas_dojob dojob; char *data; size_t elsize; int arg, base; };

static void blas_job(void *ctx, ptrdiff_t lo, ptrdiff_t hi, int worker)
{
    (void)worker;
    const struct blas_jobs *b = (const struct blas_jobs *)ctx;
    for (ptrdiff_t i = lo; i < hi; i++)
        b->dojob(b->base + (int)i, b->data + (size_t)i * b->elsize, b->arg);
}

/* Job i gets OpenBLAS thread index top - numjobs + i: the top of OpenBLAS's
 * range, away from the indices of its own server threads (0, 1, ...), which
 * still run the jobs it queues itself (exec_blas_async: the LU factorisation's)
 * with the same per-index buffers and status words. */
void bp_pool_blas_callback(int sync, bp_blas_dojob dojob, int numjobs, size_t elsize,
                           void *jobdata, int dojob_data)
{
    (void)sync;     /* always waited for: OpenBLAS's exec_blas only asks for that */
    const int top = __atomic_load_n(&blas_top, __ATOMIC_RELAXED);
    struct blas_jobs b = {dojob, (char *)jobdata, elsize, dojob_data,
                          top >= numjobs ? top - numjobs : 0};
    if (bp_pool_gang(blas_job, &b, numjobs) != 0) {
        fprintf(stderr, "cygrad: a BLAS call's %d jobs cannot run as a gang of cygrad's pool "
                "(no pool in this build, more than %d jobs, or a BLAS call inside a cygrad "
                "kernel or another BLAS job)\n", numjobs, BP_MAX_THREADS);
        abort();
    }
}
