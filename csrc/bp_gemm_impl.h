/* Template body for bp_gemm.c (T, S defined by the includer). */
#define BP_CAT_(a, b) a##_##b
#define BP_CAT(a, b) BP_CAT_(a, b)
#define BP_FN(name) BP_CAT(name, S)

/* Four rows of C against one packed panel: c_r[j] += a_r * b[j]; B row loaded once
 * for four rows. `first` zeroes C before the first panel. */
BP_INLINE void BP_FN(bp_rows4)(ptrdiff_t kb, ptrdiff_t nb, const T *A, ptrdiff_t ars,
                               ptrdiff_t acs, const T *Bp, ptrdiff_t ldbp, T *C,
                               ptrdiff_t ldc, int first)
{
    T *restrict c0 = C, *restrict c1 = C + ldc, *restrict c2 = C + 2 * ldc,
      *restrict c3 = C + 3 * ldc;
    if (first) {
        for (ptrdiff_t j = 0; j < nb; j++) { c0[j] = 0; c1[j] = 0; c2[j] = 0; c3[j] = 0; }
    }
    for (ptrdiff_t p = 0; p < kb; p++) {
        const T a0 = A[p * acs], a1 = A[ars + p * acs], a2 = A[2 * ars + p * acs],
                a3 = A[3 * ars + p * acs];
        const T *restrict b = Bp + p * ldbp;
        BP_SIMD for (ptrdiff_t j = 0; j < nb; j++) {
            const T bj = b[j];
            c0[j] += a0 * bj;
            c1[j] += a1 * bj;
            c2[j] += a2 * bj;
            c3[j] += a3 * bj;
        }
    }
}

BP_INLINE void BP_FN(bp_rows1)(ptrdiff_t kb, ptrdiff_t nb, const T *A, ptrdiff_t acs,
                               const T *Bp, ptrdiff_t ldbp, T *restrict c0, int first)
{
    if (first) for (ptrdiff_t j = 0; j < nb; j++) c0[j] = 0;
    for (ptrdiff_t p = 0; p < kb; p++) {
        const T a0 = A[p * acs];
        const T *restrict b = Bp + p * ldbp;
        BP_SIMD for (ptrdiff_t j = 0; j < nb; j++) c0[j] += a0 * b[j];
    }
}

BP_CLONES
void BP_FN(bp_gemm_tile)(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k,
                         const T *A, ptrdiff_t ars, ptrdiff_t acs, const T *B, ptrdiff_t brs,
                         ptrdiff_t bcs, T *C, ptrdiff_t ldc, int accumulate, T *work)
{
    if (k == 0) {   /* empty sum */
        if (!accumulate)
            for (ptrdiff_t i = i0; i < i1; i++)
                for (ptrdiff_t j = j0; j < j1; j++) C[i * ldc + j] = 0;
        return;
    }
    for (ptrdiff_t jb = j0; jb < j1; jb += BP_GEMM_JB) {
        const ptrdiff_t nb = j1 - jb < BP_GEMM_JB ? j1 - jb : BP_GEMM_JB;
        for (ptrdiff_t pb = 0; pb < k; pb += BP_GEMM_KB) {
            const ptrdiff_t kb = k - pb < BP_GEMM_KB ? k - pb : BP_GEMM_KB;
            const T *Bp;
            ptrdiff_t ldbp;
            if (bcs == 1) {
                Bp = B + pb * brs + jb;
                ldbp = brs;
            } else {   /* strided columns (a transposed B): pack the panel */
                for (ptrdiff_t j = 0; j < nb; j++) {
                    const T *src = B + pb * brs + (jb + j) * bcs;
                    for (ptrdiff_t p = 0; p < kb; p++) work[p * nb + j] = src[p * brs];
                }
                Bp = work;
                ldbp = nb;
            }
            const int first = pb == 0 && !accumulate;
            ptrdiff_t i = i0;
            for (; i + 4 <= i1; i += 4)
                BP_FN(bp_rows4)(kb, nb, A + i * ars + pb * acs, ars, acs, Bp, ldbp,
                                C + i * ldc + jb, ldc, first);
            for (; i < i1; i++)
                BP_FN(bp_rows1)(kb, nb, A + i * ars + pb * acs, acs, Bp, ldbp,
                                C + i * ldc + jb, first);
        }
    }
}

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
