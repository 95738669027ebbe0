/* Elementwise, loss and row-update loops, for float (f32) and double (f64).
 * Each function works on one contiguous range; the Cython callers split the
 * ranges between threads by output ownership. */
#ifndef BP_ELEMENTWISE_H
#define BP_ELEMENTWISE_H

#include "bp_config.h"

enum bp_unary_op {
    BP_SIGMOID = 0, BP_TANH = 1, BP_RELU = 2, BP_LEAKY_RELU = 3,
    BP_HARDTANH = 4, BP_GELU = 5, BP_SILU = 6
};

#define BP_DECLARE(T, S)                                                              \
    void bp_unary_fwd_##S(int op, const T *x, T *y, ptrdiff_t n, double alpha);      \
    void bp_unary_bwd_##S(int op, const T *g, const T *saved, T *out, ptrdiff_t n,   \
                          double alpha);                                              \
    void bp_axpy_##S(ptrdiff_t n, double alpha, const T *x, T *y);                   \
    void bp_add_bias_##S(const T *z, const T *b, T *out, ptrdiff_t rows,             \
                         ptrdiff_t cols);                                             \
    void bp_colsum_##S(const T *x, T *out, ptrdiff_t rows, ptrdiff_t ld,             \
                       ptrdiff_t cols);                                               \
    double bp_softmax_xent_##S(const T *z, const int64_t *y, T *d, ptrdiff_t rows,   \
                               ptrdiff_t cols, double scale);                         \
    double bp_sigmoid_bce_##S(const T *s, const T *t, T *d, ptrdiff_t n,             \
                              double scale);                                          \
    void bp_adagrad_##S(T *p, T *G, const T *g, ptrdiff_t n, double lr, double eps);    \
    void bp_sparse_adagrad_##S(T *table, T *G, ptrdiff_t d, const int64_t *ids,          \
                               ptrdiff_t n, ptrdiff_t w, const T *g, ptrdiff_t ld,       \
                               int64_t *scratch, int64_t *head, T *row, double lr,     \
                               double eps);

BP_DECLARE(float, f32)
BP_DECLARE(double, f64)
#undef BP_DECLARE

#endif
