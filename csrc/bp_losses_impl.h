/* Template body for bp_losses.c: included once per element type with T (float or
 * double) and S (f32 or f64) defined. Loss values and row sums run in double. */

#define BP_CAT_(a, b) a##_##b
#define BP_CAT(a, b) BP_CAT_(a, b)
#define BP_FN(name) BP_CAT(name, S)

/* Fused softmax cross-entropy over `rows` rows of `cols` logits.
 * d = (softmax(z) - onehot(y)) * scale; returns the sum of the rows' losses
 * log(sum_j exp(z_j - m)) - (z_y - m), m the row max. Rows go in blocks: the
 * shifted logits of a block are written into d, exponentiated in one flat
 * vectorised loop (in T's precision), then each row is normalised; the sums
 * and the loss are accumulated in double. d may be z itself (in place). */
#define BP_SX_BLOCK 64
BP_CLONES
double BP_FN(bp_softmax_xent)(const T *z, const int64_t *restrict y, T *d,
                              ptrdiff_t rows, ptrdiff_t cols, double scale)
{
    double total = 0.0;
    double zy[BP_SX_BLOCK];    /* z_y - m, read before d (which may be z) is written */
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += BP_SX_BLOCK) {
        const ptrdiff_t nb = rows - r0 < BP_SX_BLOCK ? rows - r0 : BP_SX_BLOCK;
        const T *zb = z + r0 * cols;
        T *db = d + r0 * cols;
        for (ptrdiff_t r = 0; r < nb; r++) {
            const T *zr = zb + r * cols;
            T mx = zr[0];
            for (ptrdiff_t j = 1; j < cols; j++) mx = zr[j] > mx ? zr[j] : mx;
            zy[r] = (double)zr[y[r0 + r]] - (double)mx;
            for (ptrdiff_t j = 0; j < cols; j++) db[r * cols + j] = zr[j] - mx;
        }
        const ptrdiff_t ne = nb * cols;
        BP_SIMD for (ptrdiff_t i = 0; i < ne; i++) db[i] = BP_M(bp_exp_nonpos)(db[i]);
        for (ptrdiff_t r = 0; r < nb; r++) {
            T *dr = db + r * cols;
            double sum = 0.0;
            for (ptrdiff_t j = 0; j < cols; j++) sum += (double)dr[j];
            const ptrdiff_t yr = (ptrdiff_t)y[r0 + r];
            total += log(sum) - zy[r];
            const T inv = (T)(scale / sum);
            for (ptrdiff_t j = 0; j < cols; j++) dr[j] *= inv;
            dr[yr] -= (T)scale;
        }
    }
    return total;
}

/* Logistic loss on scores s with targets t in [0, 1]:
 * loss = max(s, 0) - t s + log1p(exp(-|s|)),  d = (sigmoid(s) - t) * scale. */
double BP_FN(bp_sigmoid_bce)(const T *restrict s, const T *restrict t, T *restrict d, ptrdiff_t n,
                             double scale)
{
    double total = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) {
        double v = (double)s[i], ti = (double)t[i];
        double e = bp_exp_nonpos(-bp_abs(v));
        total += (v > 0 ? v : 0.0) - ti * v + log1p(e);
        double sg = v >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        d[i] = (T)((sg - ti) * scale);
    }
    return total;
}

/* The lecture's max-margin (hinge) loss over n (true, corrupt) score pairs: returns
 * the sum of max(0, margin - s + s_c); where the hinge is active ds = -scale and
 * dsc = +scale, elsewhere (the tie margin - s + s_c == 0 included) both are 0. */
double BP_FN(bp_max_margin)(const T *restrict s, const T *restrict sc, T *restrict ds,
                            T *restrict dsc, ptrdiff_t n, double margin, double scale)
{
    double total = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) {
        const double v = margin - (double)s[i] + (double)sc[i];
        if (v > 0) {
            total += v;
            ds[i] = (T)(-scale);
            dsc[i] = (T)scale;
        } else {
            ds[i] = 0;
            dsc[i] = 0;
        }
    }
    return total;
}

#undef BP_FN
#undef BP_CAT
#undef BP_CAT_
