/* Elementwise loops (activations and their derivatives, axpy, bias add, column
 * sums), for float (f32) and double (f64). Each function works on one contiguous
 * range; the Cython callers split the ranges between threads by output ownership.
 * The losses are in bp_losses.h, the optimiser steps in bp_optim.h. */
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
                       ptrdiff_t cols);

BP_DECLARE(float, f32)
BP_DECLARE(double, f64)
#undef BP_DECLARE

#endif
