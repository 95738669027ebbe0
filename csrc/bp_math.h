/* Branch-free scalar maths that gcc vectorises inside a loop, in two
 * precisions: name() for double, namef() for float. float32 data is computed
 * in float (16 lanes per AVX-512 register, short polynomials); float64 in
 * double. libm's exp/tanh are scalar calls that stop the vectoriser.
 *
 * exp is only ever needed for arguments <= 0 here (stable sigmoid, tanh via
 * expm1(-2|x|), softmax after subtracting the row max), which removes overflow
 * from the picture; underflow goes through the subnormals to 0 and NaN
 * propagates.
 *
 * Every conditional is written as "compute both values, then select": gcc
 * will not if-convert an arm that does arithmetic (it might trap), and an
 * unvectorised select on random signs is a mispredicted branch.
 */
#ifndef BP_MATH_H
#define BP_MATH_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define BP_INLINE static inline __attribute__((always_inline))
#else
#define BP_INLINE static inline
#endif

BP_INLINE double bp_from_bits(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
BP_INLINE uint64_t bp_to_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
BP_INLINE float bp_from_bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
BP_INLINE uint32_t bp_to_bitsf(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

BP_INLINE double bp_abs(double x) { return bp_from_bits(bp_to_bits(x) & 0x7fffffffffffffffull); }
BP_INLINE float bp_absf(float x) { return bp_from_bitsf(bp_to_bitsf(x) & 0x7fffffffu); }

BP_INLINE double bp_copysign(double mag, double sgn)
{
    return bp_from_bits((bp_to_bits(mag) & 0x7fffffffffffffffull)
                        | (bp_to_bits(sgn) & 0x8000000000000000ull));
}

BP_INLINE float bp_copysignf(float mag, float sgn)
{
    return bp_from_bitsf((bp_to_bitsf(mag) & 0x7fffffffu) | (bp_to_bitsf(sgn) & 0x80000000u));
}

/* sqrt without errno (built with -fno-math-errno): one instruction, vectorisable. */
BP_INLINE double bp_sqrt(double x) { return __builtin_sqrt(x); }
BP_INLINE float bp_sqrtf(float x) { return __builtin_sqrtf(x); }

/* ---------------------------------------------------------------- exp, x <= 0 */

/* double: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, Taylor polynomial
 * to r^13 (truncation < 2e-16 relative), then 2^n built in the exponent bits,
 * in two factors below n = -1000 so that subnormal results come out right. */
BP_INLINE double bp_exp_nonpos(double x)
{
    const double magic = 6755399441055744.0;           /* 1.5 * 2^52: round to int */
    const double ln2_hi = 6.93147180369123816490e-01;  /* low 32 bits zero: n*ln2_hi exact */
    const double ln2_lo = 1.90821492927058770002e-10;
    double xc = x < -745.2 ? -745.2 : x;                /* NaN compares false: kept */
    double t = xc * 1.4426950408889634074 + magic;
    double n = t - magic;
    double r = (xc - n * ln2_hi) - n * ln2_lo;
    double p = 1.0 / 6227020800.0;                      /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int big = n < -1000.0;
    double n600 = n + 600.0;
    double k = big ? n600 : n;
    uint64_t kb = bp_to_bits(k + magic) - bp_to_bits(magic);
    double s = bp_from_bits((kb + 1023u) << 52);
    double res = p * s * (big ? 0x1p-600 : 1.0);
    return x < -745.2 ? 0.0 : res;
}

/* float: the same scheme with Cephes' expf minimax polynomial (~1 ulp). */
BP_INLINE float bp_exp_nonposf(float x)
{
    const float magic = 12582912.0f;                    /* 1.5 * 2^23 */
    float xc = x < -104.0f ? -104.0f : x;
    float t = xc * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int big = n < -125.0f;
    float n64 = n + 64.0f;
    float k = big ? n64 : n;
    uint32_t kb = bp_to_bitsf(k + magic) - bp_to_bitsf(magic);
    float s = bp_from_bitsf((kb + 127u) << 23);
    float res = p * s * (big ? 0x1p-64f : 1.0f);
    return x < -104.0f ? 0.0f : res;
}

/* --------------------------------------------------------------- expm1, x <= 0 */

/* Taylor near 0 (no cancellation), exp(x) - 1 elsewhere. */
BP_INLINE double bp_expm1_nonpos(double x)
{
    double q = 1.0 / 1307674368000.0;                   /* 1/15! */
    q = q * x + 1.0 / 87178291200.0;
    q = q * x + 1.0 / 6227020800.0;
    q = q * x + 1.0 / 479001600.0;
    q = q * x + 1.0 / 39916800.0;
    q = q * x + 1.0 / 3628800.0;
    q = q * x + 1.0 / 362880.0;
    q = q * x + 1.0 / 40320.0;
    q = q * x + 1.0 / 5040.0;
    q = q * x + 1.0 / 720.0;
    q = q * x + 1.0 / 120.0;
    q = q * x + 1.0 / 24.0;
    q = q * x + 1.0 / 6.0;
    q = q * x + 0.5;
    q = q * x + 1.0;
    q = q * x;
    double e = bp_exp_nonpos(x) - 1.0;
    return x > -0.34657359 ? q : e;
}

BP_INLINE float bp_expm1_nonposf(float x)
{
    float q = 1.0f / 362880.0f;                         /* 1/9! */
    q = q * x + 1.0f / 40320.0f;
    q = q * x + 1.0f / 5040.0f;
    q = q * x + 1.0f / 720.0f;
    q = q * x + 1.0f / 120.0f;
    q = q * x + 1.0f / 24.0f;
    q = q * x + 1.0f / 6.0f;
    q = q * x + 0.5f;
    q = q * x + 1.0f;
    q = q * x;
    float e = bp_exp_nonposf(x) - 1.0f;
    return x > -0.34657359f ? q : e;
}

/* ------------------------------------------------------------- activations */

/* 1 / (1 + e^-x) without overflow: e = e^-|x| lies in (0, 1]. */
BP_INLINE double bp_sigmoid(double x)
{
    double e = bp_exp_nonpos(-bp_abs(x));
    double s = 1.0 / (1.0 + e);
    double es = e * s;
    return x >= 0.0 ? s : es;
}

BP_INLINE float bp_sigmoidf(float x)
{
    float e = bp_exp_nonposf(-bp_absf(x));
    float s = 1.0f / (1.0f + e);
    float es = e * s;
    return x >= 0.0f ? s : es;
}

/* tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)), sign restored: accurate near 0. */
BP_INLINE double bp_tanh(double x)
{
    double m = bp_expm1_nonpos(-2.0 * bp_abs(x));
    return bp_copysign(-m / (2.0 + m), x);
}

/* float tanh as one rational function: the 12th convergent of Lambert's continued
 * fraction tanh(x) = x / (1 + x^2 / (3 + x^2 / (5 + ...))), written out as
 * x P(x^2) / Q(x^2) with integer coefficients (scaled by Q's constant term).
 * Every coefficient is positive, so there is no pole; on [0, 9] it is within
 * 6 ulp of tanh in float (checked exhaustively), exact in the limit x -> 0, and
 * beyond 9 tanh rounds to 1. Twelve FMAs and one division, no exp. */
#define BP_TQ0 7905853580625.0
BP_INLINE float bp_tanhf(float x)
{
    float ax = bp_absf(x);
    ax = ax > 9.0f ? 9.0f : ax;                        /* NaN kept */
    float t = ax * ax;
    float p = (float)(1.0 / BP_TQ0);
    p = p * t + (float)(4095.0 / BP_TQ0);
    p = p * t + (float)(2552550.0 / BP_TQ0);
    p = p * t + (float)(523783260.0 / BP_TQ0);
    p = p * t + (float)(41247931725.0 / BP_TQ0);
    p = p * t + (float)(1159525191825.0 / BP_TQ0);
    p = p * t + 1.0f;
    float q = (float)(91.0 / BP_TQ0);
    q = q * t + (float)(120120.0 / BP_TQ0);
    q = q * t + (float)(41351310.0 / BP_TQ0);
    q = q * t + (float)(5237832600.0 / BP_TQ0);
    q = q * t + (float)(252070693875.0 / BP_TQ0);
    q = q * t + (float)(3794809718700.0 / BP_TQ0);
    q = q * t + 1.0f;
    float r = ax * p / q;
    r = r > 1.0f ? 1.0f : r;
    return bp_copysignf(r, x);
}

/* GELU, tanh approximation: 0.5 x (1 + tanh(u)) = x * sigmoid(2u), which keeps
 * the far negative tail accurate (1 + tanh(u) cancels there). Beyond the clamp
 * sigmoid(2u) is exactly 0 or 1 and its slope 0: clamping there keeps x^3 from
 * overflowing into inf * 0 = NaN. NaN passes through the clamp. */
#define BP_GELU_C 0.7978845608028654    /* sqrt(2/pi) */
#define BP_GELU_A 0.044715

BP_INLINE double bp_gelu(double x)
{
    double xc = x > 40.0 ? 40.0 : (x < -40.0 ? -40.0 : x);
    double u = BP_GELU_C * (xc + BP_GELU_A * xc * xc * xc);
    return x * bp_sigmoid(2.0 * u);
}

BP_INLINE double bp_gelu_grad(double x)
{
    x = x > 40.0 ? 40.0 : (x < -40.0 ? -40.0 : x);
    double u = BP_GELU_C * (x + BP_GELU_A * x * x * x);
    double du = BP_GELU_C * (1.0 + 3.0 * BP_GELU_A * x * x);
    double s = bp_sigmoid(2.0 * u);
    return s + 2.0 * x * s * (1.0 - s) * du;
}

BP_INLINE float bp_geluf(float x)
{
    float xc = x > 12.0f ? 12.0f : (x < -12.0f ? -12.0f : x);
    float u = (float)BP_GELU_C * (xc + (float)BP_GELU_A * xc * xc * xc);
    return x * bp_sigmoidf(2.0f * u);
}

BP_INLINE float bp_gelu_gradf(float x)
{
    x = x > 12.0f ? 12.0f : (x < -12.0f ? -12.0f : x);
    float u = (float)BP_GELU_C * (x + (float)BP_GELU_A * x * x * x);
    float du = (float)BP_GELU_C * (1.0f + 3.0f * (float)BP_GELU_A * x * x);
    float s = bp_sigmoidf(2.0f * u);
    return s + 2.0f * x * s * (1.0f - s) * du;
}

#endif
