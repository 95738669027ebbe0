# The nogil bodies of the kernel families, for Cython modules and compiled plans to
# compose (as cython-blis publishes its cy.pxd): one fused-type wrapper per
# float32/float64 pair of C loops (csrc/), so that no call site spells out
# `if floating is float` again, and the one helper that cuts a range into parts.
# The kernels' threaded tasks carry a dtype flag and untyped pointers: for them, each
# family also has a runtime form (`*_rt`: the flag first, `at(p, i, f32)` for element i),
# the one place where a runtime flag picks the float32 or float64 loop.
# Everything here is inline: cimporting it costs no call.

cimport numpy as cnp
from cython cimport floating

from cygrad.kernels._csrc cimport (
    bp_unary_fwd_f32, bp_unary_fwd_f64, bp_unary_bwd_f32, bp_unary_bwd_f64,
    bp_axpy_f32, bp_axpy_f64, bp_add_bias_f32, bp_add_bias_f64, bp_colsum_f32, bp_colsum_f64,
    bp_adagrad_f32, bp_adagrad_f64, bp_softmax_xent_f32, bp_softmax_xent_f64,
    bp_sigmoid_bce_f32, bp_sigmoid_bce_f64, bp_max_margin_f32, bp_max_margin_f64,
    bp_dropout_f32, bp_dropout_f64, bp_layer_norm_f32, bp_layer_norm_f64,
    bp_layer_norm_bwd_f32, bp_layer_norm_bwd_f64, bp_sgd_momentum_f32, bp_sgd_momentum_f64,
    bp_adam_f32, bp_adam_f64)
from cygrad.kernels._gemm cimport gemm_block_f32, gemm_block_f64


cdef inline Py_ssize_t split_at(Py_ssize_t n, Py_ssize_t parts, Py_ssize_t t,
                                Py_ssize_t align) noexcept nogil:
    """Where part t of `parts` near-equal parts of range(n) starts (part t ends where
    t + 1 starts): t/parts of n, rounded to a multiple of align; n for t >= parts."""
    cdef Py_ssize_t e
    if t >= parts:
        return n
    e = (t * n // parts + align // 2) // align * align
    return min(e, n)


cdef inline int gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0,
                     Py_ssize_t j1, Py_ssize_t k, const floating *A, int ta, Py_ssize_t lda,
                     const floating *B, int tb, Py_ssize_t ldb, floating *C, Py_ssize_t ldc,
                     int accumulate) noexcept nogil:
    """C[i0:i1, j0:j1] (+)= (op(A) op(B))[i0:i1, j0:j1] (cygrad.kernels._gemm's block routine);
    nonzero if a packing buffer could not be allocated."""
    if floating is float:
        return gemm_block_f32(m, n, i0, i1, j0, j1, k, A, ta, lda, B, tb, ldb, C, ldc,
                              accumulate)
    else:
        return gemm_block_f64(m, n, i0, i1, j0, j1, k, A, ta, lda, B, tb, ldb, C, ldc,
                              accumulate)


cdef inline void axpy(Py_ssize_t n, double a, const floating *x, floating *y) noexcept nogil:
    if floating is float:
        bp_axpy_f32(n, a, x, y)
    else:
        bp_axpy_f64(n, a, x, y)


cdef inline void colsum(const floating *x, floating *out, Py_ssize_t rows, Py_ssize_t ld,
                        Py_ssize_t cols) noexcept nogil:
    if floating is float:
        bp_colsum_f32(x, out, rows, ld, cols)
    else:
        bp_colsum_f64(x, out, rows, ld, cols)


cdef inline void adagrad(floating *p, floating *G, const floating *g, Py_ssize_t n, double lr,
                         double eps) noexcept nogil:
    if floating is float:
        bp_adagrad_f32(p, G, g, n, lr, eps)
    else:
        bp_adagrad_f64(p, G, g, n, lr, eps)


cdef inline void add_bias(const floating *z, const floating *b, floating *out, Py_ssize_t rows,
                          Py_ssize_t cols) noexcept nogil:
    if floating is float:
        bp_add_bias_f32(z, b, out, rows, cols)
    else:
        bp_add_bias_f64(z, b, out, rows, cols)


cdef inline void dropout(const floating *x, floating *y, Py_ssize_t n, cnp.uint64_t first,
                         cnp.uint64_t key, cnp.uint32_t stream, cnp.uint32_t thr,
                         double scale) noexcept nogil:
    """y = x * mask for flat elements [first, first + n) of a dropout with this key."""
    if floating is float:
        bp_dropout_f32(x, y, n, first, key, stream, thr, scale)
    else:
        bp_dropout_f64(x, y, n, first, key, stream, thr, scale)


cdef inline void act_fwd(int op, const floating *x, floating *y, Py_ssize_t n,
                         double alpha) noexcept nogil:
    if floating is float:
        bp_unary_fwd_f32(op, x, y, n, alpha)
    else:
        bp_unary_fwd_f64(op, x, y, n, alpha)


cdef inline void act_bwd(int op, const floating *g, const floating *saved, floating *out,
                         Py_ssize_t n, double alpha) noexcept nogil:
    if floating is float:
        bp_unary_bwd_f32(op, g, saved, out, n, alpha)
    else:
        bp_unary_bwd_f64(op, g, saved, out, n, alpha)


cdef inline double softmax_xent(const floating *z, const cnp.int64_t *y, floating *d,
                                Py_ssize_t rows, Py_ssize_t cols, double scale) noexcept nogil:
    """Summed loss of the rows; d = (softmax(z) - onehot(y)) * scale (d may be z)."""
    if floating is float:
        return bp_softmax_xent_f32(z, y, d, rows, cols, scale)
    else:
        return bp_softmax_xent_f64(z, y, d, rows, cols, scale)


cdef inline double weighted_xent(const floating *z, const cnp.int64_t *y, floating *d,
                                 Py_ssize_t rows, Py_ssize_t cols, const double *w,
                                 double scale) noexcept nogil:
    """Class-weighted softmax cross-entropy of the rows: returns sum_r w[y_r] loss_r;
    d_r = (softmax(z_r) - onehot(y_r)) * w[y_r] * scale (d may be z)."""
    cdef double total = 0.0, wr
    cdef Py_ssize_t r
    for r in range(rows):
        wr = w[y[r]]
        total += wr * softmax_xent(z + r * cols, y + r, d + r * cols, 1, cols, wr * scale)
    return total


cdef inline double mse(const floating *p, const floating *t, floating *d, Py_ssize_t n,
                       double scale) noexcept nogil:
    """Summed squared error of n values, in double; d = 2 (p - t) * scale (d may be p)."""
    cdef double total = 0.0, e
    cdef Py_ssize_t i
    for i in range(n):
        e = <double>p[i] - <double>t[i]
        total += e * e
        d[i] = <floating>(2.0 * e * scale)
    return total


cdef inline double sigmoid_bce(const floating *s, const floating *t, floating *d, Py_ssize_t n,
                               double scale) noexcept nogil:
    if floating is float:
        return bp_sigmoid_bce_f32(s, t, d, n, scale)
    else:
        return bp_sigmoid_bce_f64(s, t, d, n, scale)


cdef inline double max_margin(const floating *s, const floating *sc, floating *ds,
                              floating *dsc, Py_ssize_t n, double margin,
                              double scale) noexcept nogil:
    if floating is float:
        return bp_max_margin_f32(s, sc, ds, dsc, n, margin, scale)
    else:
        return bp_max_margin_f64(s, sc, ds, dsc, n, margin, scale)


cdef inline void layer_norm(const floating *x, Py_ssize_t ldx, const floating *w,
                            const floating *b, floating *y, Py_ssize_t ldy, floating *xhat,
                            Py_ssize_t ldh, floating *rstd, Py_ssize_t rows, Py_ssize_t d,
                            double eps) noexcept nogil:
    if floating is float:
        bp_layer_norm_f32(x, ldx, w, b, y, ldy, xhat, ldh, rstd, rows, d, eps)
    else:
        bp_layer_norm_f64(x, ldx, w, b, y, ldy, xhat, ldh, rstd, rows, d, eps)


cdef inline void layer_norm_bwd(const floating *g, Py_ssize_t ldg, const floating *w,
                                const floating *xhat, Py_ssize_t ldh, const floating *rstd,
                                floating *dx, Py_ssize_t ldd, floating *gx, Py_ssize_t ldgx,
                                Py_ssize_t rows, Py_ssize_t d) noexcept nogil:
    if floating is float:
        bp_layer_norm_bwd_f32(g, ldg, w, xhat, ldh, rstd, dx, ldd, gx, ldgx, rows, d)
    else:
        bp_layer_norm_bwd_f64(g, ldg, w, xhat, ldh, rstd, dx, ldd, gx, ldgx, rows, d)


cdef inline void sgd_momentum(floating *p, floating *buf, const floating *g, Py_ssize_t n,
                              double lr, double momentum, double dampening, double wd,
                              int nesterov, int first) noexcept nogil:
    if floating is float:
        bp_sgd_momentum_f32(p, buf, g, n, lr, momentum, dampening, wd, nesterov, first)
    else:
        bp_sgd_momentum_f64(p, buf, g, n, lr, momentum, dampening, wd, nesterov, first)


cdef inline void adam(floating *p, floating *m, floating *v, const floating *g, Py_ssize_t n,
                      double step, double beta1, double beta2, double eps, double sqrt_bc2,
                      double wd, double decay) noexcept nogil:
    if floating is float:
        bp_adam_f32(p, m, v, g, n, step, beta1, beta2, eps, sqrt_bc2, wd, decay)
    else:
        bp_adam_f64(p, m, v, g, n, step, beta1, beta2, eps, sqrt_bc2, wd, decay)


# ---------------------------------------------------------------- runtime dtype forms

cdef inline void *at(const void *p, Py_ssize_t i, bint f32) noexcept nogil:
    """Element i of an untyped float32 (``f32``) or float64 array (NULL stays NULL)."""
    if p == NULL:
        return NULL
    return <void *>(<const char *>p + i * (4 if f32 else 8))


cdef inline void act_fwd_rt(bint f32, int op, const void *x, void *y, Py_ssize_t n,
                            double alpha) noexcept nogil:
    if f32:
        act_fwd(op, <const float *>x, <float *>y, n, alpha)
    else:
        act_fwd(op, <const double *>x, <double *>y, n, alpha)


cdef inline void act_bwd_rt(bint f32, int op, const void *g, const void *saved, void *out,
                            Py_ssize_t n, double alpha) noexcept nogil:
    if f32:
        act_bwd(op, <const float *>g, <const float *>saved, <float *>out, n, alpha)
    else:
        act_bwd(op, <const double *>g, <const double *>saved, <double *>out, n, alpha)


cdef inline void dropout_rt(bint f32, const void *x, void *y, Py_ssize_t n, cnp.uint64_t first,
                            cnp.uint64_t key, cnp.uint32_t stream, cnp.uint32_t thr,
                            double scale) noexcept nogil:
    if f32:
        dropout(<const float *>x, <float *>y, n, first, key, stream, thr, scale)
    else:
        dropout(<const double *>x, <double *>y, n, first, key, stream, thr, scale)


cdef inline void add_bias_rt(bint f32, const void *z, const void *b, void *out, Py_ssize_t rows,
                             Py_ssize_t cols) noexcept nogil:
    if f32:
        add_bias(<const float *>z, <const float *>b, <float *>out, rows, cols)
    else:
        add_bias(<const double *>z, <const double *>b, <double *>out, rows, cols)


cdef inline void colsum_rt(bint f32, const void *x, void *out, Py_ssize_t rows, Py_ssize_t ld,
                           Py_ssize_t cols) noexcept nogil:
    if f32:
        colsum(<const float *>x, <float *>out, rows, ld, cols)
    else:
        colsum(<const double *>x, <double *>out, rows, ld, cols)


cdef inline void axpy_rt(bint f32, Py_ssize_t n, double a, const void *x,
                         void *y) noexcept nogil:
    if f32:
        axpy(n, a, <const float *>x, <float *>y)
    else:
        axpy(n, a, <const double *>x, <double *>y)


cdef inline void adagrad_rt(bint f32, void *p, void *G, const void *g, Py_ssize_t n, double lr,
                            double eps) noexcept nogil:
    if f32:
        adagrad(<float *>p, <float *>G, <const float *>g, n, lr, eps)
    else:
        adagrad(<double *>p, <double *>G, <const double *>g, n, lr, eps)


cdef inline void sgd_momentum_rt(bint f32, void *p, void *buf, const void *g, Py_ssize_t n,
                                 double lr, double momentum, double dampening, double wd,
                                 int nesterov, int first) noexcept nogil:
    if f32:
        sgd_momentum(<float *>p, <float *>buf, <const float *>g, n, lr, momentum, dampening,
                     wd, nesterov, first)
    else:
        sgd_momentum(<double *>p, <double *>buf, <const double *>g, n, lr, momentum,
                     dampening, wd, nesterov, first)


cdef inline void adam_rt(bint f32, void *p, void *m, void *v, const void *g, Py_ssize_t n,
                         double step, double beta1, double beta2, double eps, double sqrt_bc2,
                         double wd, double decay) noexcept nogil:
    if f32:
        adam(<float *>p, <float *>m, <float *>v, <const float *>g, n, step, beta1, beta2, eps,
             sqrt_bc2, wd, decay)
    else:
        adam(<double *>p, <double *>m, <double *>v, <const double *>g, n, step, beta1, beta2,
             eps, sqrt_bc2, wd, decay)


cdef inline double sigmoid_bce_rt(bint f32, const void *s, const void *t, void *d, Py_ssize_t n,
                                  double scale) noexcept nogil:
    if f32:
        return sigmoid_bce(<const float *>s, <const float *>t, <float *>d, n, scale)
    return sigmoid_bce(<const double *>s, <const double *>t, <double *>d, n, scale)


cdef inline double max_margin_rt(bint f32, const void *s, const void *sc, void *ds, void *dsc,
                                 Py_ssize_t n, double margin, double scale) noexcept nogil:
    if f32:
        return max_margin(<const float *>s, <const float *>sc, <float *>ds, <float *>dsc, n,
                          margin, scale)
    return max_margin(<const double *>s, <const double *>sc, <double *>ds, <double *>dsc, n,
                      margin, scale)


cdef inline double mse_rt(bint f32, const void *p, const void *t, void *d, Py_ssize_t n,
                          double scale) noexcept nogil:
    if f32:
        return mse(<const float *>p, <const float *>t, <float *>d, n, scale)
    return mse(<const double *>p, <const double *>t, <double *>d, n, scale)


cdef inline double softmax_xent_rt(bint f32, const void *z, const cnp.int64_t *y, void *d,
                                   Py_ssize_t rows, Py_ssize_t cols, double scale) noexcept nogil:
    if f32:
        return softmax_xent(<const float *>z, y, <float *>d, rows, cols, scale)
    return softmax_xent(<const double *>z, y, <double *>d, rows, cols, scale)


cdef inline double weighted_xent_rt(bint f32, const void *z, const cnp.int64_t *y, void *d,
                                    Py_ssize_t rows, Py_ssize_t cols, const double *w,
                                    double scale) noexcept nogil:
    if f32:
        return weighted_xent(<const float *>z, y, <float *>d, rows, cols, w, scale)
    return weighted_xent(<const double *>z, y, <double *>d, rows, cols, w, scale)
