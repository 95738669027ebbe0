#include "bp_gemm.h"
#include "bp_math.h"

#define T float
#define S f32
#include "bp_gemm_impl.h"
#undef T
#undef S

#define T double
#define S f64
#include "bp_gemm_impl.h"
#undef T
#undef S
