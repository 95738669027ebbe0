/* Template body for bp_gemm_packed.c: T, S and the path's MR/NR/kernel fields
 * (MRF, NRF, KER) are defined by the includer. */

/* op(A)[0:mc, 0:kc] -> panels of MR rows, each [kc][MR], zero-padded. Cloned per
 * ISA; the branches for the full AVX-512 panel (MR = 8) have fixed sizes, so that
 * they compile to vector moves. */
BP_CLONES
static void BP_FN(pack_a)(int MR, ptrdiff_t mc, ptrdiff_t kc, const T *A, ptrdiff_t ars,
                          ptrdiff_t acs, T *restrict Ap)
{
    for (ptrdiff_t ir = 0; ir < mc; ir += MR) {
        const int mr = mc - ir < MR ? (int)(mc - ir) : MR;
        T *restrict dst = Ap + ir * kc;
        const T *src = A + ir * ars;
        if (acs == 1 && mr == 8 && MR == 8) {   /* rows contiguous: 8 rows in lock-step */
            const T *r0 = src, *r1 = r0 + ars, *r2 = r1 + ars, *r3 = r2 + ars, *r4 = r3 + ars,
                    *r5 = r4 + ars, *r6 = r5 + ars, *r7 = r6 + ars;
            for (ptrdiff_t p = 0; p < kc; p++) {
                T *d = dst + p * 8;
                d[0] = r0[p]; d[1] = r1[p]; d[2] = r2[p]; d[3] = r3[p];
                d[4] = r4[p]; d[5] = r5[p]; d[6] = r6[p]; d[7] = r7[p];
            }
            continue;
        }
        if (ars == 1 && mr == 8 && MR == 8) {   /* a transposed A: copy 8 at a time */
            for (ptrdiff_t p = 0; p < kc; p++)
                for (int i = 0; i < 8; i++) dst[p * 8 + i] = src[p * acs + i];
            continue;
        }
        if (acs == 1) {            /* rows of op(A) contiguous: read along p */
            for (int i = 0; i < mr; i++)
                for (ptrdiff_t p = 0; p < kc; p++) dst[p * MR + i] = src[i * ars + p];
        } else {                   /* columns contiguous (a transposed A) */
            for (ptrdiff_t p = 0; p < kc; p++)
                for (int i = 0; i < mr; i++) dst[p * MR + i] = src[i * ars + p * acs];
        }
        for (int i = mr; i < MR; i++)
            for (ptrdiff_t p = 0; p < kc; p++) dst[p * MR + i] = 0;
    }
}

/* op(B)[0:kc, 0:nc] -> panels of NR columns, each [kc][NR], zero-padded. */
BP_CLONES
static void BP_FN(pack_b)(int NR, ptrdiff_t kc, ptrdiff_t nc, const T *B, ptrdiff_t brs,
                          ptrdiff_t bcs, T *restrict Bp)
{
    for (ptrdiff_t jr = 0; jr < nc; jr += NR) {
        const int nr = nc - jr < NR ? (int)(nc - jr) : NR;
        T *restrict dst = Bp + jr * kc;
        const T *src = B + jr * bcs;
        if (bcs == 1 && nr == BP_NR_WIDE && NR == BP_NR_WIDE) {   /* the AVX-512 panel */
            for (ptrdiff_t p = 0; p < kc; p++)
                for (int j = 0; j < BP_NR_WIDE; j++) dst[p * BP_NR_WIDE + j] = src[p * brs + j];
        } else if (bcs == 1) {     /* rows of op(B) contiguous */
            for (ptrdiff_t p = 0; p < kc; p++) {
                for (int j = 0; j < nr; j++) dst[p * NR + j] = src[p * brs + j];
                for (int j = nr; j < NR; j++) dst[p * NR + j] = 0;
            }
        } else {                   /* a transposed B: walk its nr rows in lock-step, so
                                      that each packed row is written contiguously and the
                                      nr source lines stay in L1 across 16 steps of p */
            ptrdiff_t p = 0;
#if BP_X86 && BP_F32
            if (NR == 32 && nr == 32 && brs == 1)   /* NR 32: the AVX-512 path */
                for (; p + 16 <= kc; p += 16) {
                    transpose16_f32(src + p, bcs, dst + p * 32, 32);
                    transpose16_f32(src + 16 * bcs + p, bcs, dst + p * 32 + 16, 32);
                }
#endif
            for (; p < kc; p++) {
                T *d = dst + p * NR;
                const T *sp = src + p * brs;
                for (int j = 0; j < nr; j++) d[j] = sp[j * bcs];
                for (int j = nr; j < NR; j++) d[j] = 0;
            }
        }
    }
}

/* c[0:mr, 0:nr] (+)= tile[0:mr, 0:nr]: the valid part of an edge tile (cloned per
 * ISA so that the row loops vectorise with the widest registers the CPU has). */
BP_CLONES
static void BP_FN(merge_tile)(const T *restrict tile, int ldt, T *restrict c, ptrdiff_t ldc,
                              int mr, int nr, int first)
{
    for (int i = 0; i < mr; i++) {
        const T *t = tile + i * ldt;
        T *ci = c + i * ldc;
        if (first)
            for (int j = 0; j < nr; j++) ci[j] = t[j];
        else
            for (int j = 0; j < nr; j++) ci[j] += t[j];
    }
}

/* C[i0:i1, j0:j1] (+)= op(A) op(B) over the whole inner dimension k.
 * Returns 0, or -1 when the packing buffer cannot be allocated. */
int BP_FN(bp_gemm_packed)(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k,
                          const T *A, ptrdiff_t ars, ptrdiff_t acs, const T *B, ptrdiff_t brs,
                          ptrdiff_t bcs, T *C, ptrdiff_t ldc, int accumulate)
{
    const struct bp_path *pth = path();
    const int MR = pth->MRF, NR = pth->NRF;
    const ptrdiff_t m = i1 - i0, n = j1 - j0;
    if (m <= 0 || n <= 0) return 0;
    if (k == 0) {
        if (!accumulate)
            for (ptrdiff_t i = i0; i < i1; i++) memset(C + i * ldc + j0, 0, n * sizeof(T));
        return 0;
    }
    const ptrdiff_t ncmax = n < NC ? (n + NR - 1) / NR * NR : NC;
    const ptrdiff_t mcmax = m < MC ? (m + MR - 1) / MR * MR : MC;
    /* k in equal slices of at most KC (k = 512: two of 256, not 384 + 128) */
    const ptrdiff_t kcmax = (k + (k + KC - 1) / KC - 1) / ((k + KC - 1) / KC);
    T *Bp = work_buffer((size_t)(kcmax * ncmax + kcmax * mcmax + MR * NR) * sizeof(T));
    if (!Bp) return -1;
    T *Ap = Bp + kcmax * ncmax;
    T *tile = Ap + kcmax * mcmax;
    for (ptrdiff_t jc = j0; jc < j1; jc += NC) {
        const ptrdiff_t nc = j1 - jc < NC ? j1 - jc : NC;
        for (ptrdiff_t pc = 0; pc < k; pc += kcmax) {
            const ptrdiff_t kc = k - pc < kcmax ? k - pc : kcmax;
            const int first = pc == 0 && !accumulate;
            BP_FN(pack_b)(NR, kc, nc, B + pc * brs + jc * bcs, brs, bcs, Bp);
            for (ptrdiff_t ic = i0; ic < i1; ic += MC) {
                const ptrdiff_t mc = i1 - ic < MC ? i1 - ic : MC;
                BP_FN(pack_a)(MR, mc, kc, A + ic * ars + pc * acs, ars, acs, Ap);
                for (ptrdiff_t jr = 0; jr < nc; jr += NR) {
                    const int nr = nc - jr < NR ? (int)(nc - jr) : NR;
                    for (ptrdiff_t ir = 0; ir < mc; ir += MR) {
                        const int mr = mc - ir < MR ? (int)(mc - ir) : MR;
                        T *c = C + (ic + ir) * ldc + jc + jr;
                        /* at most MR / 2 rows left: the half-panel kernel, if any */
                        const int half = pth->HALF && 2 * mr <= MR;
                        if (nr == NR && (mr == MR || (half && 2 * mr == MR))) {
                            (half ? pth->HALF : pth->KER)(kc, Ap + ir * kc, Bp + jr * kc, c,
                                                           ldc, first);
                        } else {   /* edge: the kernel into the tile, merge the valid part */
                            (half ? pth->HALF : pth->KER)(kc, Ap + ir * kc, Bp + jr * kc, tile,
                                                           NR, 1);
                            BP_FN(merge_tile)(tile, NR, c, ldc, mr, nr, first);
                        }
                    }
                }
            }
        }
    }
    return 0;
}

/* The direct kernel of this path (see direct_tile), if it has one: returns 0 when
 * it computed C[i0:i1, j0:j1] (+)= op(A) B, 1 when the path has none. */
int BP_FN(bp_gemm_direct)(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k,
                          const T *A, ptrdiff_t ars, ptrdiff_t acs, const T *B, ptrdiff_t ldb,
                          T *C, ptrdiff_t ldc, int accumulate)
{
    const struct bp_path *pth = path();
    if (!pth->DIR) return 1;
    pth->DIR(i0, i1, j0, j1, k, A, ars, acs, B, ldb, C, ldc, accumulate);
    return 0;
}

/* The few-row kernel of this path (see rows_tile), if it has one: returns 0 when
 * it computed C[i0:i1, j0:j1] (+)= op(A) B (i1 - i0 <= 4), 1 when the path has none. */
int BP_FN(bp_gemm_rows)(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k,
                        const T *A, ptrdiff_t ars, ptrdiff_t acs, const T *B, ptrdiff_t ldb,
                        T *C, ptrdiff_t ldc, int accumulate)
{
    const struct bp_path *pth = path();
    if (!pth->ROWS) return 1;
    pth->ROWS(i0, i1, j0, j1, k, A, ars, acs, B, ldb, C, ldc, accumulate);
    return 0;
}
