# cygrad's thread layer (csrc/bp_pool.c): every parallel loop of every kernel
# goes through parallel_for, so there is one pool of helper threads per process.
# Other modules cimport parallel_for (it is reached through this module, never
# linked twice); C code that needs it is handed the pointer (for_fn).

ctypedef void (*task_fn)(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil
ctypedef void (*for_fn)(task_fn fn, void *ctx, Py_ssize_t n, Py_ssize_t grain,
                        int nt) noexcept nogil

cdef void parallel_for(task_fn fn, void *ctx, Py_ssize_t n, Py_ssize_t grain,
                       int nt) noexcept nogil

cdef bint pool_threaded() noexcept nogil    # this build has the pool's threads
cdef int pool_threads(int nt) noexcept nogil   # threads a loop for nt would get now
