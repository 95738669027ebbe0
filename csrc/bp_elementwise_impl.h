/* Template body for bp_elementwise.c: included once per element type with
 * T (float or double) and S (f32 or f64) defined. Elementwise arithmetic runs in T;
 * long sums (column sums, softmax denominators, losses) run in double. */

#define BP_CAT_(a, b) a##_##b
#define BP_CAT(a, b) BP_CAT_(a, b)
#define BP_FN(name) BP_CAT(name, S)

/* Arithmetic runs in T (float32 in float, float64 in double); BP_M(f) names
 * the math helper of that precision. */
BP_CLONES
void BP_FN(bp_unary_fwd)(int op, const T *x, T *y, ptrdiff_t n, double alpha)
{
    const T a = (T)alpha;
    ptrdiff_t i;
    switch (op) {
    case BP_SIGMOID:
        BP_SIMD for (i = 0; i < n; i++) y[i] = BP_M(bp_sigmoid)(x[i]);
        break;
    case BP_TANH:
        BP_SIMD for (i = 0; i < n; i++) y[i] = BP_M(bp_tanh)(x[i]);
        break;
    case BP_RELU:   /* v < 0 ? 0 : v keeps NaN, as np.maximum(v, 0) does */
        BP_SIMD for (i = 0; i < n; i++) {
            const T v = x[i];
            y[i] = v < 0 ? (T)0 : v;
        }
        break;
    case BP_LEAKY_RELU:
        BP_SIMD for (i = 0; i < n; i++) {
            const T v = x[i], av = a * v;
            y[i] = v > 0 ? v : av;
        }
        break;
    case BP_HARDTANH:
        BP_SIMD for (i = 0; i < n; i++) {
            const T v = x[i];
            y[i] = v > 1 ? (T)1 : (v < -1 ? (T)-1 : v);
        }
        break;
    case BP_GELU:
        BP_SIMD for (i = 0; i < n; i++) y[i] = BP_M(bp_gelu)(x[i]);
        break;
    case BP_SILU:
        BP_SIMD for (i = 0; i < n; i++) {
            const T v = x[i];
            y[i] = v * BP_M(bp_sigmoid)(v);
        }
        break;
    }
}

/* out = g * f'(.), where saved is the forward output for sigmoid and tanh and
 * the forward input for the others. out may alias g. Where f' = 0 the result
 * is 0 * g, so that a NaN gradient stays NaN (as g * mask does in NumPy). */
BP_CLONES
void BP_FN(bp_unary_bwd)(int op, const T *g, const T *saved, T *out, ptrdiff_t n,
                         double alpha)
{
    const T a = (T)alpha;
    ptrdiff_t i;
    switch (op) {
    case BP_SIGMOID:
        BP_SIMD for (i = 0; i < n; i++) {
            const T s = saved[i];
            out[i] = g[i] * (s * ((T)1 - s));
        }
        break;
    case BP_TANH:
        BP_SIMD for (i = 0; i < n; i++) {
            const T h = saved[i];
            out[i] = g[i] * ((T)1 - h * h);
        }
        break;
    case BP_RELU:
        BP_SIMD for (i = 0; i < n; i++) {
            const T gv = g[i], zero = (T)0 * gv;
            out[i] = saved[i] > 0 ? gv : zero;
        }
        break;
    case BP_LEAKY_RELU:
        BP_SIMD for (i = 0; i < n; i++) {
            const T gv = g[i], ag = a * gv;
            out[i] = saved[i] > 0 ? gv : ag;
        }
        break;
    case BP_HARDTANH:
        BP_SIMD for (i = 0; i < n; i++) {
            const T gv = g[i], zero = (T)0 * gv, v = saved[i];
            out[i] = (v > -1) & (v < 1) ? gv : zero;
        }
        break;
    case BP_GELU:
        BP_SIMD for (i = 0; i < n; i++) out[i] = g[i] * BP_M(bp_gelu_grad)(saved[i]);
        break;
    case BP_SILU:
        BP_SIMD for (i = 0; i < n; i++) {
            const T v = saved[i], s = BP_M(bp_sigmoid)(v);
            out[i] = g[i] * (s * ((T)1 + v * ((T)1 - s)));
        }
        break;
    }
}

/* y += alpha * x */
BP_CLONES
void BP_FN(bp_axpy)(ptrdiff_t n, double alpha, const T *x, T *y)
{
    const T a = (T)alpha;
    BP_SIMD for (ptrdiff_t i = 0; i < n; i++) y[i] += a * x[i];
}

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

/* Sparse Adagrad on the table rows that n slots touch: slot j (= i w + s) has row
 * id ids[j] and gradient g + (j / w) ld + (j % w) d. Each row's slot gradients are
 * summed, in slot order, into row (d values of scratch), then the row takes one
 * step; untouched rows are not read or written. scratch holds 2 n int64 values.
 * With head (one int64 per table row, all -1, left so), the slots of each row are
 * chained in O(n); without, they are sorted by (row, slot). */
void BP_FN(bp_sparse_adagrad)(T *table, T *G, ptrdiff_t d, const int64_t *ids, ptrdiff_t n,
                              ptrdiff_t w, const T *g, ptrdiff_t ld, int64_t *scratch,
                              int64_t *head, T *row, double lr, double eps)
{
    if (n <= 0 || d <= 0) return;
    if (head) {
        int64_t *next = scratch, *rows = scratch + n;
        ptrdiff_t nrows = 0;
        for (ptrdiff_t j = n - 1; j >= 0; j--) {    /* chains in increasing slot order */
            const int64_t r = ids[j];
            if (head[r] < 0) rows[nrows++] = r;
            next[j] = head[r];
            head[r] = j;
        }
        for (ptrdiff_t q = 0; q < nrows; q++) {
            const int64_t r = rows[q];
            for (ptrdiff_t k = 0; k < d; k++) row[k] = 0;
            for (int64_t j = head[r]; j >= 0; j = next[j])
                BP_FN(bp_axpy)(d, 1.0, g + (j / w) * ld + (j % w) * d, row);
            BP_FN(bp_adagrad)(table + r * d, G + r * d, row, d, lr, eps);
            head[r] = -1;
        }
        return;
    }
    sort_slots(ids, n, scratch);
    ptrdiff_t a = 0;
    while (a < n) {
        const int64_t r = scratch[2 * a];
        for (ptrdiff_t k = 0; k < d; k++) row[k] = 0;
        ptrdiff_t b = a;
        for (; b < n && scratch[2 * b] == r; b++) {
            const ptrdiff_t slot = (ptrdiff_t)scratch[2 * b + 1];
            BP_FN(bp_axpy)(d, 1.0, g + (slot / w) * ld + (slot % w) * d, row);
        }
        BP_FN(bp_adagrad)(table + r * d, G + r * d, row, d, lr, eps);
        a = b;
    }
}

/* out[r, :] = z[r, :] + b, rows x cols, all contiguous; out may alias z. */
BP_CLONES
void BP_FN(bp_add_bias)(const T *z, const T *restrict b, T *out, ptrdiff_t rows, ptrdiff_t cols)
{
    for (ptrdiff_t r = 0; r < rows; r++) {
        const T *zr = z + r * cols;
        T *o = out + r * cols;
        BP_SIMD for (ptrdiff_t j = 0; j < cols; j++) o[j] = zr[j] + b[j];
    }
}

/* out[j] = sum_r x[r * ld + j] for j < cols, summed in double, rows in order. */
#define BP_COLSUM_BLOCK 256
BP_CLONES
void BP_FN(bp_colsum)(const T *restrict x, T *restrict out, ptrdiff_t rows, ptrdiff_t ld,
                      ptrdiff_t cols)
{
    double acc[BP_COLSUM_BLOCK];
    for (ptrdiff_t j0 = 0; j0 < cols; j0 += BP_COLSUM_BLOCK) {
        ptrdiff_t nb = cols - j0 < BP_COLSUM_BLOCK ? cols - j0 : BP_COLSUM_BLOCK;
        for (ptrdiff_t j = 0; j < nb; j++) acc[j] = 0.0;
        for (ptrdiff_t r = 0; r < rows; r++) {
            const T *xr = x + r * ld + j0;
            BP_SIMD for (ptrdiff_t j = 0; j < nb; j++) acc[j] += (double)xr[j];
        }
        for (ptrdiff_t j = 0; j < nb; j++) out[j0 + j] = (T)acc[j];
    }
}

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

#undef BP_FN
#undef BP_CAT
#undef BP_CAT_
