/* Template body for bp_gemm.c (T, S defined by the includer). */
#define BP_CAT_(a, b) a##_##b
#define BP_CAT(a, b) BP_CAT_(a, b)
#define BP_FN(name) BP_CAT(name, S)

/* C[i, j] (+)= dot(A[i, :], B[j, :]) with both rows contiguous: the A Bᵀ product
 * without packing (packing B would transpose all of it on every call). Tiles
 * of 4 rows x 4 columns: 16 independent sums, each a vector accumulator along
 * k, share every load of A and B four ways. */
#define BP_DOT_ACC(r, c) s##r##c += a##r * b##c
BP_CLONES
void BP_FN(bp_gemm_dot)(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k,
                        const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb, T *C,
                        ptrdiff_t ldc, int accumulate)
{
    ptrdiff_t i = i0;
    for (; i + 4 <= i1; i += 4) {
        const T *restrict A0 = A + i * lda, *restrict A1 = A0 + lda, *restrict A2 = A1 + lda,
                *restrict A3 = A2 + lda;
        ptrdiff_t j = j0;
        for (; j + 4 <= j1; j += 4) {
            const T *restrict B0 = B + j * ldb, *restrict B1 = B0 + ldb,
                    *restrict B2 = B1 + ldb, *restrict B3 = B2 + ldb;
            T s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0,
              s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
            BP_PRAGMA(omp simd reduction(+:s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, \
                                         s22, s23, s30, s31, s32, s33))
            for (ptrdiff_t p = 0; p < k; p++) {
                const T a0 = A0[p], a1 = A1[p], a2 = A2[p], a3 = A3[p];
                const T b0 = B0[p], b1 = B1[p], b2 = B2[p], b3 = B3[p];
                BP_DOT_ACC(0, 0); BP_DOT_ACC(0, 1); BP_DOT_ACC(0, 2); BP_DOT_ACC(0, 3);
                BP_DOT_ACC(1, 0); BP_DOT_ACC(1, 1); BP_DOT_ACC(1, 2); BP_DOT_ACC(1, 3);
                BP_DOT_ACC(2, 0); BP_DOT_ACC(2, 1); BP_DOT_ACC(2, 2); BP_DOT_ACC(2, 3);
                BP_DOT_ACC(3, 0); BP_DOT_ACC(3, 1); BP_DOT_ACC(3, 2); BP_DOT_ACC(3, 3);
            }
            T s[4][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13},
                         {s20, s21, s22, s23}, {s30, s31, s32, s33}};
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) {
                    T *cc = C + (i + r) * ldc + j + c;
                    *cc = accumulate ? *cc + s[r][c] : s[r][c];
                }
        }
        for (; j < j1; j++) {
            const T *restrict B0 = B + j * ldb;
            T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            BP_PRAGMA(omp simd reduction(+:s0, s1, s2, s3))
            for (ptrdiff_t p = 0; p < k; p++) {
                const T b0 = B0[p];
                s0 += A0[p] * b0;
                s1 += A1[p] * b0;
                s2 += A2[p] * b0;
                s3 += A3[p] * b0;
            }
            T s[4] = {s0, s1, s2, s3};
            for (int r = 0; r < 4; r++) {
                T *cc = C + (i + r) * ldc + j;
                *cc = accumulate ? *cc + s[r] : s[r];
            }
        }
    }
    for (; i < i1; i++) {   /* the last rows: one row against four columns */
        const T *restrict a = A + i * lda;
        T *c = C + i * ldc;
        ptrdiff_t j = j0;
        for (; j + 4 <= j1; j += 4) {
            const T *restrict b0 = B + j * ldb, *restrict b1 = b0 + ldb,
                    *restrict b2 = b1 + ldb, *restrict b3 = b2 + ldb;
            T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            BP_PRAGMA(omp simd reduction(+:s0, s1, s2, s3))
            for (ptrdiff_t p = 0; p < k; p++) {
                const T ap = a[p];
                s0 += ap * b0[p];
                s1 += ap * b1[p];
                s2 += ap * b2[p];
                s3 += ap * b3[p];
            }
            if (accumulate) { c[j] += s0; c[j + 1] += s1; c[j + 2] += s2; c[j + 3] += s3; }
            else { c[j] = s0; c[j + 1] = s1; c[j + 2] = s2; c[j + 3] = s3; }
        }
        for (; j < j1; j++) {
            const T *restrict b0 = B + j * ldb;
            T s0 = 0;
            BP_SIMD_SUM(s0) for (ptrdiff_t p = 0; p < k; p++) s0 += a[p] * b0[p];
            c[j] = accumulate ? c[j] + s0 : s0;
        }
    }
}
#undef BP_DOT_ACC

/* C[i, :] (+)= sum_p op(A)(i, p) B[p, :] with B's rows contiguous (ldb), no packing:
 * for products with so few rows of A that packing B costs more than the arithmetic.
 * Four rows of C share each load of B's row; each element is summed in p order. */
BP_CLONES
void BP_FN(bp_gemm_axpy)(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k,
                         const T *A, ptrdiff_t ars, ptrdiff_t acs, const T *B, ptrdiff_t ldb,
                         T *C, ptrdiff_t ldc, int accumulate)
{
    const ptrdiff_t n = j1 - j0;
    ptrdiff_t i = i0;
    for (; i + 4 <= i1; i += 4) {
        T *restrict c0 = C + i * ldc + j0, *restrict c1 = c0 + ldc, *restrict c2 = c1 + ldc,
          *restrict c3 = c2 + ldc;
        if (!accumulate)
            for (ptrdiff_t j = 0; j < n; j++) c0[j] = c1[j] = c2[j] = c3[j] = 0;
        for (ptrdiff_t p = 0; p < k; p++) {
            const T a0 = A[i * ars + p * acs], a1 = A[(i + 1) * ars + p * acs],
                    a2 = A[(i + 2) * ars + p * acs], a3 = A[(i + 3) * ars + p * acs];
            const T *restrict b = B + p * ldb + j0;
            BP_SIMD for (ptrdiff_t j = 0; j < n; j++) {
                const T bj = b[j];
                c0[j] += a0 * bj;
                c1[j] += a1 * bj;
                c2[j] += a2 * bj;
                c3[j] += a3 * bj;
            }
        }
    }
    for (; i < i1; i++) {   /* the last rows: four rows of B per pass over the row of C */
        T *restrict c0 = C + i * ldc + j0;
        if (!accumulate)
            for (ptrdiff_t j = 0; j < n; j++) c0[j] = 0;
        ptrdiff_t p = 0;
        for (; p + 4 <= k; p += 4) {
            const T a0 = A[i * ars + p * acs], a1 = A[i * ars + (p + 1) * acs],
                    a2 = A[i * ars + (p + 2) * acs], a3 = A[i * ars + (p + 3) * acs];
            const T *restrict b0 = B + p * ldb + j0, *restrict b1 = b0 + ldb,
                    *restrict b2 = b1 + ldb, *restrict b3 = b2 + ldb;
            BP_SIMD for (ptrdiff_t j = 0; j < n; j++)
                c0[j] += ((a0 * b0[j] + a1 * b1[j]) + a2 * b2[j]) + a3 * b3[j];
        }
        for (; p < k; p++) {
            const T a0 = A[i * ars + p * acs];
            const T *restrict b = B + p * ldb + j0;
            BP_SIMD for (ptrdiff_t j = 0; j < n; j++) c0[j] += a0 * b[j];
        }
    }
}

/* The method for an m x n product with inner dimension k (see bp_gemm.h): one
 * decision, read by bp_gemm_block and by bp_gemm_uses_packed. */
static int BP_FN(method)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, int ta, int tb)
{
    if (tb && !ta && (m <= BP_DOT_ROWS || n <= BP_DOT_COLS) && k > 0) return BP_METHOD_DOT;
    if (!tb && m <= BP_AXPY_ROWS && k > BP_AXPY_DEPTH && bp_gemm_has_direct())
        return BP_METHOD_ROWS;
    if (!tb && (m <= BP_AXPY_ROWS || k <= BP_AXPY_DEPTH)) return BP_METHOD_AXPY;
    if (!tb && (m <= BP_DIRECT_ROWS || k <= BP_DIRECT_DEPTH) && bp_gemm_has_direct())
        return BP_METHOD_DIRECT;
    return BP_METHOD_PACKED;
}

int BP_FN(bp_gemm_block)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0,
                         ptrdiff_t j1, ptrdiff_t k, const T *A, int ta, ptrdiff_t lda,
                         const T *B, int tb, ptrdiff_t ldb, T *C, ptrdiff_t ldc, int accumulate)
{
    if (i0 >= i1 || j0 >= j1)
        return 0;
    const ptrdiff_t ars = ta ? 1 : lda, acs = ta ? lda : 1;
    switch (BP_FN(method)(m, n, k, ta, tb)) {
    case BP_METHOD_DOT:     /* the one-row / 4 x 4 AVX-512 kernels, else C dot tiles */
        if (BP_FN(bp_gemm_dotrows)(i0, i1, j0, j1, k, A, lda, B, ldb, C, ldc, accumulate))
            BP_FN(bp_gemm_dot)(i0, i1, j0, j1, k, A, lda, B, ldb, C, ldc, accumulate);
        return 0;
    case BP_METHOD_ROWS:
        if (BP_FN(bp_gemm_direct)(1, i0, i1, j0, j1, k, A, ars, acs, B, ldb, C, ldc,
                                  accumulate) == 0)
            return 0;
        /* fall through (the path changed since the method was chosen) */
    case BP_METHOD_AXPY:
        BP_FN(bp_gemm_axpy)(i0, i1, j0, j1, k, A, ars, acs, B, ldb, C, ldc, accumulate);
        return 0;
    case BP_METHOD_DIRECT:
        if (BP_FN(bp_gemm_direct)(0, i0, i1, j0, j1, k, A, ars, acs, B, ldb, C, ldc,
                                  accumulate) == 0)
            return 0;
        /* fall through */
    default:
        return BP_FN(bp_gemm_packed)(i0, i1, j0, j1, k, A, ars, acs, B, tb ? 1 : ldb,
                                     tb ? ldb : 1, C, ldc, accumulate);
    }
}

int BP_FN(bp_gemm_uses_packed)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, int ta, int tb)
{
    return BP_FN(method)(m, n, k, ta, tb) == BP_METHOD_PACKED;
}

int BP_FN(bp_gemm_shared)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *A, int ta,
                          ptrdiff_t lda, const T *B, int tb, ptrdiff_t ldb, T *C, ptrdiff_t ldc,
                          int accumulate, int nt, bp_for_fn run)
{
    return BP_FN(bp_gemm_packed_shared)(m, n, k, A, ta ? 1 : lda, ta ? lda : 1, B,
                                        tb ? 1 : ldb, tb ? ldb : 1, C, ldc, accumulate, nt, run);
}

#undef BP_FN
#undef BP_CAT
#undef BP_CAT_
