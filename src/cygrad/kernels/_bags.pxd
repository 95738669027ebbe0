# The embedding bags' forward rows (cygrad/kernels/_bags.pyx), for the compiled plans
# (cygrad.compiler._plan) to run the kernel's own loop.
cimport numpy as cnp

cdef void bag_rows(const void *table, const cnp.int64_t *win, const cnp.int64_t *ptr,
                   const cnp.int64_t *items, void *out, Py_ssize_t ldo, Py_ssize_t lo,
                   Py_ssize_t hi, Py_ssize_t w, Py_ssize_t d, bint f32) noexcept nogil
