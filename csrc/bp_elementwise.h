/* Elementwise loops (activations and their derivatives, axpy, bias add, column
 * sums, layer normalisation's rows), for float (f32) and double (f64). Each function works on one contiguous
 * range; the Cython callers split the ranges between threads by output ownership.
 * The losses are in bp_losses.h, the optimiser steps in bp_optim.h. */
#ifndef BP_ELEMENTWISE_H
#define BP_ELEMENTWISE_H

#include "bp_config.h"

enum bp_unary_op {
    BP_SIGMOID = 0, BP_TANH = 1, BP_RELU = 2, BP_LEAKY_RELU = 3,
    BP_HARDTANH = 4, BP_GELU = 5, BP_SILU = 6
};

/* Dropout's mask: element i (its flat index in the whole array) of a step with
 * key k is kept when bp_drop_hash(i, k) >= thr, thr = floor(p * 2^32). The hash
 * is two rounds of MurmurHash3's 32-bit finaliser (a bijection of i for a fixed
 * key) keyed by two words drawn from k and a stream number (independent masks
 * for the several dropouts of one step under one key), so a mask is a function of (key, index)
 * alone: the same whatever the chunking or thread count. Flat indices must be
 * below 2^32 (the Python boundary checks). */
static inline uint32_t bp_fmix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static inline void bp_drop_words(uint64_t key, uint32_t stream, uint32_t *s1, uint32_t *s2)
{
    *s1 = bp_fmix32((uint32_t)key ^ 0x9e3779b9u ^ bp_fmix32(stream + 0x632be5abu));
    *s2 = bp_fmix32((uint32_t)(key >> 32) ^ bp_fmix32(*s1 + 0x7f4a7c15u));
}

static inline uint32_t bp_drop_hash(uint32_t i, uint32_t s1, uint32_t s2)
{
    return bp_fmix32(bp_fmix32(i ^ s1) + s2);
}

#define BP_DECLARE(T, S)                                                              \
    void bp_unary_fwd_##S(int op, const T *x, T *y, ptrdiff_t n, double alpha);      \
    void bp_unary_bwd_##S(int op, const T *g, const T *saved, T *out, ptrdiff_t n,   \
                          double alpha);                                              \
    void bp_axpy_##S(ptrdiff_t n, double alpha, const T *x, T *y);                   \
    void bp_add_bias_##S(const T *z, const T *b, T *out, ptrdiff_t rows,             \
                         ptrdiff_t cols);                                             \
    void bp_colsum_##S(const T *x, T *out, ptrdiff_t rows, ptrdiff_t ld,             \
                       ptrdiff_t cols);                                             \
    void bp_dropout_##S(const T *x, T *y, ptrdiff_t n, uint64_t first, uint64_t key, \
                        uint32_t stream, uint32_t thr, double scale);                 \
    void bp_layer_norm_##S(const T *x, ptrdiff_t ldx, const T *w, const T *b, T *y,   \
                           ptrdiff_t ldy, T *xhat, ptrdiff_t ldh, T *rstd,            \
                           ptrdiff_t rows, ptrdiff_t d, double eps);                  \
    void bp_layer_norm_bwd_##S(const T *g, ptrdiff_t ldg, const T *w, const T *xhat,  \
                               ptrdiff_t ldh, const T *rstd, T *dx, ptrdiff_t ldd,    \
                               T *gx, ptrdiff_t ldgx, ptrdiff_t rows, ptrdiff_t d);

BP_DECLARE(float, f32)
BP_DECLARE(double, f64)
#undef BP_DECLARE

#endif
