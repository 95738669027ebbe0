#include "bp_gemm.h"
#include "bp_math.h"

enum { BP_METHOD_DOT, BP_METHOD_ROWS, BP_METHOD_AXPY, BP_METHOD_DIRECT, BP_METHOD_PACKED };

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
