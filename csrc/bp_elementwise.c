#include <math.h>
#include <stdlib.h>
#include "bp_elementwise.h"
#include "bp_math.h"

#define T float
#define S f32
#define BP_M(name) name##f
#include "bp_elementwise_impl.h"
#undef T
#undef S
#undef BP_M

#define T double
#define S f64
#define BP_M(name) name
#include "bp_elementwise_impl.h"
#undef T
#undef S
#undef BP_M
