/* Template body for bp_gemm_kernels.c: T, S and the path's MR/NR/kernel fields
 * (MRF, NRF, KER) are defined by the includer. */

/* op(A)[0:mc, 0:kc] -> panels of MR rows, each [kc][MR], zero-padded. Cloned per
 * ISA; the branches for the full AVX-512 panel (MR = 8) have fixed sizes, so that
 * they compile to vector moves. */
BP_CLONES
static void BP_FN(pack_a)(int MR, int t8, ptrdiff_t mc, ptrdiff_t kc, const T *A,
                          ptrdiff_t ars, ptrdiff_t acs, T *restrict Ap)
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
#if BP_X86 && BP_F32
        if (t8 && acs == 1 && mr == 6 && MR == 6) {   /* the AVX2 panel: 8 steps at a time */
            ptrdiff_t p = 0;
            for (; p + 8 <= kc; p += 8) pack6x8_f32(src + p, ars, dst + p * 6);
            for (; p < kc; p++)
                for (int i = 0; i < 6; i++) dst[p * 6 + i] = src[i * ars + p];
            continue;
        }
#else
        (void)t8;
#endif
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
static void BP_FN(pack_b)(int NR, int t8, ptrdiff_t kc, ptrdiff_t nc, const T *B,
                          ptrdiff_t brs, ptrdiff_t bcs, T *restrict Bp)
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
            if (t8 && NR == 16 && nr == 16 && brs == 1)   /* the AVX2 path */
                for (; p + 8 <= kc; p += 8) {
                    transpose8_f32(src + p, bcs, dst + p * 16, 16);
                    transpose8_f32(src + 8 * bcs + p, bcs, dst + p * 16 + 8, 16);
                }
#else
            (void)t8;
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

/* k in equal slices of at most KC (k = 1024: two of 512, not 512 + 512 + 0;
 * k = 600: two of 300, not 512 + 88) */
static inline ptrdiff_t BP_FN(kc_slice)(ptrdiff_t k)
{
    return (k + (k + KC - 1) / KC - 1) / ((k + KC - 1) / KC);
}

/* Rows [i0, i1) of C[:, jc:jc + nc] (+)= the kc-deep slice at pc, B's slice packed
 * in Bp: row blocks of MC packed into Ap, then every MR x NR tile. */
static inline void BP_FN(packed_rows)(const struct bp_path *pth, ptrdiff_t i0, ptrdiff_t i1,
                                      ptrdiff_t jc, ptrdiff_t nc, ptrdiff_t pc, ptrdiff_t kc,
                                      int first, const T *A, ptrdiff_t ars, ptrdiff_t acs,
                                      const T *Bp, T *Ap, T *tile, T *C, ptrdiff_t ldc)
{
    const int MR = pth->MRF, NR = pth->NRF;
    for (ptrdiff_t ic = i0; ic < i1; ic += MC) {
        const ptrdiff_t mc = i1 - ic < MC ? i1 - ic : MC;
        BP_FN(pack_a)(MR, pth->t8, mc, kc, A + ic * ars + pc * acs, ars, acs, Ap);
        for (ptrdiff_t jr = 0; jr < nc; jr += NR) {
            const int nr = nc - jr < NR ? (int)(nc - jr) : NR;
            for (ptrdiff_t ir = 0; ir < mc; ir += MR) {
                const int mr = mc - ir < MR ? (int)(mc - ir) : MR;
                T *c = C + (ic + ir) * ldc + jc + jr;
                /* at most MR / 2 rows left: the half-panel kernel, if any */
                const int half = pth->HALF && 2 * mr <= MR;
                const int rows = half ? MR / 2 : MR;
                const BP_CAT(ukr, S) ker = half ? pth->HALF : pth->KER;
                if (nr == NR && mr == rows) {
                    ker(kc, Ap + ir * kc, Bp + jr * kc, c, ldc, first);
                } else {   /* edge: the kernel into the tile, merge the valid part */
                    ker(kc, Ap + ir * kc, Bp + jr * kc, tile, NR, 1);
                    BP_FN(merge_tile)(tile, NR, c, ldc, mr, nr, first);
                }
            }
        }
    }
}

static void BP_FN(zero_rows)(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, T *C,
                             ptrdiff_t ldc)
{
    for (ptrdiff_t i = i0; i < i1; i++) memset(C + i * ldc + j0, 0, (j1 - j0) * sizeof(T));
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
        if (!accumulate) BP_FN(zero_rows)(i0, i1, j0, j1, C, ldc);
        return 0;
    }
    const ptrdiff_t ncmax = n < NC ? (n + NR - 1) / NR * NR : NC;
    const ptrdiff_t mcmax = m < MC ? (m + MR - 1) / MR * MR : MC;
    const ptrdiff_t kcmax = BP_FN(kc_slice)(k);
    T *Bp = work_buffer((size_t)(kcmax * ncmax + kcmax * mcmax + MR * NR) * sizeof(T));
    if (!Bp) return -1;
    T *Ap = Bp + kcmax * ncmax;
    T *tile = Ap + kcmax * mcmax;
    for (ptrdiff_t jc = j0; jc < j1; jc += NC) {
        const ptrdiff_t nc = j1 - jc < NC ? j1 - jc : NC;
        for (ptrdiff_t pc = 0; pc < k; pc += kcmax) {
            const ptrdiff_t kc = k - pc < kcmax ? k - pc : kcmax;
            BP_FN(pack_b)(NR, pth->t8, kc, nc, B + pc * brs + jc * bcs, brs, bcs, Bp);
            BP_FN(packed_rows)(pth, i0, i1, jc, nc, pc, kc, pc == 0 && !accumulate, A, ars, acs,
                               Bp, Ap, tile, C, ldc);
        }
    }
    return 0;
}

/* The whole m x n product on the thread pool, the threads sharing each packed
 * slice of B (Goto's and BLIS's arrangement): one loop packs its NR-wide panels
 * (chunks of PACK_GRAIN panels), a second computes the rows, in chunks of MC rows,
 * each thread with its own packed A (worker's scratch); then the next slice.
 * Packing B once instead of once per thread halves its memory traffic at
 * 2 threads, and the row chunks are claimed dynamically. Every element is
 * computed as by bp_gemm_packed. Returns 0, or -1 when the buffers cannot be
 * allocated. */
struct BP_FN(shared_job) {
    const struct bp_path *pth;
    const T *A, *B;
    ptrdiff_t ars, acs, brs, bcs, ldc, jc, nc, pc, kc, own, kcmax, ncmax, mcmax;
    T *C, *Bp;
    int first;
};

static void BP_FN(shared_pack)(void *ctx, ptrdiff_t lo, ptrdiff_t hi, int worker)
{
    const struct BP_FN(shared_job) *j = ctx;
    const int NR = j->pth->NRF;
    (void)worker;
    for (ptrdiff_t p = lo; p < hi; p++) {
        const ptrdiff_t jr = p * NR;
        BP_FN(pack_b)(NR, j->pth->t8, j->kc, j->nc - jr < NR ? j->nc - jr : NR,
                      j->B + j->pc * j->brs + (j->jc + jr) * j->bcs, j->brs, j->bcs,
                      j->Bp + jr * j->kc);
    }
}

static void BP_FN(shared_rows)(void *ctx, ptrdiff_t lo, ptrdiff_t hi, int worker)
{
    const struct BP_FN(shared_job) *j = ctx;
    T *Ap = j->Bp + j->kcmax * j->ncmax + worker * j->own;
    BP_FN(packed_rows)(j->pth, lo, hi, j->jc, j->nc, j->pc, j->kc, j->first, j->A, j->ars,
                       j->acs, j->Bp, Ap, Ap + j->kcmax * j->mcmax, j->C, j->ldc);
}

int BP_FN(bp_gemm_packed_shared)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *A,
                                 ptrdiff_t ars, ptrdiff_t acs, const T *B, ptrdiff_t brs,
                                 ptrdiff_t bcs, T *C, ptrdiff_t ldc, int accumulate, int nt,
                                 bp_for_fn run)
{
    const struct bp_path *pth = path();
    const int MR = pth->MRF, NR = pth->NRF;
    if (m <= 0 || n <= 0) return 0;
    if (k == 0) {
        if (!accumulate) BP_FN(zero_rows)(0, m, 0, n, C, ldc);
        return 0;
    }
    const ptrdiff_t ncmax = n < NC ? (n + NR - 1) / NR * NR : NC;
    const ptrdiff_t mcmax = m < MC ? (m + MR - 1) / MR * MR : MC;
    const ptrdiff_t kcmax = BP_FN(kc_slice)(k);
    const ptrdiff_t own = kcmax * mcmax + MR * NR;       /* each thread's A and tile */
    /* one allocation, in the calling thread's buffer, before the threads start */
    T *Bp = work_buffer((size_t)(kcmax * ncmax + nt * own) * sizeof(T));
    if (!Bp) return -1;
    struct BP_FN(shared_job) j = {pth, A, B, ars, acs, brs, bcs, ldc, 0, 0, 0, 0, own, kcmax,
                                  ncmax, mcmax, C, Bp, 0};
    for (j.jc = 0; j.jc < n; j.jc += NC) {
        j.nc = n - j.jc < NC ? n - j.jc : NC;
        for (j.pc = 0; j.pc < k; j.pc += kcmax) {
            j.kc = k - j.pc < kcmax ? k - j.pc : kcmax;
            j.first = j.pc == 0 && !accumulate;
            run(BP_FN(shared_pack), &j, (j.nc + NR - 1) / NR, PACK_GRAIN, nt);
            run(BP_FN(shared_rows), &j, m, MC, nt);
        }
    }
    return 0;
}

/* An unpacked kernel of this path, if it has it: the few-row kernel (rows_tile,
 * i1 - i0 <= 4) when few_rows, else the direct kernel (direct_tile). Returns 0 when
 * it computed C[i0:i1, j0:j1] (+)= op(A) B, 1 when the path has no such kernel. */
int BP_FN(bp_gemm_direct)(int few_rows, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1,
                          ptrdiff_t k, const T *A, ptrdiff_t ars, ptrdiff_t acs, const T *B,
                          ptrdiff_t ldb, T *C, ptrdiff_t ldc, int accumulate)
{
    const struct bp_path *pth = path();
    const BP_CAT(direct, S) kernel = few_rows ? pth->ROWS : pth->DIR;
    if (!kernel) return 1;
    kernel(i0, i1, j0, j1, k, A, ars, acs, B, ldb, C, ldc, accumulate);
    return 0;
}
