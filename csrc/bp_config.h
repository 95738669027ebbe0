/* Compile-time switches shared by the C helpers. */
#ifndef BP_CONFIG_H
#define BP_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* Function multiversioning: gcc/clang emit one clone per ISA level and pick
 * one at load time (ifunc), so a default build runs on any x86-64 and still
 * uses AVX-512 or AVX2+FMA where the CPU has them. Off with -march=native
 * (already specialised) and off the x86-64 + ELF path. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__ELF__) && !defined(BP_NO_CLONES) \
    && !defined(__AVX512F__)
#define BP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define BP_HAVE_CLONES 1
#else
#define BP_CLONES
#define BP_HAVE_CLONES 0
#endif

#if defined(_OPENMP) || defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 5)
#define BP_PRAGMA(x) _Pragma(#x)
#else
#define BP_PRAGMA(x)
#endif
/* "omp simd" is honoured with -fopenmp-simd (no OpenMP runtime; ignored, harmlessly,
 * without). */
#define BP_SIMD BP_PRAGMA(omp simd)
#define BP_SIMD_SUM(v) BP_PRAGMA(omp simd reduction(+:v))

#endif
