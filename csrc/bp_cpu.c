#include "bp_config.h"
#include "bp_cpu.h"

/* Mirrors the ifunc resolver of BP_CLONES: the first clone whose ISA level the
 * CPU supports is the one that runs. */
const char *bp_simd_path(void)
{
#if BP_HAVE_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
    if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2+FMA)";
    return "x86-64 baseline (SSE2)";
#elif defined(__AVX512F__)
    return "compile-time AVX-512 (-march)";
#elif defined(__AVX2__)
    return "compile-time AVX2 (-march)";
#else
    return "portable C";
#endif
}
