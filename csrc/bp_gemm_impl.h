/* Template body for bp_gemm.c (T, S defined by the includer). */
#define BP_CAT_(a, b) a##_##b
#define BP_CAT(a, b) BP_CAT_(a, b)
#define BP_FN(name) BP_CAT(name, S)

/* C[i, j] (+)= dot(A[i, :], B[j, :]) with both rows contiguous: the A Bᵀ product
 * for few rows of A, where packing B would cost more than the product. Four
 * columns at a time share each load of A's row. */
BP_CLONES
void BP_FN(bp_gemm_dot)(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k,
                        const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb, T *C,
                        ptrdiff_t ldc, int accumulate)
{
    for (ptrdiff_t i = i0; i < i1; i++) {
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

#undef BP_FN
#undef BP_CAT
#undef BP_CAT_
