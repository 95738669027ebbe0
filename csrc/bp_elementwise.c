#include <math.h>
#include "bp_elementwise.h"
#include "bp_math.h"

#define T float
#define S f32
#include "bp_elementwise_impl.h"
#undef T
#undef S

#define T double
#define S f64
#include "bp_elementwise_impl.h"
#undef T
#undef S
