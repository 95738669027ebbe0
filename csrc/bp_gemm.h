/* GEMM on a block of C: C[i0:i1, j0:j1] (+)= op(A) op(B) over the full inner
 * dimension k. The caller splits C between threads; each element is computed
 * by one thread in one fixed order, so results do not depend on the split. */
#ifndef BP_GEMM_H
#define BP_GEMM_H

#include "bp_config.h"
#include "bp_pool.h"

#define BP_DECLARE(T, S)                                                                 \
    int bp_gemm_packed_##S(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1,        \
                           ptrdiff_t k, const T *A, ptrdiff_t ars, ptrdiff_t acs,         \
                           const T *B, ptrdiff_t brs, ptrdiff_t bcs, T *C, ptrdiff_t ldc, \
                           int accumulate);                                               \
    void bp_gemm_dot_##S(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1,          \
                         ptrdiff_t k, const T *A, ptrdiff_t lda, const T *B,              \
                         ptrdiff_t ldb, T *C, ptrdiff_t ldc, int accumulate);             \
    void bp_gemm_axpy_##S(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1,         \
                          ptrdiff_t k, const T *A, ptrdiff_t ars, ptrdiff_t acs,          \
                          const T *B, ptrdiff_t ldb, T *C, ptrdiff_t ldc, int accumulate);  \
    int bp_gemm_direct_##S(int few_rows, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0,            \
                           ptrdiff_t j1, ptrdiff_t k, const T *A, ptrdiff_t ars,            \
                           ptrdiff_t acs, const T *B, ptrdiff_t ldb, T *C, ptrdiff_t ldc,   \
                           int accumulate);                                                 \
    int bp_gemm_dotrows_##S(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1,          \
                            ptrdiff_t k, const T *A, ptrdiff_t lda, const T *B,             \
                            ptrdiff_t ldb, T *C, ptrdiff_t ldc, int accumulate);            \
    int bp_gemm_packed_shared_##S(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *A,          \
                                  ptrdiff_t ars, ptrdiff_t acs, const T *B, ptrdiff_t brs,  \
                                  ptrdiff_t bcs, T *C, ptrdiff_t ldc, int accumulate,       \
                                  int nt, bp_for_fn run);                                   \
    int bp_gemm_uses_packed_##S(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, int ta, int tb);       \
    int bp_gemm_shared_##S(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *A, int ta,         \
                           ptrdiff_t lda, const T *B, int tb, ptrdiff_t ldb, T *C,          \
                           ptrdiff_t ldc, int accumulate, int nt, bp_for_fn run);           \
    int bp_gemm_block_##S(ptrdiff_t m, ptrdiff_t n, ptrdiff_t i0, ptrdiff_t i1,             \
                          ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k, const T *A, int ta,      \
                          ptrdiff_t lda,                                                    \
                          const T *B, int tb, ptrdiff_t ldb, T *C, ptrdiff_t ldc,           \
                          int accumulate);

BP_DECLARE(float, f32)
BP_DECLARE(double, f64)
#undef BP_DECLARE

/* bp_gemm_block: the block C[i0:i1, j0:j1] of the m x n product op(A) op(B),
 * A with leading dimension lda (transposed if ta), B likewise. The method is
 * chosen from the whole product's shape (m rows, n columns), never from the
 * block, so every split of C between threads computes each element the same way:
 * A Bᵀ with m <= BP_DOT_ROWS or n <= BP_DOT_COLS (z = W x for a few examples, the
 * scores of a small output layer): dot-product tiles (4 x 4, and single rows
 * eight columns at a time; in AVX-512 intrinsics for float32 where the CPU has
 * it, else C that the compiler vectorises); op(A) B with m <= BP_AXPY_ROWS
 * (dX = dZ W for one example): on AVX-512 a few-row kernel that keeps each row's
 * strip of C in registers over all of k (8 accumulators for one row), else, as
 * for an inner dimension k <= BP_AXPY_DEPTH (a rank-1 or rank-2 update such as
 * dW += δ xᵀ for one example), rows of B accumulated into C (four rows of B per
 * pass, which keeps independent sums in flight where a register tile of one row
 * would wait on one chain of FMAs); other op(A) B with m <= BP_DIRECT_ROWS or
 * k <= BP_DIRECT_DEPTH (a small batch's dX and dW), where the path has a direct
 * kernel (AVX-512): register tiles over unpacked operands; otherwise the packed
 * GEMM. Returns nonzero if a packing
 * buffer could not be allocated. */
#define BP_DOT_ROWS 8
#define BP_DOT_COLS 16
#define BP_AXPY_ROWS 4
#define BP_AXPY_DEPTH 2
#define BP_DIRECT_ROWS 16
#define BP_DIRECT_DEPTH 64

/* bp_gemm_uses_packed: whether bp_gemm_block takes the packed GEMM for this shape.
 * bp_gemm_shared: the whole product on at most nt threads of the pool (`run` is
 * cygrad._parallel's parallel_for), rows in chunks of MC, sharing each packed
 * slice of B (only for shapes that use the packed GEMM: the same elements,
 * computed the same way, as bp_gemm_block on any split of the rows). Returns nonzero if the buffers could not be allocated. */

/* Whether the path in use has the direct (unpacked) kernels: 1 for AVX-512. */
int bp_gemm_has_direct(void);

/* The micro-kernel path in use ("avx512", "avx2" or "generic"), the paths this
 * CPU supports (comma-separated, best first), and a reset that makes the next
 * call read CYGRAD_GEMM_PATH again. */
const char *bp_gemm_path(void);
const char *bp_gemm_paths(void);
void bp_gemm_reset_path(void);

#endif
