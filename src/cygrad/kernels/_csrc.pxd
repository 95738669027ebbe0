# Declarations of the C helpers in csrc/, shared by the kernel modules (each
# extension compiles and links the .c files it uses; see setup.py).
cimport numpy as cnp

cdef extern from "bp_elementwise.h" nogil:
    int BP_SIGMOID, BP_TANH, BP_RELU, BP_LEAKY_RELU, BP_HARDTANH, BP_GELU, BP_SILU
    void bp_unary_fwd_f32(int op, const float *x, float *y, Py_ssize_t n, double alpha)
    void bp_unary_fwd_f64(int op, const double *x, double *y, Py_ssize_t n, double alpha)
    void bp_unary_bwd_f32(int op, const float *g, const float *s, float *o, Py_ssize_t n,
                          double alpha)
    void bp_unary_bwd_f64(int op, const double *g, const double *s, double *o, Py_ssize_t n,
                          double alpha)
    void bp_axpy_f32(Py_ssize_t n, double alpha, const float *x, float *y)
    void bp_axpy_f64(Py_ssize_t n, double alpha, const double *x, double *y)
    void bp_add_bias_f32(const float *z, const float *b, float *out, Py_ssize_t rows,
                         Py_ssize_t cols)
    void bp_add_bias_f64(const double *z, const double *b, double *out, Py_ssize_t rows,
                         Py_ssize_t cols)
    void bp_colsum_f32(const float *x, float *out, Py_ssize_t rows, Py_ssize_t ld,
                       Py_ssize_t cols)
    void bp_colsum_f64(const double *x, double *out, Py_ssize_t rows, Py_ssize_t ld,
                       Py_ssize_t cols)
    void bp_dropout_f32(const float *x, float *y, Py_ssize_t n, cnp.uint64_t first,
                        cnp.uint64_t key, cnp.uint32_t stream, cnp.uint32_t thr,
                        double scale)
    void bp_dropout_f64(const double *x, double *y, Py_ssize_t n, cnp.uint64_t first,
                        cnp.uint64_t key, cnp.uint32_t stream, cnp.uint32_t thr,
                        double scale)
    void bp_layer_norm_f32(const float *x, Py_ssize_t ldx, const float *w, const float *b,
                           float *y, Py_ssize_t ldy, float *xhat, Py_ssize_t ldh, float *rstd,
                           Py_ssize_t rows, Py_ssize_t d, double eps)
    void bp_layer_norm_f64(const double *x, Py_ssize_t ldx, const double *w, const double *b,
                           double *y, Py_ssize_t ldy, double *xhat, Py_ssize_t ldh,
                           double *rstd, Py_ssize_t rows, Py_ssize_t d, double eps)
    void bp_layer_norm_bwd_f32(const float *g, Py_ssize_t ldg, const float *w,
                               const float *xhat, Py_ssize_t ldh, const float *rstd, float *dx,
                               Py_ssize_t ldd, float *gx, Py_ssize_t ldgx, Py_ssize_t rows,
                               Py_ssize_t d)
    void bp_layer_norm_bwd_f64(const double *g, Py_ssize_t ldg, const double *w,
                               const double *xhat, Py_ssize_t ldh, const double *rstd,
                               double *dx, Py_ssize_t ldd, double *gx, Py_ssize_t ldgx,
                               Py_ssize_t rows, Py_ssize_t d)

cdef extern from "bp_losses.h" nogil:
    double bp_softmax_xent_f32(const float *z, const cnp.int64_t *y, float *d,
                               Py_ssize_t rows, Py_ssize_t cols, double scale)
    double bp_softmax_xent_f64(const double *z, const cnp.int64_t *y, double *d,
                               Py_ssize_t rows, Py_ssize_t cols, double scale)
    double bp_sigmoid_bce_f32(const float *s, const float *t, float *d, Py_ssize_t n,
                              double scale)
    double bp_sigmoid_bce_f64(const double *s, const double *t, double *d, Py_ssize_t n,
                              double scale)
    double bp_max_margin_f32(const float *s, const float *sc, float *ds, float *dsc,
                             Py_ssize_t n, double margin, double scale)
    double bp_max_margin_f64(const double *s, const double *sc, double *ds, double *dsc,
                             Py_ssize_t n, double margin, double scale)

cdef extern from "bp_optim.h" nogil:
    void bp_group_slots(const cnp.int64_t *ids, Py_ssize_t n, cnp.int64_t *pairs)
    void bp_adagrad_f32(float *p, float *G, const float *g, Py_ssize_t n, double lr,
                        double eps)
    void bp_adagrad_f64(double *p, double *G, const double *g, Py_ssize_t n, double lr,
                        double eps)
    void bp_sparse_adagrad_f32(float *table, float *G, Py_ssize_t d, const cnp.int64_t *ids,
                               Py_ssize_t n, Py_ssize_t w, const float *g, Py_ssize_t ld,
                               cnp.int64_t *scratch, float *row, double lr,
                               double eps)
    void bp_sparse_adagrad_f64(double *table, double *G, Py_ssize_t d, const cnp.int64_t *ids,
                               Py_ssize_t n, Py_ssize_t w, const double *g, Py_ssize_t ld,
                               cnp.int64_t *scratch, double *row, double lr,
                               double eps)

    void bp_sparse_adam_f32(float *table, float *m, float *v, Py_ssize_t d,
                            const cnp.int64_t *ids, Py_ssize_t n, Py_ssize_t w, const float *g,
                            Py_ssize_t ld, cnp.int64_t *scratch, float *row,
                            double step, double beta1, double beta2, double eps, double sqrt_bc2,
                            double wd, double decay)
    void bp_sparse_adam_f64(double *table, double *m, double *v, Py_ssize_t d,
                            const cnp.int64_t *ids, Py_ssize_t n, Py_ssize_t w, const double *g,
                            Py_ssize_t ld, cnp.int64_t *scratch, double *row,
                            double step, double beta1, double beta2, double eps,
                            double sqrt_bc2, double wd, double decay)

    void bp_sgd_momentum_f32(float *p, float *buf, const float *g, Py_ssize_t n, double lr,
                             double momentum, double dampening, double wd, int nesterov,
                             int first)
    void bp_sgd_momentum_f64(double *p, double *buf, const double *g, Py_ssize_t n, double lr,
                             double momentum, double dampening, double wd, int nesterov,
                             int first)
    void bp_adam_f32(float *p, float *m, float *v, const float *g, Py_ssize_t n, double step,
                     double beta1, double beta2, double eps, double sqrt_bc2, double wd,
                     double decay)
    void bp_adam_f64(double *p, double *m, double *v, const double *g, Py_ssize_t n,
                     double step, double beta1, double beta2, double eps, double sqrt_bc2,
                     double wd, double decay)

cdef extern from "bp_pool.h" nogil:
    ctypedef void (*bp_task_fn)(void *ctx, Py_ssize_t lo, Py_ssize_t hi,
                                int worker) noexcept nogil
    ctypedef void (*bp_for_fn)(bp_task_fn fn, void *ctx, Py_ssize_t n, Py_ssize_t grain,
                               int nt) noexcept nogil

cdef extern from "bp_gemm.h" nogil:
    int bp_gemm_block_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1,
                          Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t k, const float *A,
                          int ta, Py_ssize_t lda, const float *B, int tb, Py_ssize_t ldb,
                          float *C, Py_ssize_t ldc, int accumulate)
    int bp_gemm_block_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1,
                          Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t k, const double *A,
                          int ta, Py_ssize_t lda, const double *B, int tb, Py_ssize_t ldb,
                          double *C, Py_ssize_t ldc, int accumulate)
    int bp_gemm_uses_packed_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, int ta, int tb)
    int bp_gemm_uses_packed_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, int ta, int tb)
    int bp_gemm_shared_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *A, int ta,
                           Py_ssize_t lda, const float *B, int tb, Py_ssize_t ldb, float *C,
                           Py_ssize_t ldc, int accumulate, int nt, bp_for_fn run)
    int bp_gemm_shared_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double *A, int ta,
                           Py_ssize_t lda, const double *B, int tb, Py_ssize_t ldb, double *C,
                           Py_ssize_t ldc, int accumulate, int nt, bp_for_fn run)
    const char *bp_gemm_path()
    const char *bp_gemm_paths()
    void bp_gemm_reset_path()
