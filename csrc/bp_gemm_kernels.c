/* The GEMM methods and their CPU dispatch: the packed, cache-blocked GEMM with
 * register-blocked micro-kernels (below), the direct register-tile kernels over
 * unpacked operands and the dot-row kernel for very small products (further
 * down); csrc/bp_gemm.c picks one per product shape.
 *
 * The packed GEMM:
 * C[i0:i1, j0:j1] (+)= op(A) op(B), op(A)(i, p) = A[i*ars + p*acs],
 * op(B)(p, j) = B[p*brs + j*bcs]: transposes are strides, absorbed by packing.
 *
 * Loops (after Goto and van de Geijn): for each NC-wide column block and each
 * KC-deep slice of the inner dimension, B's KC x NC block is packed into
 * NR-wide panels; for each MC-tall row block, A's MC x KC block is packed
 * into MR-tall panels; a micro-kernel then computes each MR x NR tile of C in
 * registers over the KC slice. Edge tiles run the same kernel on zero-padded
 * panels into a scratch tile whose valid part is then merged.
 *
 * Determinism: each C element is accumulated over the inner dimension slice
 * by slice (KC fixed), in registers in k order, then added to C: the same
 * arithmetic whatever part of C a thread owns, so the result does not depend on
 * the thread count (it may differ between micro-kernels, i.e. ISA paths).
 *
 * Dispatch: the first call picks AVX-512, AVX2+FMA or portable C from the CPU;
 * CYGRAD_GEMM_PATH=avx2|generic forces a lower path (for tests and comparison).
 */
#define _POSIX_C_SOURCE 200112L     /* posix_memalign under -std=c11 on every libc */
#include <stdlib.h>
#include <string.h>

#include "bp_config.h"
#include "bp_gemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define BP_X86 1
#include <immintrin.h>
#else
#define BP_X86 0
#endif

#ifndef BP_PFC
#define BP_PFC 1
#endif
#ifndef KC
#define KC 512
#endif
#ifndef MC
#define MC 96        /* a multiple of every MR (6, 8, 4) */
#endif
#ifndef NC
#define PACK_GRAIN 4  /* B panels per chunk when the threads pack a slice together */
#define NC 3072      /* a multiple of every NR (32, 16, 8); A is packed once per NC columns */
#endif

/* ------------------------------------------------------------------ kernels */

/* Every kernel: C[MR x NR] (row stride ldc) = (first ? 0 : C) + Ap Bp over kc,
 * Ap packed [kc][MR], Bp packed [kc][NR]. */
typedef void (*ukr_f32)(ptrdiff_t kc, const float *Ap, const float *Bp, float *C,
                        ptrdiff_t ldc, int first);
typedef void (*ukr_f64)(ptrdiff_t kc, const double *Ap, const double *Bp, double *C,
                        ptrdiff_t ldc, int first);

#define GEN_MR 4
#define GEN_NR 16
static void ukr_generic_f32(ptrdiff_t kc, const float *Ap, const float *Bp, float *C,
                            ptrdiff_t ldc, int first)
{
    float acc[GEN_MR][GEN_NR] = {{0}};
    for (ptrdiff_t p = 0; p < kc; p++)
        for (int i = 0; i < GEN_MR; i++)
            for (int j = 0; j < GEN_NR; j++) acc[i][j] += Ap[p * GEN_MR + i] * Bp[p * GEN_NR + j];
    for (int i = 0; i < GEN_MR; i++)
        for (int j = 0; j < GEN_NR; j++)
            C[i * ldc + j] = first ? acc[i][j] : C[i * ldc + j] + acc[i][j];
}

static void ukr_generic_f64(ptrdiff_t kc, const double *Ap, const double *Bp, double *C,
                            ptrdiff_t ldc, int first)
{
    double acc[GEN_MR][GEN_NR / 2] = {{0}};
    for (ptrdiff_t p = 0; p < kc; p++)
        for (int i = 0; i < GEN_MR; i++)
            for (int j = 0; j < GEN_NR / 2; j++)
                acc[i][j] += Ap[p * GEN_MR + i] * Bp[p * (GEN_NR / 2) + j];
    for (int i = 0; i < GEN_MR; i++)
        for (int j = 0; j < GEN_NR / 2; j++)
            C[i * ldc + j] = first ? acc[i][j] : C[i * ldc + j] + acc[i][j];
}

#if BP_X86
/* The SIMD micro-kernels, one template: an MR x (2 vectors) tile of C in
 * registers, accumulated over kc from the packed panels (a broadcast element of
 * A times two vectors of B per row and step), then stored or added into C. */
#define BP_UKRS(NAME, T, V, MR, MRS, LANES, ZERO, LOAD, SET1, FMADD, ADD, STORE)           \
    static void NAME(ptrdiff_t kc, const T *Ap, const T *Bp, T *C, ptrdiff_t ldc, int first) \
    {                                                                                       \
        V c[MR][2];                                                                         \
        if (BP_PFC)                                                                         \
            for (int i = 0; i < MR; i++) {                                                  \
                __builtin_prefetch(C + i * ldc, 1, 3);                                      \
                __builtin_prefetch(C + i * ldc + 2 * LANES - 1, 1, 3);                      \
            }                                                                               \
        for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = ZERO();                             \
        for (ptrdiff_t p = 0; p < kc; p++) {                                                \
            const V b0 = LOAD(Bp + p * 2 * LANES), b1 = LOAD(Bp + p * 2 * LANES + LANES);   \
            for (int i = 0; i < MR; i++) {                                                  \
                const V a = SET1(Ap[p * MRS + i]);                                          \
                c[i][0] = FMADD(a, b0, c[i][0]);                                            \
                c[i][1] = FMADD(a, b1, c[i][1]);                                            \
            }                                                                               \
        }                                                                                   \
        for (int i = 0; i < MR; i++) {                                                      \
            T *ci = C + i * ldc;                                                            \
            if (!first) {                                                                   \
                c[i][0] = ADD(LOAD(ci), c[i][0]);                                           \
                c[i][1] = ADD(LOAD(ci + LANES), c[i][1]);                                   \
            }                                                                               \
            STORE(ci, c[i][0]);                                                             \
            STORE(ci + LANES, c[i][1]);                                                     \
        }                                                                                   \
    }

#define BP_UKR(NAME, T, V, MR, ...) BP_UKRS(NAME, T, V, MR, MR, __VA_ARGS__)

/* AVX2 + FMA: 6 x 16 floats (12 ymm accumulators), 6 x 8 doubles. */
#define BP_AVX2 __attribute__((target("avx2,fma")))
BP_AVX2 BP_UKR(ukr_avx2_f32, float, __m256, 6, 8, _mm256_setzero_ps, _mm256_loadu_ps,
               _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps)
BP_AVX2 BP_UKR(ukr_avx2_f64, double, __m256d, 6, 4, _mm256_setzero_pd, _mm256_loadu_pd,
               _mm256_set1_pd, _mm256_fmadd_pd, _mm256_add_pd, _mm256_storeu_pd)

/* AVX-512: 8 x 32 floats (16 zmm accumulators), 8 x 16 doubles. */
#define BP_AVX512 __attribute__((target("avx512f")))
BP_AVX512 BP_UKR(ukr_avx512_f32, float, __m512, 8, 16, _mm512_setzero_ps, _mm512_loadu_ps,
                 _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps)
BP_AVX512 BP_UKR(ukr_avx512_f64, double, __m512d, 8, 8, _mm512_setzero_pd, _mm512_loadu_pd,
                 _mm512_set1_pd, _mm512_fmadd_pd, _mm512_add_pd, _mm512_storeu_pd)
/* The same on the top half of an 8-row panel: the row edge of C when at most 4
 * rows are left (m = 300 = 37 x 8 + 4 would otherwise compute 4 rows of zeros). */
BP_AVX512 BP_UKRS(ukr_avx512_f32_half, float, __m512, 4, 8, 16, _mm512_setzero_ps,
                  _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps,
                  _mm512_storeu_ps)
BP_AVX512 BP_UKRS(ukr_avx512_f64_half, double, __m512d, 4, 8, 8, _mm512_setzero_pd,
                  _mm512_loadu_pd, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_add_pd,
                  _mm512_storeu_pd)

/* dst[q * ldd + r] = src[r * ld + q] for a 16 x 16 block of floats: in registers,
 * 32-bit then 64-bit interleaves, then two rounds of 128-bit lane shuffles. Used
 * to pack a transposed B (the X Wᵀ of a forward pass) 16 values at a time. */
/* dst[q * ldd + i] = src[i * ld + q] for an 8 x 8 block of floats: the transposed
 * B panels of the AVX2 path (NR = 16, two blocks per 8 steps of k). */
BP_AVX2 static void transpose8_f32(const float *src, ptrdiff_t ld, float *dst, ptrdiff_t ldd)
{
    __m256 r[8], t[8], s[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * ld);
    for (int i = 0; i < 4; i++) {          /* t[2i], t[2i+1]: rows 2i, 2i+1 interleaved */
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; h++) {          /* s[4h + c]: rows 4h..4h+3 of columns c, c + 4 */
        s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
        s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
        s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        _mm256_storeu_ps(dst + c * ldd, _mm256_permute2f128_ps(s[c], s[4 + c], 0x20));
        _mm256_storeu_ps(dst + (c + 4) * ldd, _mm256_permute2f128_ps(s[c], s[4 + c], 0x31));
    }
}

/* dst[q * 6 + i] = src[i * ld + q], q < 8, i < 6: eight steps of k of an AVX2 A panel
 * (MR = 6) whose rows are contiguous. The 8 x 8 transpose of the rows (the last two
 * rows repeat row 5, their columns are not stored); columns 0-6 are stored 8 wide, each
 * store's last two values overwritten by the next one's, column 7 exactly 6 wide. */
BP_AVX2 static void pack6x8_f32(const float *src, ptrdiff_t ld, float *dst)
{
    __m256 r[8], t[8], s[8], c[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (i < 6 ? i : 5) * ld);
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; h++) {
        s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
        s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
        s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    for (int q = 0; q < 4; q++) {
        c[q] = _mm256_permute2f128_ps(s[q], s[4 + q], 0x20);
        c[q + 4] = _mm256_permute2f128_ps(s[q], s[4 + q], 0x31);
    }
    for (int q = 0; q < 7; q++) _mm256_storeu_ps(dst + q * 6, c[q]);
    _mm_storeu_ps(dst + 42, _mm256_castps256_ps128(c[7]));
    _mm_storel_pi((__m64 *)(dst + 46), _mm256_extractf128_ps(c[7], 1));
}

BP_AVX512 static void transpose16_f32(const float *src, ptrdiff_t ld, float *dst, ptrdiff_t ldd)
{
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * ld);
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* u[4g + c], lane L: rows 4g..4g+3 of column 4L + c */
    for (int g = 0; g < 4; g++) {
        const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 2]);
        const __m512d e = _mm512_castps_pd(t[4 * g + 1]), f = _mm512_castps_pd(t[4 * g + 3]);
        r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(e, f));
        r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(e, f));
    }
    for (int c = 0; c < 4; c++) {
        const __m512 vlo = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);
        const __m512 vhi = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
        const __m512 wlo = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
        const __m512 whi = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
        _mm512_storeu_ps(dst + (0 + c) * ldd, _mm512_shuffle_f32x4(vlo, wlo, 0x88));
        _mm512_storeu_ps(dst + (4 + c) * ldd, _mm512_shuffle_f32x4(vlo, wlo, 0xDD));
        _mm512_storeu_ps(dst + (8 + c) * ldd, _mm512_shuffle_f32x4(vhi, whi, 0x88));
        _mm512_storeu_ps(dst + (12 + c) * ldd, _mm512_shuffle_f32x4(vhi, whi, 0xDD));
    }
}

/* Four rows of A against four rows of B: 16 dot products, each a zmm accumulator
 * along k, reduced together into 16 sums (two 8-way reductions). */
BP_AVX512 static inline __m256 reduce8_f32(const __m512 *s)
{
    __m256 h[8];
    for (int q = 0; q < 8; q++)
        h[q] = _mm256_add_ps(_mm512_castps512_ps256(s[q]),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s[q]), 1)));
    const __m256 t0 = _mm256_hadd_ps(h[0], h[1]), t1 = _mm256_hadd_ps(h[2], h[3]);
    const __m256 t2 = _mm256_hadd_ps(h[4], h[5]), t3 = _mm256_hadd_ps(h[6], h[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                         _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* One row of A against rows of B (C[0, j] (+)= dot(a, B[j, :])), the A Bᵀ product
 * of a single example (z = W x): eight columns at a time, each a zmm accumulator
 * along k (masked at the end of the row), the eight sums reduced together by
 * horizontal adds. */
BP_AVX512 static void dotrow_avx512_f32(ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k,
                                        const float *a, const float *B, ptrdiff_t ldb,
                                        float *c, int accumulate)
{
    const ptrdiff_t kv = k & ~(ptrdiff_t)15;
    const __mmask16 tail = (__mmask16)((1u << (k - kv)) - 1);
    ptrdiff_t j = j0;
    for (; j + 8 <= j1; j += 8) {
        __m512 s[8];
        for (int q = 0; q < 8; q++) s[q] = _mm512_setzero_ps();
        for (ptrdiff_t p = 0; p < kv; p += 16) {
            const __m512 av = _mm512_loadu_ps(a + p);
            for (int q = 0; q < 8; q++)
                s[q] = _mm512_fmadd_ps(av, _mm512_loadu_ps(B + (j + q) * ldb + p), s[q]);
        }
        if (tail) {
            const __m512 av = _mm512_maskz_loadu_ps(tail, a + kv);
            for (int q = 0; q < 8; q++)
                s[q] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(tail, B + (j + q) * ldb + kv),
                                       s[q]);
        }
        __m256 r = reduce8_f32(s);
        if (accumulate) r = _mm256_add_ps(_mm256_loadu_ps(c + j), r);
        _mm256_storeu_ps(c + j, r);
    }
    for (; j < j1; j++) {
        __m512 s0 = _mm512_setzero_ps();
        for (ptrdiff_t p = 0; p < kv; p += 16)
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + p), _mm512_loadu_ps(B + j * ldb + p), s0);
        if (tail)
            s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, a + kv),
                                 _mm512_maskz_loadu_ps(tail, B + j * ldb + kv), s0);
        const float v = _mm512_reduce_add_ps(s0);
        c[j] = accumulate ? c[j] + v : v;
    }
}

/* Four rows of A against one row of B: four independent sums (the column tail of a
 * 4-row group). */
BP_AVX512 static void dot4x1_avx512_f32(ptrdiff_t k, const float *A, ptrdiff_t lda,
                                        const float *b, float *C, ptrdiff_t ldc, int accumulate)
{
    const ptrdiff_t kv = k & ~(ptrdiff_t)15;
    const __mmask16 tail = (__mmask16)((1u << (k - kv)) - 1);
    __m512 s[4];
    for (int r = 0; r < 4; r++) s[r] = _mm512_setzero_ps();
    for (ptrdiff_t p = 0; p < kv; p += 16) {
        const __m512 bv = _mm512_loadu_ps(b + p);
        for (int r = 0; r < 4; r++)
            s[r] = _mm512_fmadd_ps(_mm512_loadu_ps(A + r * lda + p), bv, s[r]);
    }
    if (tail) {
        const __m512 bv = _mm512_maskz_loadu_ps(tail, b + kv);
        for (int r = 0; r < 4; r++)
            s[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, A + r * lda + kv), bv, s[r]);
    }
    for (int r = 0; r < 4; r++) {
        const float v = _mm512_reduce_add_ps(s[r]);
        C[r * ldc] = accumulate ? C[r * ldc] + v : v;
    }
}

BP_AVX512 static void dot4x4_avx512_f32(ptrdiff_t k, const float *A, ptrdiff_t lda,
                                        const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                                        int accumulate)
{
    const ptrdiff_t kv = k & ~(ptrdiff_t)15;
    const __mmask16 tail = (__mmask16)((1u << (k - kv)) - 1);
    __m512 s[16];
    for (int q = 0; q < 16; q++) s[q] = _mm512_setzero_ps();
    for (ptrdiff_t p = 0; p < kv; p += 16) {
        __m512 a[4], b[4];
        for (int r = 0; r < 4; r++) a[r] = _mm512_loadu_ps(A + r * lda + p);
        for (int c = 0; c < 4; c++) b[c] = _mm512_loadu_ps(B + c * ldb + p);
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) s[r * 4 + c] = _mm512_fmadd_ps(a[r], b[c], s[r * 4 + c]);
    }
    if (tail) {
        __m512 a[4], b[4];
        for (int r = 0; r < 4; r++) a[r] = _mm512_maskz_loadu_ps(tail, A + r * lda + kv);
        for (int c = 0; c < 4; c++) b[c] = _mm512_maskz_loadu_ps(tail, B + c * ldb + kv);
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) s[r * 4 + c] = _mm512_fmadd_ps(a[r], b[c], s[r * 4 + c]);
    }
    float out[16];
    _mm256_storeu_ps(out, reduce8_f32(s));
    _mm256_storeu_ps(out + 8, reduce8_f32(s + 8));
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) {
            float *cc = C + r * ldc + c;
            *cc = accumulate ? *cc + out[r * 4 + c] : out[r * 4 + c];
        }
}

/* Few-row kernels (op(A) B with at most 4 rows of A, e.g. dX = dZ W for one
 * example): each row's strip of C stays in registers over the whole of k while
 * B's rows stream past, with enough independent accumulators (8 for one row, 4
 * x MRC for more) to hide the FMA latency. The axpy path instead loads and
 * stores C for every few rows of B, and a one-row register tile of the direct
 * kernel has only two chains of FMAs in flight. The last strip masks its loads
 * and stores (vectors wholly past the edge load zeros and store nothing). */
#define BP_ROWS_TILE(T, V, LANES, MASK, SET1, FMADD, LOAD, MLOAD, STORE, MSTORE, ADD, ZERO)   \
    static inline __attribute__((always_inline)) void rows_tile_##T(                         \
        const int MRC, const int NV, const int masked, ptrdiff_t k, const T *A,              \
        ptrdiff_t ars, ptrdiff_t acs, const T *B, ptrdiff_t ldb, T *C, ptrdiff_t ldc,        \
        ptrdiff_t nr, int accumulate)                                                        \
    {                                                                                        \
        MASK mk[8];                                                                          \
        for (int v = 0; v < NV; v++) {                                                       \
            const ptrdiff_t left = nr - v * LANES;                                           \
            mk[v] = left >= LANES ? (MASK)~0 : left > 0 ? (MASK)((1u << left) - 1) : (MASK)0; \
        }                                                                                    \
        V c[4][8];                                                                           \
        for (int r = 0; r < MRC; r++)                                                        \
            for (int v = 0; v < NV; v++) c[r][v] = ZERO();                                   \
        for (ptrdiff_t p = 0; p < k; p++) {                                                  \
            V b[8];                                                                          \
            for (int v = 0; v < NV; v++)                                                     \
                b[v] = masked ? MLOAD(mk[v], B + p * ldb + v * LANES)                        \
                              : LOAD(B + p * ldb + v * LANES);                               \
            for (int r = 0; r < MRC; r++) {                                                  \
                const V a = SET1(A[r * ars + p * acs]);                                      \
                for (int v = 0; v < NV; v++) c[r][v] = FMADD(a, b[v], c[r][v]);              \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < MRC; r++)                                                        \
            for (int v = 0; v < NV; v++) {                                                   \
                T *cv = C + r * ldc + v * LANES;                                             \
                if (masked) {                                                                \
                    if (accumulate) c[r][v] = ADD(MLOAD(mk[v], cv), c[r][v]);                \
                    MSTORE(cv, mk[v], c[r][v]);                                              \
                } else {                                                                     \
                    if (accumulate) c[r][v] = ADD(LOAD(cv), c[r][v]);                        \
                    STORE(cv, c[r][v]);                                                      \
                }                                                                            \
            }                                                                                \
    }

BP_AVX512 BP_ROWS_TILE(float, __m512, 16, __mmask16, _mm512_set1_ps, _mm512_fmadd_ps,
                       _mm512_loadu_ps, _mm512_maskz_loadu_ps, _mm512_storeu_ps,
                       _mm512_mask_storeu_ps, _mm512_add_ps, _mm512_setzero_ps)
BP_AVX512 BP_ROWS_TILE(double, __m512d, 8, __mmask8, _mm512_set1_pd, _mm512_fmadd_pd,
                       _mm512_loadu_pd, _mm512_maskz_loadu_pd, _mm512_storeu_pd,
                       _mm512_mask_storeu_pd, _mm512_add_pd, _mm512_setzero_pd)

/* Direct kernels (no packing) for products with few rows (m <= 16) or a short
 * inner dimension (k <= 64): an MRC x 32 (f32) or MRC x 16 (f64) tile of C is
 * held in registers over the whole of k, reading op(A)(i, p) = A[i*ars + p*acs]
 * and the rows of B in place; masked loads and stores take the column edge.
 * Packing would cost more than it saves here: it copies all of B (the weight
 * matrix) for a handful of rows, or A and B for a rank-k update with tiny k. */
#define BP_DIRECT_TILE(T, V, LANES, SET1, FMADD, MLOAD, MSTORE, ADD, ZERO)                   \
    static inline __attribute__((always_inline)) void direct_tile_##T(                       \
        const int MRC, ptrdiff_t k, const T *A, ptrdiff_t ars, ptrdiff_t acs, const T *B,     \
        ptrdiff_t ldb, T *C, ptrdiff_t ldc, MASK_T m0, MASK_T m1, int accumulate)            \
    {                                                                                        \
        V c0[8], c1[8];                                                                      \
        for (int r = 0; r < MRC; r++) c0[r] = c1[r] = ZERO();                                \
        for (ptrdiff_t p = 0; p < k; p++) {                                                  \
            const V b0 = MLOAD(m0, B + p * ldb), b1 = MLOAD(m1, B + p * ldb + LANES);        \
            for (int r = 0; r < MRC; r++) {                                                  \
                const V a = SET1(A[r * ars + p * acs]);                                      \
                c0[r] = FMADD(a, b0, c0[r]);                                                 \
                c1[r] = FMADD(a, b1, c1[r]);                                                 \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < MRC; r++) {                                                      \
            T *cr = C + r * ldc;                                                             \
            if (accumulate) {                                                                \
                c0[r] = ADD(MLOAD(m0, cr), c0[r]);                                           \
                c1[r] = ADD(MLOAD(m1, cr + LANES), c1[r]);                                   \
            }                                                                                \
            MSTORE(cr, m0, c0[r]);                                                           \
            MSTORE(cr + LANES, m1, c1[r]);                                                   \
        }                                                                                    \
    }

#define MASK_T __mmask16
BP_AVX512 BP_DIRECT_TILE(float, __m512, 16, _mm512_set1_ps, _mm512_fmadd_ps,
                         _mm512_maskz_loadu_ps, _mm512_mask_storeu_ps, _mm512_add_ps,
                         _mm512_setzero_ps)
#undef MASK_T
#define MASK_T __mmask8
BP_AVX512 BP_DIRECT_TILE(double, __m512d, 8, _mm512_set1_pd, _mm512_fmadd_pd,
                         _mm512_maskz_loadu_pd, _mm512_mask_storeu_pd, _mm512_add_pd,
                         _mm512_setzero_pd)
#undef MASK_T

#define BP_DIRECT_TILE_AT(T, LANES, MASK, i, j)                                              \
    do {                                                                                     \
        const ptrdiff_t nr = j1 - (j);                                                       \
        const MASK m0 = nr >= LANES ? (MASK)~0 : (MASK)((1u << nr) - 1);                     \
        const MASK m1 = nr >= 2 * LANES ? (MASK)~0                                           \
                        : nr > LANES ? (MASK)((1u << (nr - LANES)) - 1) : (MASK)0;           \
        const T *a = A + (i) * ars;                                                          \
        T *c = C + (i) * ldc + (j);                                                          \
        const T *b = B + (j);                                                                \
        switch (i1 - (i) < 8 ? (int)(i1 - (i)) : 8) {                                        \
        case 8: direct_tile_##T(8, k, a, ars, acs, b, ldb, c, ldc, m0, m1, acc); break;      \
        case 7: direct_tile_##T(7, k, a, ars, acs, b, ldb, c, ldc, m0, m1, acc); break;      \
        case 6: direct_tile_##T(6, k, a, ars, acs, b, ldb, c, ldc, m0, m1, acc); break;      \
        case 5: direct_tile_##T(5, k, a, ars, acs, b, ldb, c, ldc, m0, m1, acc); break;      \
        case 4: direct_tile_##T(4, k, a, ars, acs, b, ldb, c, ldc, m0, m1, acc); break;      \
        case 3: direct_tile_##T(3, k, a, ars, acs, b, ldb, c, ldc, m0, m1, acc); break;      \
        case 2: direct_tile_##T(2, k, a, ars, acs, b, ldb, c, ldc, m0, m1, acc); break;      \
        default: direct_tile_##T(1, k, a, ars, acs, b, ldb, c, ldc, m0, m1, acc);            \
        }                                                                                    \
    } while (0)

/* With a short inner dimension (dW = dZᵀ X of a small batch) the tiles are 4 rows
 * x 4 vectors of rows_tile, in row-major order: per step of k, 4 loads of B and 4
 * broadcasts of A feed 16 FMAs, where the 8 x 2-vector tile needs 8 broadcasts;
 * C's rows are written in sequence. Otherwise (a few rows against a large B, the
 * dX = dZ W of a small batch) 8 x 2-vector tiles column strip by column strip, so
 * that each strip of B is read once for all the rows. */
#define BP_SMALLK_ROWS(T, MRC, LANES)                                                        \
    for (ptrdiff_t j = j0; j < j1; j += 4 * LANES) {                                         \
        if (j1 - j >= 4 * LANES)                                                             \
            rows_tile_##T(MRC, 4, 0, k, a, ars, acs, B + j, ldb, c + j, ldc, 4 * LANES, acc); \
        else                                                                                 \
            rows_tile_##T(MRC, 4, 1, k, a, ars, acs, B + j, ldb, c + j, ldc, j1 - j, acc);    \
    }

#define BP_DIRECT_DRIVER(T, S, LANES, MASK)                                                  \
    BP_AVX512 static void direct_avx512_##S(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0,        \
                                            ptrdiff_t j1, ptrdiff_t k, const T *A,           \
                                            ptrdiff_t ars, ptrdiff_t acs, const T *B,        \
                                            ptrdiff_t ldb, T *C, ptrdiff_t ldc, int acc)     \
    {                                                                                        \
        if (k <= BP_DIRECT_DEPTH) {                                                          \
            for (ptrdiff_t i = i0; i < i1; i += 4) {                                         \
                const T *a = A + i * ars;                                                    \
                T *c = C + i * ldc;                                                          \
                switch (i1 - i < 4 ? (int)(i1 - i) : 4) {                                    \
                case 4: BP_SMALLK_ROWS(T, 4, LANES) break;                                   \
                case 3: BP_SMALLK_ROWS(T, 3, LANES) break;                                   \
                case 2: BP_SMALLK_ROWS(T, 2, LANES) break;                                   \
                default: BP_SMALLK_ROWS(T, 1, LANES) break;                                  \
                }                                                                            \
            }                                                                                \
        } else {                                                                             \
            for (ptrdiff_t j = j0; j < j1; j += 2 * LANES)                                   \
                for (ptrdiff_t i = i0; i < i1; i += 8)                                       \
                    BP_DIRECT_TILE_AT(T, LANES, MASK, i, j);                                 \
        }                                                                                    \
    }
BP_DIRECT_DRIVER(float, f32, 16, __mmask16)
BP_DIRECT_DRIVER(double, f64, 8, __mmask8)

#define BP_ROWS_STRIPS(T, MRC, NV, LANES)                                                    \
    for (ptrdiff_t j = j0; j < j1; j += NV * LANES) {                                        \
        if (j1 - j >= NV * LANES)                                                            \
            rows_tile_##T(MRC, NV, 0, k, A, ars, acs, B + j, ldb, C + j, ldc, NV * LANES, acc); \
        else                                                                                 \
            rows_tile_##T(MRC, NV, 1, k, A, ars, acs, B + j, ldb, C + j, ldc, j1 - j, acc);   \
    }

#define BP_ROWS_DRIVER(T, S, LANES)                                                          \
    BP_AVX512 static void rows_avx512_##S(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0,          \
                                          ptrdiff_t j1, ptrdiff_t k, const T *A,             \
                                          ptrdiff_t ars, ptrdiff_t acs, const T *B,          \
                                          ptrdiff_t ldb, T *C, ptrdiff_t ldc, int acc)       \
    {                                                                                        \
        A += i0 * ars;                                                                       \
        C += i0 * ldc;                                                                       \
        switch (i1 - i0) {                                                                   \
        case 1: BP_ROWS_STRIPS(T, 1, 8, LANES) break;                                        \
        case 2: BP_ROWS_STRIPS(T, 2, 4, LANES) break;                                        \
        case 3: BP_ROWS_STRIPS(T, 3, 4, LANES) break;                                        \
        default: BP_ROWS_STRIPS(T, 4, 4, LANES) break;                                       \
        }                                                                                    \
    }
BP_ROWS_DRIVER(float, f32, 16)
BP_ROWS_DRIVER(double, f64, 8)
#endif

/* ------------------------------------------------------------------ dispatch */

typedef void (*direct_f32)(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1,
                           ptrdiff_t k, const float *A, ptrdiff_t ars, ptrdiff_t acs,
                           const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc, int acc);
typedef void (*direct_f64)(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1,
                           ptrdiff_t k, const double *A, ptrdiff_t ars, ptrdiff_t acs,
                           const double *B, ptrdiff_t ldb, double *C, ptrdiff_t ldc, int acc);

typedef void (*dotrow_f32)(ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k, const float *a,
                           const float *B, ptrdiff_t ldb, float *c, int accumulate);

struct bp_path {
    const char *name;
    int mr32, nr32, mr64, nr64;
    int t8;              /* AVX2: transposed B panels of 16 floats packed by 8 x 8 blocks */
    ukr_f32 k32;
    ukr_f64 k64;
    ukr_f32 h32;         /* the top half (MR / 2 rows) of a panel; NULL: none */
    ukr_f64 h64;
    direct_f32 d32;      /* NULL: no direct kernel on this path */
    direct_f64 d64;
    dotrow_f32 r32;      /* NULL: no one-row kernel on this path */
    direct_f32 w32;      /* NULL: no few-row kernel on this path */
    direct_f64 w64;
};

static const struct bp_path PATHS[] = {
#if BP_X86
    {"avx512", 8, 32, 8, 16, 0, ukr_avx512_f32, ukr_avx512_f64, ukr_avx512_f32_half,
     ukr_avx512_f64_half, direct_avx512_f32,
     direct_avx512_f64, dotrow_avx512_f32, rows_avx512_f32, rows_avx512_f64},
    {"avx2", 6, 16, 6, 8, 1, ukr_avx2_f32, ukr_avx2_f64, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL},
#endif
    {"generic", GEN_MR, GEN_NR, GEN_MR, GEN_NR / 2, 0, ukr_generic_f32, ukr_generic_f64, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL},
};
#define N_PATHS ((int)(sizeof(PATHS) / sizeof(PATHS[0])))

static int path_supported(int i)
{
#if BP_X86
    __builtin_cpu_init();
    if (strcmp(PATHS[i].name, "avx512") == 0) return __builtin_cpu_supports("avx512f");
    if (strcmp(PATHS[i].name, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    (void)i;
    return 1;
}

static int chosen = -1;

/* The best supported path, or the one CYGRAD_GEMM_PATH names if the CPU has it. */
static const struct bp_path *path(void)
{
    int c = __atomic_load_n(&chosen, __ATOMIC_ACQUIRE);
    if (c < 0) {
        const char *want = getenv("CYGRAD_GEMM_PATH");
        c = -1;
        for (int i = 0; i < N_PATHS; i++) {
            if (!path_supported(i)) continue;
            if (want && *want && strcmp(want, PATHS[i].name) != 0) continue;
            c = i;
            break;
        }
        if (c < 0)
            for (c = 0; !path_supported(c); c++) {}
        __atomic_store_n(&chosen, c, __ATOMIC_RELEASE);
    }
    return &PATHS[c];
}

const char *bp_gemm_path(void) { return path()->name; }

int bp_gemm_has_direct(void) { return path()->d32 != NULL; }

/* Names of the paths this CPU can run, best first, separated by commas. */
const char *bp_gemm_paths(void)
{
    static char buf[64];
    if (!buf[0]) {
        char tmp[64] = "";
        for (int i = 0; i < N_PATHS; i++)
            if (path_supported(i)) {
                if (tmp[0]) strcat(tmp, ",");
                strcat(tmp, PATHS[i].name);
            }
        memcpy(buf, tmp, sizeof(tmp));
    }
    return buf;
}

void bp_gemm_reset_path(void) { __atomic_store_n(&chosen, -1, __ATOMIC_RELEASE); }

/* ------------------------------------------------------------------ buffers */

/* Per-thread packing buffers, grown on demand and kept (the pool's helper
 * threads live as long as the process): no allocation in the steady state. */
static _Thread_local void *tl_buf;
static _Thread_local size_t tl_cap;

static void *work_buffer(size_t bytes)
{
    if (bytes > tl_cap) {
        free(tl_buf);
        tl_buf = NULL;
        tl_cap = 0;
        size_t want = (bytes + 4095) & ~(size_t)4095;
        if (posix_memalign(&tl_buf, 64, want) != 0) return NULL;
        tl_cap = want;
    }
    return tl_buf;
}

/* ------------------------------------------------------------------ driver */

#define BP_CAT_(a, b) a##_##b
#define BP_CAT(a, b) BP_CAT_(a, b)
#define BP_FN(name) BP_CAT(name, S)

#define T float
#define BP_F32 1
#define S f32
#define MRF mr32
#define BP_NR_WIDE 32
#define NRF nr32
#define KER k32
#define HALF h32
#define DIR d32
#define ROWS w32
#include "bp_gemm_kernels_impl.h"
#undef T
#undef BP_F32
#undef S
#undef MRF
#undef NRF
#undef KER
#undef HALF
#undef DIR
#undef ROWS
#undef BP_NR_WIDE

#define T double
#define BP_F32 0
#define S f64
#define MRF mr64
#define BP_NR_WIDE 16
#define NRF nr64
#define KER k64
#define HALF h64
#define DIR d64
#define ROWS w64
#include "bp_gemm_kernels_impl.h"
#undef T
#undef BP_F32
#undef S
#undef MRF
#undef NRF
#undef KER
#undef HALF
#undef DIR
#undef ROWS
#undef BP_NR_WIDE

/* A Bᵀ for rows i0..i1 of A, one row at a time, by the path's one-row kernel:
 * returns 0 when done, 1 when the path has none (float32 on AVX-512 only). */
int bp_gemm_dotrows_f32(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k,
                        const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb, float *C,
                        ptrdiff_t ldc, int accumulate)
{
    const struct bp_path *pth = path();
    if (!pth->r32) return 1;
    ptrdiff_t i = i0;
#if BP_X86      /* elsewhere no path has a one-row kernel: returned above */
    for (; i + 4 <= i1; i += 4) {
        ptrdiff_t j = j0;
        for (; j + 4 <= j1; j += 4)
            dot4x4_avx512_f32(k, A + i * lda, lda, B + j * ldb, ldb, C + i * ldc + j, ldc,
                              accumulate);
        for (; j < j1; j++)
            dot4x1_avx512_f32(k, A + i * lda, lda, B + j * ldb, C + i * ldc + j, ldc, accumulate);
    }
#endif
    for (; i < i1; i++)
        pth->r32(j0, j1, k, A + i * lda, B, ldb, C + i * ldc, accumulate);
    return 0;
}

int bp_gemm_dotrows_f64(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0, ptrdiff_t j1, ptrdiff_t k,
                        const double *A, ptrdiff_t lda, const double *B, ptrdiff_t ldb,
                        double *C, ptrdiff_t ldc, int accumulate)
{
    (void)i0; (void)i1; (void)j0; (void)j1; (void)k; (void)A; (void)lda; (void)B; (void)ldb;
    (void)C; (void)ldc; (void)accumulate;
    return 1;
}
