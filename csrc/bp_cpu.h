/* What the CPU offers and which code path the load-time dispatch selects. */
#ifndef BP_CPU_H
#define BP_CPU_H
const char *bp_simd_path(void);
#endif
