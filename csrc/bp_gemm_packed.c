/* Packed, cache-blocked GEMM with register-blocked micro-kernels.
 *
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

#define KC 256
#define MC 96        /* a multiple of every MR (6, 8, 4) */
#define NC 1536      /* a multiple of every NR (32, 16, 8) */

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
/* AVX2 + FMA: 6 x 16 floats (12 ymm accumulators), 6 x 8 doubles. */
#define BP_AVX2 __attribute__((target("avx2,fma")))
BP_AVX2 static void ukr_avx2_f32(ptrdiff_t kc, const float *Ap, const float *Bp, float *C,
                                 ptrdiff_t ldc, int first)
{
    __m256 c[6][2];
    for (int i = 0; i < 6; i++) c[i][0] = c[i][1] = _mm256_setzero_ps();
    for (ptrdiff_t p = 0; p < kc; p++) {
        const __m256 b0 = _mm256_loadu_ps(Bp + p * 16), b1 = _mm256_loadu_ps(Bp + p * 16 + 8);
        for (int i = 0; i < 6; i++) {
            const __m256 a = _mm256_broadcast_ss(Ap + p * 6 + i);
            c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
        }
    }
    for (int i = 0; i < 6; i++) {
        float *ci = C + i * ldc;
        if (!first) {
            c[i][0] = _mm256_add_ps(_mm256_loadu_ps(ci), c[i][0]);
            c[i][1] = _mm256_add_ps(_mm256_loadu_ps(ci + 8), c[i][1]);
        }
        _mm256_storeu_ps(ci, c[i][0]);
        _mm256_storeu_ps(ci + 8, c[i][1]);
    }
}

BP_AVX2 static void ukr_avx2_f64(ptrdiff_t kc, const double *Ap, const double *Bp, double *C,
                                 ptrdiff_t ldc, int first)
{
    __m256d c[6][2];
    for (int i = 0; i < 6; i++) c[i][0] = c[i][1] = _mm256_setzero_pd();
    for (ptrdiff_t p = 0; p < kc; p++) {
        const __m256d b0 = _mm256_loadu_pd(Bp + p * 8), b1 = _mm256_loadu_pd(Bp + p * 8 + 4);
        for (int i = 0; i < 6; i++) {
            const __m256d a = _mm256_broadcast_sd(Ap + p * 6 + i);
            c[i][0] = _mm256_fmadd_pd(a, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_pd(a, b1, c[i][1]);
        }
    }
    for (int i = 0; i < 6; i++) {
        double *ci = C + i * ldc;
        if (!first) {
            c[i][0] = _mm256_add_pd(_mm256_loadu_pd(ci), c[i][0]);
            c[i][1] = _mm256_add_pd(_mm256_loadu_pd(ci + 4), c[i][1]);
        }
        _mm256_storeu_pd(ci, c[i][0]);
        _mm256_storeu_pd(ci + 4, c[i][1]);
    }
}

/* AVX-512: 8 x 32 floats (16 zmm accumulators), 8 x 16 doubles. */
#define BP_AVX512 __attribute__((target("avx512f")))
BP_AVX512 static void ukr_avx512_f32(ptrdiff_t kc, const float *Ap, const float *Bp, float *C,
                                     ptrdiff_t ldc, int first)
{
    __m512 c[8][2];
    for (int i = 0; i < 8; i++) c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (ptrdiff_t p = 0; p < kc; p++) {
        const __m512 b0 = _mm512_loadu_ps(Bp + p * 32), b1 = _mm512_loadu_ps(Bp + p * 32 + 16);
        for (int i = 0; i < 8; i++) {
            const __m512 a = _mm512_set1_ps(Ap[p * 8 + i]);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
        }
    }
    for (int i = 0; i < 8; i++) {
        float *ci = C + i * ldc;
        if (!first) {
            c[i][0] = _mm512_add_ps(_mm512_loadu_ps(ci), c[i][0]);
            c[i][1] = _mm512_add_ps(_mm512_loadu_ps(ci + 16), c[i][1]);
        }
        _mm512_storeu_ps(ci, c[i][0]);
        _mm512_storeu_ps(ci + 16, c[i][1]);
    }
}

BP_AVX512 static void ukr_avx512_f64(ptrdiff_t kc, const double *Ap, const double *Bp,
                                     double *C, ptrdiff_t ldc, int first)
{
    __m512d c[8][2];
    for (int i = 0; i < 8; i++) c[i][0] = c[i][1] = _mm512_setzero_pd();
    for (ptrdiff_t p = 0; p < kc; p++) {
        const __m512d b0 = _mm512_loadu_pd(Bp + p * 16), b1 = _mm512_loadu_pd(Bp + p * 16 + 8);
        for (int i = 0; i < 8; i++) {
            const __m512d a = _mm512_set1_pd(Ap[p * 8 + i]);
            c[i][0] = _mm512_fmadd_pd(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_pd(a, b1, c[i][1]);
        }
    }
    for (int i = 0; i < 8; i++) {
        double *ci = C + i * ldc;
        if (!first) {
            c[i][0] = _mm512_add_pd(_mm512_loadu_pd(ci), c[i][0]);
            c[i][1] = _mm512_add_pd(_mm512_loadu_pd(ci + 8), c[i][1]);
        }
        _mm512_storeu_pd(ci, c[i][0]);
        _mm512_storeu_pd(ci + 8, c[i][1]);
    }
}
#endif

/* ------------------------------------------------------------------ dispatch */

struct bp_path {
    const char *name;
    int mr32, nr32, mr64, nr64;
    ukr_f32 k32;
    ukr_f64 k64;
};

static const struct bp_path PATHS[] = {
#if BP_X86
    {"avx512", 8, 32, 8, 16, ukr_avx512_f32, ukr_avx512_f64},
    {"avx2", 6, 16, 6, 8, ukr_avx2_f32, ukr_avx2_f64},
#endif
    {"generic", GEN_MR, GEN_NR, GEN_MR, GEN_NR / 2, ukr_generic_f32, ukr_generic_f64},
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

/* Per-thread packing buffers, grown on demand and kept (OpenMP's worker
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
#define S f32
#define MRF mr32
#define NRF nr32
#define KER k32
#include "bp_gemm_packed_impl.h"
#undef T
#undef S
#undef MRF
#undef NRF
#undef KER

#define T double
#define S f64
#define MRF mr64
#define NRF nr64
#define KER k64
#include "bp_gemm_packed_impl.h"
#undef T
#undef S
#undef MRF
#undef NRF
#undef KER
