/* Blocked GEMM tiles: C[i0:i1, j0:j1] (+)= op(A) op(B) over the full inner
 * dimension k. The caller splits C between threads; each element is computed
 * by one thread in one fixed order, so results do not depend on the split. */
#ifndef BP_GEMM_H
#define BP_GEMM_H

#include "bp_config.h"

#define BP_GEMM_JB 256   /* columns of C per block (C row segments stay in L1) */
#define BP_GEMM_KB 256   /* inner-dimension block: a KB x JB panel of B stays in L2 */

#define BP_DECLARE(T, S)                                                                 \
    void bp_gemm_tile_##S(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1,         \
                          ptrdiff_t k, const T *A, ptrdiff_t ars, ptrdiff_t acs,          \
                          const T *B, ptrdiff_t brs, ptrdiff_t bcs, T *C, ptrdiff_t ldc,  \
                          int accumulate, T *work);                                       \
    void bp_gemm_dot_##S(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1,          \
                         ptrdiff_t k, const T *A, ptrdiff_t lda, const T *B,              \
                         ptrdiff_t ldb, T *C, ptrdiff_t ldc, int accumulate);

BP_DECLARE(float, f32)
BP_DECLARE(double, f64)
#undef BP_DECLARE

#endif
