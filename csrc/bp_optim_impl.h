/* Template body for bp_optim.c: included once per element type with T (float or
 * double) and S (f32 or f64) defined. */

#define BP_CAT_(a, b) a##_##b
#define BP_CAT(a, b) BP_CAT_(a, b)
#define BP_FN(name) BP_CAT(name, S)

/* Adagrad on a contiguous range: G += g^2; p -= lr g / (sqrt(G) + eps). */
BP_CLONES
void BP_FN(bp_adagrad)(T *restrict p, T *restrict G, const T *restrict g, ptrdiff_t n,
                       double lr, double eps)
{
    const T l = (T)lr, e = (T)eps;
    BP_SIMD for (ptrdiff_t i = 0; i < n; i++) {
        const T gi = g[i], Gi = G[i] + gi * gi;
        G[i] = Gi;
        p[i] -= l * gi / (BP_M(bp_sqrt)(Gi) + e);
    }
}

/* The table rows that n slots touch: slot j (= i w + s) has row id ids[j] and
 * gradient g + (j / w) ld + (j % w) d. Each row's slot gradients are summed, in slot
 * order, into row (d values of scratch), then update(ctx, r, row) gives the row its
 * one step; untouched rows are not read or written. scratch holds 2 n int64 values:
 * the (row, slot) pairs of bp_group_slots. */
typedef void (*BP_FN(row_update))(void *ctx, int64_t r, const T *row);

static void BP_FN(sparse_rows)(ptrdiff_t d, const int64_t *ids, ptrdiff_t n, ptrdiff_t w,
                               const T *g, ptrdiff_t ld, int64_t *scratch, T *row,
                               BP_FN(row_update) update, void *ctx)
{
    if (n <= 0 || d <= 0) return;
    bp_group_slots(ids, n, scratch);
    ptrdiff_t a = 0;
    while (a < n) {
        const int64_t r = scratch[2 * a];
        for (ptrdiff_t k = 0; k < d; k++) row[k] = 0;
        ptrdiff_t b = a;
        for (; b < n && scratch[2 * b] == r; b++) {
            const ptrdiff_t slot = (ptrdiff_t)scratch[2 * b + 1];
            BP_FN(bp_axpy)(d, 1.0, g + (slot / w) * ld + (slot % w) * d, row);
        }
        update(ctx, r, row);
        a = b;
    }
}

struct BP_FN(adagrad_rows) { T *table, *G; ptrdiff_t d; double lr, eps; };

static void BP_FN(adagrad_row)(void *ctx, int64_t r, const T *row)
{
    const struct BP_FN(adagrad_rows) *c = ctx;
    BP_FN(bp_adagrad)(c->table + r * c->d, c->G + r * c->d, row, c->d, c->lr, c->eps);
}

void BP_FN(bp_sparse_adagrad)(T *table, T *G, ptrdiff_t d, const int64_t *ids, ptrdiff_t n,
                              ptrdiff_t w, const T *g, ptrdiff_t ld, int64_t *scratch,
                              T *row, double lr, double eps)
{
    struct BP_FN(adagrad_rows) c = {table, G, d, lr, eps};
    BP_FN(sparse_rows)(d, ids, n, w, g, ld, scratch, row, BP_FN(adagrad_row), &c);
}

/* SGD with momentum on a contiguous range, PyTorch's rule: g' = g + wd p;
 * buf = g' on the first step, else momentum buf + (1 - dampening) g';
 * p -= lr (g' + momentum buf) with Nesterov, lr buf without. buf NULL (no
 * momentum): p -= lr g'. */
BP_CLONES
void BP_FN(bp_sgd_momentum)(T *restrict p, T *restrict buf, const T *restrict g, ptrdiff_t n,
                            double lr, double momentum, double dampening, double wd,
                            int nesterov, int first)
{
    const T l = (T)lr, mu = (T)momentum, keep = (T)(1.0 - dampening), w = (T)wd;
    if (!buf) {
        BP_SIMD for (ptrdiff_t i = 0; i < n; i++) p[i] -= l * (g[i] + w * p[i]);
        return;
    }
    if (first) {
        BP_SIMD for (ptrdiff_t i = 0; i < n; i++) {
            const T gi = g[i] + w * p[i];
            buf[i] = gi;
            p[i] -= l * (nesterov ? gi + mu * gi : gi);
        }
        return;
    }
    BP_SIMD for (ptrdiff_t i = 0; i < n; i++) {
        const T gi = g[i] + w * p[i];
        const T bi = mu * buf[i] + keep * gi;
        buf[i] = bi;
        p[i] -= l * (nesterov ? gi + mu * bi : bi);
    }
}

/* Adam / AdamW on a contiguous range (Kingma and Ba, algorithm 1, in PyTorch's
 * arrangement): with decoupled weight decay (AdamW) p *= 1 - lr wd first, else
 * g' = g + wd p; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
 * p -= step m / (sqrt(v) / sqrt_bc2 + eps), step = lr / (1 - b1^t) and
 * sqrt_bc2 = sqrt(1 - b2^t) computed once per step by the caller. */
BP_CLONES
void BP_FN(bp_adam)(T *restrict p, T *restrict m, T *restrict v, const T *restrict g,
                    ptrdiff_t n, double step, double beta1, double beta2, double eps,
                    double sqrt_bc2, double wd, double decay)
{
    const T st = (T)step, b1 = (T)beta1, c1 = (T)(1.0 - beta1), b2 = (T)beta2,
            c2 = (T)(1.0 - beta2), e = (T)eps, s2 = (T)sqrt_bc2, w = (T)wd, keep = (T)decay;
    BP_SIMD for (ptrdiff_t i = 0; i < n; i++) {
        const T pi = p[i] * keep, gi = g[i] + w * p[i];
        const T mi = b1 * m[i] + c1 * gi, vi = b2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - st * mi / (BP_M(bp_sqrt)(vi) / s2 + e);
    }
}

/* Lazy Adam on the rows the slots touch (as bp_sparse_adagrad gathers them): each
 * touched row's summed gradient gets one bp_adam step on its d values; the moments
 * of untouched rows do not move. */
struct BP_FN(adam_rows) {
    T *table, *m, *v;
    ptrdiff_t d;
    double step, beta1, beta2, eps, sqrt_bc2, wd, decay;
};

static void BP_FN(adam_row)(void *ctx, int64_t r, const T *row)
{
    const struct BP_FN(adam_rows) *c = ctx;
    BP_FN(bp_adam)(c->table + r * c->d, c->m + r * c->d, c->v + r * c->d, row, c->d, c->step,
                   c->beta1, c->beta2, c->eps, c->sqrt_bc2, c->wd, c->decay);
}

void BP_FN(bp_sparse_adam)(T *table, T *m, T *v, ptrdiff_t d, const int64_t *ids, ptrdiff_t n,
                           ptrdiff_t w, const T *g, ptrdiff_t ld, int64_t *scratch,
                           T *row, double step, double beta1, double beta2,
                           double eps, double sqrt_bc2, double wd, double decay)
{
    struct BP_FN(adam_rows) c = {table, m, v, d, step, beta1, beta2, eps, sqrt_bc2, wd, decay};
    BP_FN(sparse_rows)(d, ids, n, w, g, ld, scratch, row, BP_FN(adam_row), &c);
}

#undef BP_FN
#undef BP_CAT
#undef BP_CAT_
