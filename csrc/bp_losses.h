/* Fused loss loops: softmax cross-entropy, the logistic loss and max-margin, each returning
 * the summed loss of its rows and writing the gradient wrt its inputs. */
#ifndef BP_LOSSES_H
#define BP_LOSSES_H

#include "bp_config.h"

#define BP_DECLARE(T, S)                                                              \
    double bp_softmax_xent_##S(const T *z, const int64_t *y, T *d, ptrdiff_t rows,   \
                               ptrdiff_t cols, double scale);                         \
    double bp_sigmoid_bce_##S(const T *s, const T *t, T *d, ptrdiff_t n,             \
                              double scale);                                          \
    double bp_max_margin_##S(const T *s, const T *sc, T *ds, T *dsc, ptrdiff_t n,    \
                             double margin, double scale);

BP_DECLARE(float, f32)
BP_DECLARE(double, f64)
#undef BP_DECLARE

#endif
