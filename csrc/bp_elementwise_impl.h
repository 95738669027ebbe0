/* Template body for bp_elementwise.c (activations, axpy, bias add, column sums): included once per element type with
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
            out[i] = ((v > -1) & (v < 1)) ? gv : zero;
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

/* y[i] = x[i] * m_i, m_i = scale if element first + i is kept (see bp_drop_hash)
 * and 0 if dropped: inverted dropout's forward, and its backward with the same
 * key (the mask is recomputed, never stored). A NaN stays NaN where dropped, as
 * x * mask does. y may alias x. */
BP_CLONES
void BP_FN(bp_dropout)(const T *x, T *y, ptrdiff_t n, uint64_t first, uint64_t key,
                       uint32_t stream, uint32_t thr, double scale)
{
    uint32_t s1, s2;
    const T keep = (T)scale, zero = (T)0;
    const uint32_t base = (uint32_t)first;
    bp_drop_words(key, stream, &s1, &s2);
    BP_SIMD for (ptrdiff_t i = 0; i < n; i++) {
        const uint32_t h = bp_drop_hash(base + (uint32_t)i, s1, s2);
        y[i] = x[i] * (h >= thr ? keep : zero);
    }
}

/* Layer normalisation of `rows` rows of d values (row i of x at x + i ldx, ...):
 * the mean and the (biased) variance of each row in double, in order;
 * rstd[i] = 1 / sqrt(var + eps) rounded to T; xhat = (x - mean) rstd (from the double
 * values, rounded to T) and y = xhat w + b in T. Rows are independent: any split of
 * the rows between threads gives the same bits. */
BP_CLONES
void BP_FN(bp_layer_norm)(const T *x, ptrdiff_t ldx, const T *w, const T *b, T *y,
                          ptrdiff_t ldy, T *xhat, ptrdiff_t ldh, T *rstd, ptrdiff_t rows,
                          ptrdiff_t d, double eps)
{
    for (ptrdiff_t i = 0; i < rows; i++) {
        const T *xr = x + i * ldx;
        T *yr = y + i * ldy, *hr = xhat + i * ldh;
        double s = 0.0, v = 0.0;
        for (ptrdiff_t j = 0; j < d; j++) s += (double)xr[j];
        const double mu = s / (double)d;
        for (ptrdiff_t j = 0; j < d; j++) {
            const double c = (double)xr[j] - mu;
            v += c * c;
        }
        const double rs = 1.0 / sqrt(v / (double)d + eps);
        rstd[i] = (T)rs;
        for (ptrdiff_t j = 0; j < d; j++) {
            const T h = (T)(((double)xr[j] - mu) * rs);
            hr[j] = h;
            yr[j] = h * w[j] + b[j];
        }
    }
}

/* Its backward for `rows` rows: with gy = g w, in double,
 * dx = rstd (gy - mean(gy) - xhat mean(gy xhat)) (rounded to T; dx NULL: skipped), and
 * gx = g xhat in T (the weight's gradient before its column sums; NULL: skipped). */
BP_CLONES
void BP_FN(bp_layer_norm_bwd)(const T *g, ptrdiff_t ldg, const T *w, const T *xhat,
                              ptrdiff_t ldh, const T *rstd, T *dx, ptrdiff_t ldd, T *gx,
                              ptrdiff_t ldgx, ptrdiff_t rows, ptrdiff_t d)
{
    for (ptrdiff_t i = 0; i < rows; i++) {
        const T *gr = g + i * ldg, *hr = xhat + i * ldh;
        if (dx) {
            double m1 = 0.0, m2 = 0.0;
            for (ptrdiff_t j = 0; j < d; j++) {
                const double gy = (double)gr[j] * (double)w[j];
                m1 += gy;
                m2 += gy * (double)hr[j];
            }
            m1 /= (double)d;
            m2 /= (double)d;
            const double rs = (double)rstd[i];
            T *dr = dx + i * ldd;
            for (ptrdiff_t j = 0; j < d; j++)
                dr[j] = (T)(rs * ((double)gr[j] * (double)w[j] - m1 - (double)hr[j] * m2));
        }
        if (gx) {
            T *xr = gx + i * ldgx;
            for (ptrdiff_t j = 0; j < d; j++) xr[j] = gr[j] * hr[j];
        }
    }
}

#undef BP_FN
#undef BP_CAT
#undef BP_CAT_
