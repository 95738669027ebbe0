/* Branch-free scalar maths that gcc can vectorise inside a loop.
 *
 * Everything is evaluated in double, for float32 and float64 data alike: one
 * code path, and float32 results are then correctly rounded in practice.
 * libm's exp/tanh are scalar calls that stop the vectoriser, hence these.
 *
 * exp is only ever needed for arguments <= 0 here (stable sigmoid, tanh via
 * expm1(-2|x|), softmax after subtracting the row max), which removes overflow
 * from the picture; underflow to subnormals and to 0 is exact-ish and NaN
 * propagates.
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

BP_INLINE double bp_bits_to_double(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
BP_INLINE uint64_t bp_double_to_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }

/* exp(x) for x <= 0 (or NaN). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2,
 * Taylor polynomial to r^13 (truncation < 2e-16 relative), then 2^n built in
 * the exponent bits, in two factors so that subnormal results come out right. */
BP_INLINE double bp_exp_nonpos(double x)
{
    const double magic = 6755399441055744.0;           /* 1.5 * 2^52: round to int */
    const double log2e = 1.4426950408889634074;
    const double ln2_hi = 6.93147180369123816490e-01;  /* low 32 bits zero: n*ln2_hi exact */
    const double ln2_lo = 1.90821492927058770002e-10;
    double xc = x < -745.2 ? -745.2 : x;                /* NaN compares false: kept */
    double t = xc * log2e + magic;
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
    /* n in [-1075, 0]; below -1000 scale by 2^(n+600) * 2^-600 */
    int big = n < -1000.0;
    double k = big ? n + 600.0 : n;
    uint64_t kb = bp_double_to_bits(k + magic) - bp_double_to_bits(magic);
    double s = bp_bits_to_double((kb + 1023u) << 52);
    double res = p * s * (big ? 0x1p-600 : 1.0);
    return x < -745.2 ? 0.0 : res;
}

/* expm1(x) for x <= 0: Taylor near 0 (no cancellation), exp(x) - 1 elsewhere. */
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

BP_INLINE double bp_fabs(double x) { return bp_bits_to_double(bp_double_to_bits(x) & 0x7fffffffffffffffull); }

BP_INLINE double bp_copysign(double mag, double sgn)
{
    return bp_bits_to_double((bp_double_to_bits(mag) & 0x7fffffffffffffffull)
                             | (bp_double_to_bits(sgn) & 0x8000000000000000ull));
}

/* 1 / (1 + e^-x) without overflow: e = e^-|x| lies in (0, 1]. */
BP_INLINE double bp_sigmoid(double x)
{
    double e = bp_exp_nonpos(-bp_fabs(x));
    double s = 1.0 / (1.0 + e);
    return x >= 0.0 ? s : e * s;
}

/* tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)), sign restored: accurate near 0. */
BP_INLINE double bp_tanh(double x)
{
    double m = bp_expm1_nonpos(-2.0 * bp_fabs(x));
    return bp_copysign(-m / (2.0 + m), x);
}

/* GELU, tanh approximation: 0.5 x (1 + tanh(u)) = x * sigmoid(2u), which keeps
 * the far negative tail accurate (1 + tanh(u) cancels there). */
#define BP_GELU_C 0.7978845608028654    /* sqrt(2/pi) */
#define BP_GELU_A 0.044715

/* Beyond |x| = 40, sigmoid(2u) is 0 or 1 in double and its slope is 0: clamp
 * there so that x^3 cannot overflow into inf * 0 = NaN. NaN passes through. */
BP_INLINE double bp_gelu_clamp(double x) { return x > 40.0 ? 40.0 : (x < -40.0 ? -40.0 : x); }

BP_INLINE double bp_gelu(double x)
{
    double xc = bp_gelu_clamp(x);
    double u = BP_GELU_C * (xc + BP_GELU_A * xc * xc * xc);
    return x * bp_sigmoid(2.0 * u);
}

BP_INLINE double bp_gelu_grad(double x)
{
    x = bp_gelu_clamp(x);
    double u = BP_GELU_C * (x + BP_GELU_A * x * x * x);
    double du = BP_GELU_C * (1.0 + 3.0 * BP_GELU_A * x * x);
    double s = bp_sigmoid(2.0 * u);
    return s + 2.0 * x * s * (1.0 - s) * du;
}

#endif
