#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "bp_optim.h"
#include "bp_elementwise.h"
#include "bp_math.h"

/* The one grouping of a row's updates (eager sparse steps and compiled plans alike):
 * (row id, slot) pairs in increasing order, the slots of each row together, in slot
 * order. A stable LSD radix sort of the slots by id, 8 bits a pass, between
 * pairs[0:n] and pairs[n:2n]; then spread in place, from the end, into the pairs
 * (pair j's two cells lie at or after cell j, so no unread cell is overwritten). */
void bp_group_slots(const int64_t *ids, ptrdiff_t n, int64_t *pairs)
{
    int64_t maxid = 0, *src = pairs, *dst = pairs + n, *tmp;
    ptrdiff_t count[257];
    for (ptrdiff_t j = 0; j < n; j++) {
        src[j] = j;
        if (ids[j] > maxid) maxid = ids[j];
    }
    for (int shift = 0; shift < 64 && (shift == 0 || (maxid >> shift) > 0); shift += 8) {
        memset(count, 0, sizeof count);
        for (ptrdiff_t j = 0; j < n; j++) count[((ids[src[j]] >> shift) & 255) + 1]++;
        for (int b = 0; b < 256; b++) count[b + 1] += count[b];
        for (ptrdiff_t j = 0; j < n; j++) {
            const int64_t slot = src[j];
            dst[count[(ids[slot] >> shift) & 255]++] = slot;
        }
        tmp = src; src = dst; dst = tmp;
    }
    if (src != pairs) memcpy(pairs, src, (size_t)n * sizeof(int64_t));
    for (ptrdiff_t j = n - 1; j >= 0; j--) {
        const int64_t slot = pairs[j];
        pairs[2 * j + 1] = slot;
        pairs[2 * j] = ids[slot];
    }
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
