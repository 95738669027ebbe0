# The GEMM entry points other compiled modules call (cygrad._plan, cygrad.ner._scores): through
# cygrad.kernels._gemm, so that one copy of the GEMM (its CPU dispatch and its per-thread
# packing buffers) serves the whole package.
cdef int gemm_block_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1,
                        Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t k, const float *A, int ta,
                        Py_ssize_t lda, const float *B, int tb, Py_ssize_t ldb, float *C,
                        Py_ssize_t ldc, int accumulate) noexcept nogil
cdef int gemm_block_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1,
                        Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t k, const double *A, int ta,
                        Py_ssize_t lda, const double *B, int tb, Py_ssize_t ldb, double *C,
                        Py_ssize_t ldc, int accumulate) noexcept nogil
