/* Optimiser steps in place: Adagrad, SGD with momentum and Adam/AdamW on a
 * contiguous range, and sparse Adagrad on
 * the table rows a batch of windows touched (SGD is an axpy: bp_elementwise.h). */
#ifndef BP_OPTIM_H
#define BP_OPTIM_H

#include "bp_config.h"

#define BP_DECLARE(T, S)                                                              \
    void bp_adagrad_##S(T *p, T *G, const T *g, ptrdiff_t n, double lr, double eps);    \
    void bp_sparse_adagrad_##S(T *table, T *G, ptrdiff_t d, const int64_t *ids,          \
                               ptrdiff_t n, ptrdiff_t w, const T *g, ptrdiff_t ld,       \
                               int64_t *scratch, T *row, double lr, double eps);        \
    void bp_sgd_momentum_##S(T *p, T *buf, const T *g, ptrdiff_t n, double lr,             \
                             double momentum, double dampening, double wd, int nesterov,  \
                             int first);                                                   \
    void bp_adam_##S(T *p, T *m, T *v, const T *g, ptrdiff_t n, double step, double beta1, \
                     double beta2, double eps, double sqrt_bc2, double wd, double decay);  \
    void bp_sparse_adam_##S(T *table, T *m, T *v, ptrdiff_t d, const int64_t *ids,          \
                            ptrdiff_t n, ptrdiff_t w, const T *g, ptrdiff_t ld,              \
                            int64_t *scratch, T *row, double step,                           \
                            double beta1, double beta2, double eps, double sqrt_bc2,         \
                            double wd, double decay);

/* (row id, slot) pairs of n slots with row ids ids[0:n], grouped by row in increasing
 * row order, each row's slots in increasing order (pairs: 2 n int64; ids must not
 * overlap it): the one grouping of a row's updates, eager and compiled. */
void bp_group_slots(const int64_t *ids, ptrdiff_t n, int64_t *pairs);

BP_DECLARE(float, f32)
BP_DECLARE(double, f64)
#undef BP_DECLARE

#endif
