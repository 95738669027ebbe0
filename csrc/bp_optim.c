#include <math.h>
#include <stdlib.h>
#include "bp_optim.h"
#include "bp_elementwise.h"
#include "bp_math.h"

/* (row id, slot) pairs in increasing order: the slots of each row together, in
 * slot order (as a stable argsort of the ids gives them). */
static int cmp_pair(const void *x, const void *y)
{
    const int64_t *a = (const int64_t *)x, *b = (const int64_t *)y;
    if (a[0] != b[0]) return a[0] < b[0] ? -1 : 1;
    return (a[1] > b[1]) - (a[1] < b[1]);
}

static void sort_slots(const int64_t *ids, ptrdiff_t n, int64_t *pairs)
{
    for (ptrdiff_t j = 0; j < n; j++) {
        pairs[2 * j] = ids[j];
        pairs[2 * j + 1] = j;
    }
    qsort(pairs, (size_t)n, 2 * sizeof(int64_t), cmp_pair);
}

#define T float
#define S f32
#define BP_M(name) name##f
#include "bp_optim_impl.h"
#undef T
#undef S
#undef BP_M

#define T double
#define S f64
#define BP_M(name) name
#include "bp_optim_impl.h"
#undef T
#undef S
#undef BP_M
