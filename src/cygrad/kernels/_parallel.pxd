# cygrad's thread layer (csrc/bp_pool.c): every parallel loop of every kernel
# goes through parallel_for, so there is one pool of helper threads per process.
# Other modules cimport parallel_for (it is reached through this module, never
# linked twice); C code that needs it is handed the pointer (for_fn).

ctypedef void (*task_fn)(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil
ctypedef void (*for_fn)(task_fn fn, void *ctx, Py_ssize_t n, Py_ssize_t grain,
                        int nt) noexcept nogil

cdef void parallel_for(task_fn fn, void *ctx, Py_ssize_t n, Py_ssize_t grain,
                       int nt) noexcept nogil     # nt == 1: fn(ctx, 0, n, 0) directly

cdef extern from *:
    """
    static inline void bp_set_flag(int *p) { __atomic_store_n(p, 1, __ATOMIC_RELAXED); }
    """
    void bp_set_flag(int *p) noexcept nogil     # a failure flag any chunk may raise

cdef bint pool_threaded() noexcept nogil    # this build has the pool's threads
cdef int pool_threads(int nt) noexcept nogil   # threads a loop for nt would get now
