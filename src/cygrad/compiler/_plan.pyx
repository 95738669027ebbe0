# cython: language_level=3
"""The executor of compiled training steps (cygrad.compile).

A plan is a list of tasks (one per op and direction: a gather, a linear layer's
forward, its bias gradient, its input gradient and weight update, ...), each
over an index space (rows of the batch, columns of a layer, flat elements, or
ownership classes of table rows) cut into chunks fixed by the shape alone.
cygrad.compile groups consecutive tasks that touch the same rows or columns of
what they share into one *group* (chunk c of every task of a group runs on one
thread, in order), and independent groups into one *stage*; a stage is one loop
of the thread pool (cygrad.kernels._parallel) over the chunks of its groups, and the
stages run one after the other: the only synchronisation is where a task reads
what a task of another chunk wrote. The pool claims chunks dynamically and
counts completion by chunks, so a preempted helper never holds the step back;
on one thread a stage's groups run each over their whole range.

Numerics: the same C loops as the kernels (csrc/bp_elementwise, bp_gemm through
cygrad.kernels._gemm). For SGD the loss gradient carries -lr, so that every later
product is an update: W += (-lr Δ)ᵀ X accumulates straight into W, each column
block of W read (for the input gradient) before its owner updates it. Losses are
summed in fixed blocks of LOSS_BLOCK rows and GEMM results do not depend on the
chunking, so a step is bitwise the same for any thread count.
The GIL is released for the whole step; nothing is allocated in it.
"""

import numpy as np
cimport numpy as cnp
from cython cimport floating
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.math cimport sqrt, INFINITY
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from cygrad.kernels._parallel cimport bp_set_flag, parallel_for, pool_threads
from cygrad.kernels._common cimport first_out_of_range, index_into
from cygrad.kernels._crf cimport _Crf, nll_one, nll_one_log
from cygrad.kernels._crf import check_gold, transition_tables
from cygrad.kernels._bags cimport bag_rows

cnp.import_array()

from cygrad.kernels._csrc cimport bp_group_slots
from cygrad.kernels._nogil cimport (split_at, gemm as _gemm, axpy as _axpy, colsum as _colsum,
                             adam as _adam_elems, adagrad as _adagrad, add_bias as _bias, act_fwd as _act_fwd,
                             act_bwd as _act_bwd, softmax_xent, sigmoid_bce,
                             max_margin, dropout as _dropout, weighted_xent, mse as _mse,
                             layer_norm as _ln, layer_norm_bwd as _ln_bwd)


cdef enum:
    MAXV = 8
    MAXSEG = 4
    LOSS_BLOCK = 4
    ROW_BLOCK = 16
    ROW_GRAIN_ = 8      # row chunks start on multiples of it (the compiler's ROW_GRAIN)

# task codes (the compiler reads them from TASK_CODES below: one source)
cdef enum:
    T_GATHER = 0
    T_LINEAR = 1
    T_ACT = 2
    T_XENT = 3
    T_BCE = 4
    T_MARGIN = 5
    T_MEAN = 6
    T_BIAS_BWD = 7
    T_LINEAR_BWD = 8
    T_ACT_BWD = 9
    T_MEAN_BWD = 10
    T_EMB_SGD = 11
    T_EMB_ADAGRAD = 12
    T_UPDATE = 13
    T_BIAS = 14
    T_DROPOUT = 15
    T_EMB_ADAM = 16
    T_MSE = 17
    T_CRF = 18          # the CRF's sentences: forward-backward, gradient of the scores
    T_CRF_DT = 19       # the transitions' gradient (summed in sentence order) and update
    T_BAG = 20          # embedding bags: each window slot the mean of its bag's rows
    T_BAG_SGD = 21      # their table's SGD step, by ownership classes
    T_BAG_ADAGRAD = 22  # Adagrad on the rows the bags touch
    T_BAG_ADAM = 23     # lazy Adam on them
    T_LN = 24           # layer normalisation's rows (keeping xhat and rstd)
    T_LN_BWD = 25       # its input gradient and g xhat (the weight's, before column sums)
    T_LINEAR_WGRAD = 26 # a weight's gradient and update by rows of W (no input gradient)
    T_EMB_GROUP = 27    # an embedding table's slots grouped by row (before its row updates)
    T_EMB_SGD_OWN = 28  # SGD on a table used more than MAXSEG times: by row ownership classes

# index spaces
cdef enum:
    A_ROWS = 0
    A_COLS = 1

# update modes
cdef enum:
    U_NONE = 0
    U_SGD = 1       # p += g, g already carrying -lr
    U_ADAGRAD = 2
    U_SET = 3       # gradient buffer = g (first of several uses)
    U_ADD = 4       # gradient buffer += g
    U_ADAM = 5      # Adam / AdamW with moments m, v; the step's scalars per parameter in Run

#: task name -> code, for the compiler (cygrad.compiler.builder); the one place that
#: pairs a task's name with its code
TASK_CODES = {
    "gather": T_GATHER, "linear": T_LINEAR, "act": T_ACT, "xent": T_XENT, "bce": T_BCE,
    "margin": T_MARGIN, "mean": T_MEAN, "bias_bwd": T_BIAS_BWD, "linear_bwd": T_LINEAR_BWD,
    "act_bwd": T_ACT_BWD, "mean_bwd": T_MEAN_BWD, "emb_sgd": T_EMB_SGD,
    "emb_sgd_own": T_EMB_SGD_OWN,
    "emb_adagrad": T_EMB_ADAGRAD, "update": T_UPDATE, "bias": T_BIAS, "dropout": T_DROPOUT,
    "emb_adam": T_EMB_ADAM, "mse": T_MSE, "crf": T_CRF, "crf_dt": T_CRF_DT, "bag": T_BAG,
    "bag_sgd": T_BAG_SGD, "bag_adagrad": T_BAG_ADAGRAD, "bag_adam": T_BAG_ADAM, "ln": T_LN,
    "ln_bwd": T_LN_BWD, "linear_wgrad": T_LINEAR_WGRAD,
    "emb_group": T_EMB_GROUP}
#: row chunks: multiples of 8 (the GEMM's row groups, LOSS_BLOCK, an embedding update's
#: summed rows: one per ROW_GRAIN rows of the batch)
ROW_GRAIN = ROW_GRAIN_
#: the most uses of one table a slot-grouped update takes
MAX_SEGMENTS = MAXSEG
#: a group's index space that follows a run-time count: the batch's rows, its sentences
DIMS = {"fixed": 0, "rows": 1, "sents": 2}
#: index space name -> axis code
AXES = {"rows": A_ROWS, "cols": A_COLS}
#: update mode name -> code
UPDATE_MODES = {"none": U_NONE, "sgd": U_SGD, "adagrad": U_ADAGRAD, "set": U_SET,
                "add": U_ADD, "adam": U_ADAM}


cdef struct Task:
    int code, axis, mode, act, pidx
    Py_ssize_t m, k, h, w
    double alpha
    int v[MAXV]
    int nseg
    int seg_ids[MAXSEG]
    int seg_g[MAXSEG]
    Py_ssize_t seg_m[MAXSEG]


cdef struct Group:
    int t0, t1
    Py_ssize_t n, align, nchunks, c0
    int dim             # DIMS: n follows the batch's rows (1) or sentences (2) at run time


cdef struct Stage:
    int g0, g1
    Py_ssize_t nchunks


cdef struct Run:
    Task *tasks
    Group *groups
    Stage *stage
    char **ptr
    Py_ssize_t *ld
    double gscale, lr, eps, inv_b
    double b1, b2, wd, decay        # Adam: betas, coupled weight decay, decoupled decay factor
    const double *adam              # Adam: per parameter, lr / (1 - b1^t) and sqrt(1 - b2^t)
    double *losses
    int failed, f32, parts
    _Crf *crf               # the CRF's sentences of this call (T_CRF, T_CRF_DT), or NULL
    double *crf_s           # its scores in float64 (the kernel's own input)
    long long *task_ns      # profiling (set_timing), else NULL: per task and worker slot
    Py_ssize_t sents


cdef inline char *_opt(Run *r, int v) noexcept nogil:
    """The pointer of view v, or NULL for an unused slot (-1)."""
    return r.ptr[v] if v >= 0 else NULL


cdef inline void _update(int mode, floating *p, floating *G, floating *gbuf, floating *g,
                         Py_ssize_t n, Run *r) noexcept nogil:
    """The step for gradient g (n values) of parameter p: SGD (g carries -lr),
    Adagrad with accumulator G, or into / onto the gradient buffer gbuf."""
    if mode == U_SGD:
        _axpy(n, 1.0, g, p)
    elif mode == U_ADAGRAD:
        _adagrad(p, G, g, n, r.lr, r.eps)
    elif mode == U_SET:
        memcpy(gbuf, g, n * sizeof(floating))
    elif mode == U_ADD:
        _axpy(n, 1.0, g, gbuf)


cdef inline void _adam(Task *t, Run *r, floating *p, floating *m, floating *v,
                       const floating *g, Py_ssize_t n) noexcept nogil:
    """Adam's step on n elements of the task's parameter (its scalars: Run.adam)."""
    cdef double alpha = r.adam[2 * t.pidx], c = r.adam[2 * t.pidx + 1]
    _adam_elems(p, m, v, g, n, alpha, r.b1, r.b2, r.eps, c, r.wd, r.decay)


cdef inline void _rows_or_cols_unary(Task *t, Run *r, floating *dummy, Py_ssize_t lo,
                                     Py_ssize_t hi, bint backward) noexcept nogil:
    """An activation (forward: v0 -> v1; backward: v0 = grad, v1 = saved -> v2) over
    rows [lo, hi) or columns [lo, hi) of an m x h block."""
    cdef Py_ssize_t i, i0 = 0, i1 = t.m, j0 = 0, n = t.h
    cdef const floating *a = <const floating *>r.ptr[t.v[0]]
    cdef const floating *s = <const floating *>_opt(r, t.v[1])
    cdef floating *o = <floating *>r.ptr[t.v[2] if backward else t.v[1]]
    cdef Py_ssize_t la = r.ld[t.v[0]], ls = r.ld[t.v[1]] if backward else 0
    cdef Py_ssize_t lo_ = r.ld[t.v[2] if backward else t.v[1]]
    if t.axis == A_ROWS:
        i0, i1 = lo, hi
        if la == n and lo_ == n and (not backward or ls == n):   # one contiguous run
            if backward:
                _act_bwd(t.act, a + i0 * n, s + i0 * n, o + i0 * n, (i1 - i0) * n, t.alpha)
            else:
                _act_fwd(t.act, a + i0 * n, o + i0 * n, (i1 - i0) * n, t.alpha)
            return
    else:
        j0, n = lo, hi - lo
    for i in range(i0, i1):
        if backward:
            _act_bwd(t.act, a + i * la + j0, s + i * ls + j0, o + i * lo_ + j0, n, t.alpha)
        else:
            _act_fwd(t.act, a + i * la + j0, o + i * lo_ + j0, n, t.alpha)


cdef inline void _rows_or_cols_dropout(Task *t, Run *r, floating *dummy, Py_ssize_t lo,
                                       Py_ssize_t hi) noexcept nogil:
    """Dropout (v0 -> v2, key v1, p = alpha, stream k) over rows [lo, hi) or columns [lo, hi) of
    an m x h block; the mask of element (i, j) is that of flat index i h + j."""
    cdef const floating *x = <const floating *>r.ptr[t.v[0]]
    cdef floating *y = <floating *>r.ptr[t.v[2]]
    cdef const cnp.int64_t *kp = <const cnp.int64_t *>r.ptr[t.v[1]]
    cdef cnp.uint64_t key = <cnp.uint64_t>kp[0]
    # a key (key, row) (t.w == 2): the block is rows row, row + 1, ... of a larger batch;
    # flat indices modulo 2**32, as the kernel takes them
    cdef cnp.uint64_t row0 = <cnp.uint64_t>kp[1] if t.w == 2 else 0
    cdef cnp.uint32_t thr = <cnp.uint32_t>(t.alpha * 4294967296.0)
    cdef double scale = 1.0 / (1.0 - t.alpha)
    cdef cnp.uint32_t stream = <cnp.uint32_t>t.k
    cdef Py_ssize_t lx = r.ld[t.v[0]], ly = r.ld[t.v[2]], h = t.h, i
    if t.axis == A_ROWS:
        for i in range(lo, hi):
            _dropout(x + i * lx, y + i * ly, h, (row0 + <cnp.uint64_t>i) * <cnp.uint64_t>h,
                     key, stream, thr, scale)
    else:
        for i in range(t.m):
            _dropout(x + i * lx + lo, y + i * ly + lo, hi - lo,
                     (row0 + <cnp.uint64_t>i) * <cnp.uint64_t>h + <cnp.uint64_t>lo, key, stream,
                     thr, scale)


cdef int _task(Task *t, Run *r, floating *dummy, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Indices [lo, hi) of task t (rows, columns, elements or ownership classes).
    Returns nonzero if a GEMM packing buffer could not be allocated."""
    cdef Py_ssize_t i, j, q, m = t.m, k = t.k, h = t.h, w = t.w, row, K
    cdef Py_ssize_t r0, r1
    cdef int failed = 0, s
    cdef floating *x
    cdef floating *y
    cdef floating *P
    cdef floating *G
    cdef floating *scr
    cdef const cnp.int64_t *ids
    cdef double scale, total, v
    cdef floating fs
    cdef char **ptr = r.ptr
    cdef Py_ssize_t *ld = r.ld
    cdef int code = t.code
    if code == T_GATHER:        # v0 table (V, h), v1 ids (m, w), v2 out rows
        x = <floating *>ptr[t.v[0]]
        ids = <const cnp.int64_t *>ptr[t.v[1]]
        y = <floating *>ptr[t.v[2]]
        for i in range(lo, hi):
            for j in range(w):
                memcpy(y + i * ld[t.v[2]] + j * h, x + ids[i * w + j] * h, h * sizeof(floating))
    elif code == T_LINEAR:      # v0 x (m, k), v1 W (h, k), v2 b (h), v3 z (m, h) = x Wᵀ + b
        x = <floating *>ptr[t.v[0]]
        P = <floating *>ptr[t.v[1]]
        y = <floating *>ptr[t.v[3]]
        if t.axis == A_ROWS:
            failed = _gemm(m, h, lo, hi, 0, h, k, x, 0, ld[t.v[0]], P, 1, k, y, ld[t.v[3]], 0)
            if t.v[2] < 0:      # x @ W.T: no bias
                pass
            elif ld[t.v[3]] == h:
                _bias(y + lo * h, <floating *>ptr[t.v[2]], y + lo * h, hi - lo, h)
            else:
                for i in range(lo, hi):
                    _bias(y + i * ld[t.v[3]], <floating *>ptr[t.v[2]], y + i * ld[t.v[3]], 1, h)
        else:
            failed = _gemm(m, h, 0, m, lo, hi, k, x, 0, ld[t.v[0]], P, 1, k, y, ld[t.v[3]], 0)
            for i in range(m if t.v[2] >= 0 else 0):
                _bias(y + i * ld[t.v[3]] + lo, <floating *>ptr[t.v[2]] + lo,
                      y + i * ld[t.v[3]] + lo, 1, hi - lo)
    elif code == T_ACT:
        _rows_or_cols_unary(t, r, dummy, lo, hi, 0)
    elif code == T_BIAS:        # v0 z (m, h) + v1 b (h,) -> v2, over rows or columns
        x = <floating *>ptr[t.v[0]]
        P = <floating *>ptr[t.v[1]]
        y = <floating *>ptr[t.v[2]]
        if t.axis == A_ROWS:
            for i in range(lo, hi):
                _bias(x + i * ld[t.v[0]], P, y + i * ld[t.v[2]], 1, h)
        else:
            for i in range(m):
                _bias(x + i * ld[t.v[0]] + lo, P + lo, y + i * ld[t.v[2]] + lo, 1, hi - lo)
    elif code == T_ACT_BWD:
        _rows_or_cols_unary(t, r, dummy, lo, hi, 1)
    elif code == T_DROPOUT:
        _rows_or_cols_dropout(t, r, dummy, lo, hi)
    elif code == T_XENT:        # v0 logits (m, h) -> v2 (softmax - onehot) * scale, v1 labels
        x = <floating *>ptr[t.v[0]]
        y = <floating *>ptr[t.v[2]]
        ids = <const cnp.int64_t *>ptr[t.v[1]]
        scale = r.gscale * r.inv_b
        r0 = lo
        while r0 < hi:
            r1 = min(hi, r0 + LOSS_BLOCK)
            if t.v[3] >= 0:     # v3: class weights (float64, C)
                r.losses[r0 // LOSS_BLOCK] = weighted_xent(
                    x + r0 * h, ids + r0, y + r0 * h, r1 - r0, h,
                    <const double *>ptr[t.v[3]], scale)
            else:
                r.losses[r0 // LOSS_BLOCK] = softmax_xent(x + r0 * h, ids + r0, y + r0 * h,
                                                          r1 - r0, h, scale)
            r0 = r1
    elif code == T_CRF:         # sentences [lo, hi): v0 scores (m, h), v2 d scores (m, h)
        x = <floating *>ptr[t.v[0]]
        y = <floating *>ptr[t.v[2]]
        fs = <floating>(r.gscale * r.inv_b)     # as the graph op: the kernel's gradient in
        for i in range(lo, hi):                 # the scores' dtype, times the scale in it
            r0, r1 = r.crf.off[i] * h, r.crf.off[i + 1] * h
            for j in range(r0, r1):
                r.crf_s[j] = <double>x[j]
            if not nll_one(r.crf, i):
                nll_one_log(r.crf, i)
            for j in range(r0, r1):
                y[j] = <floating>r.crf.ds[j] * fs
            r.losses[i] = r.crf.loss[i]
    elif code == T_CRF_DT:      # v0 trans (h = (C + 1)^2), v1 state / gradient buffer,
        P = <floating *>ptr[t.v[0]]     # v2 scratch, v3 Adam's v: the sentences' counts
        scr = <floating *>ptr[t.v[2]]   # summed in sentence order, then the update
        fs = <floating>(r.gscale * r.inv_b)
        for j in range(h):
            v = 0.0
            for i in range(r.sents):
                v += r.crf.dT[i * h + j]
            scr[j] = <floating>v * fs
        if t.mode == U_SET:
            memcpy(<floating *>ptr[t.v[1]], scr, h * sizeof(floating))
        elif t.mode == U_ADAM:
            _adam(t, r, P, <floating *>ptr[t.v[1]], <floating *>ptr[t.v[3]], scr, h)
        else:
            G = <floating *>_opt(r, t.v[1])
            _update(t.mode, P, G, G, scr, h, r)
    elif code == T_MSE:         # v0 pred (m, h), v1 target (m, h) -> v2 2 (pred - target) s
        x = <floating *>ptr[t.v[0]]
        P = <floating *>ptr[t.v[1]]
        y = <floating *>ptr[t.v[2]]
        scale = r.gscale * r.inv_b
        r0 = lo
        while r0 < hi:
            r1 = min(hi, r0 + LOSS_BLOCK)
            r.losses[r0 // LOSS_BLOCK] = _mse(x + r0 * h, P + r0 * h, y + r0 * h,
                                              (r1 - r0) * h, scale)
            r0 = r1
    elif code == T_BCE:         # v0 scores (m,), v1 targets (m,) -> v2 d (m,)
        x = <floating *>ptr[t.v[0]]
        P = <floating *>ptr[t.v[1]]
        y = <floating *>ptr[t.v[2]]
        scale = r.gscale * r.inv_b
        r0 = lo
        while r0 < hi:
            r1 = min(hi, r0 + LOSS_BLOCK)
            r.losses[r0 // LOSS_BLOCK] = sigmoid_bce(x + r0, P + r0, y + r0, r1 - r0, scale)
            r0 = r1
    elif code == T_MARGIN:      # v0 s, v1 s_c -> v2 ds, v3 ds_c; margin alpha
        x = <floating *>ptr[t.v[0]]
        P = <floating *>ptr[t.v[1]]
        y = <floating *>ptr[t.v[2]]
        G = <floating *>ptr[t.v[3]]
        scale = r.gscale * r.inv_b
        r0 = lo
        while r0 < hi:
            r1 = min(hi, r0 + LOSS_BLOCK)
            r.losses[r0 // LOSS_BLOCK] = max_margin(x + r0, P + r0, y + r0, G + r0, r1 - r0,
                                                    t.alpha, scale)
            r0 = r1
    elif code == T_MEAN:        # v0 x (m, w h) -> v1 (m, h): the mean of the w slots
        x = <floating *>ptr[t.v[0]]
        y = <floating *>ptr[t.v[1]]
        for i in range(lo, hi):
            for j in range(h):
                v = 0.0
                for q in range(w):
                    v += <double>x[i * ld[t.v[0]] + q * h + j]
                y[i * ld[t.v[1]] + j] = <floating>(v / w)
    elif code == T_MEAN_BWD:    # v0 g (m, h) -> v1 (m, w h): g / w in every slot
        x = <floating *>ptr[t.v[0]]
        y = <floating *>ptr[t.v[1]]
        for i in range(lo, hi):
            for j in range(h):
                v = <double>(x[i * ld[t.v[0]] + j] / <floating>w)
                for q in range(w):
                    y[i * ld[t.v[1]] + q * h + j] = <floating>v
    elif code == T_BIAS_BWD:    # columns: v0 G (m, h), v1 b, v2 state or gradient buffer, v3 scratch
        G = <floating *>ptr[t.v[0]]
        P = <floating *>ptr[t.v[1]]
        scr = <floating *>ptr[t.v[3]]
        if t.mode == U_SET:
            _colsum(G + lo, <floating *>ptr[t.v[2]] + lo, m, ld[t.v[0]], hi - lo)
        elif t.mode == U_ADAM:      # v2 m, v4 v
            _colsum(G + lo, scr + lo, m, ld[t.v[0]], hi - lo)
            _adam(t, r, P + lo, <floating *>ptr[t.v[2]] + lo, <floating *>ptr[t.v[4]] + lo,
                  scr + lo, hi - lo)
        else:
            _colsum(G + lo, scr + lo, m, ld[t.v[0]], hi - lo)
            G = <floating *>_opt(r, t.v[2])
            _update(t.mode, P + lo, G + lo if G else NULL, G + lo if G else NULL, scr + lo,
                    hi - lo, r)
    elif code == T_LINEAR_BWD:  # columns of x: v0 G (m, h), v1 W (h, k), v2 x (m, k),
        G = <floating *>ptr[t.v[0]]     # v3 dx or -1, v4 state / gradient buffer, v5 scratch (h, k)
        P = <floating *>ptr[t.v[1]]
        x = <floating *>ptr[t.v[2]]
        if t.v[3] >= 0:         # dx = G W, with W's columns before their update
            failed += _gemm(m, k, 0, m, lo, hi, h, G, 0, ld[t.v[0]], P, 0, k,
                            <floating *>ptr[t.v[3]], ld[t.v[3]], 0) != 0
        if t.mode == U_SGD or t.mode == U_SET:
            y = P if t.mode == U_SGD else <floating *>ptr[t.v[4]]
            failed += _gemm(h, k, 0, h, lo, hi, m, G, 1, ld[t.v[0]], x, 0, ld[t.v[2]], y, k,
                            t.mode != U_SET) != 0
        elif t.mode == U_ADD:           # the product into scratch, then onto the buffer
            scr = <floating *>ptr[t.v[5]]
            y = <floating *>ptr[t.v[4]]
            failed += _gemm(h, k, 0, h, lo, hi, m, G, 1, ld[t.v[0]], x, 0, ld[t.v[2]], scr, k,
                            0) != 0
            for i in range(h):
                _axpy(hi - lo, 1.0, scr + i * k + lo, y + i * k + lo)
        elif t.mode == U_ADAGRAD:
            scr = <floating *>ptr[t.v[5]]
            y = <floating *>ptr[t.v[4]]         # the accumulators
            failed += _gemm(h, k, 0, h, lo, hi, m, G, 1, ld[t.v[0]], x, 0, ld[t.v[2]], scr, k,
                            0) != 0
            for i in range(h):
                _adagrad(P + i * k + lo, y + i * k + lo, scr + i * k + lo, hi - lo, r.lr,
                         r.eps)
        elif t.mode == U_ADAM:          # v4 m, v6 v, v5 scratch
            scr = <floating *>ptr[t.v[5]]
            y = <floating *>ptr[t.v[4]]
            G = <floating *>ptr[t.v[6]]
            failed += _gemm(h, k, 0, h, lo, hi, m, <floating *>ptr[t.v[0]], 1, ld[t.v[0]], x, 0,
                            ld[t.v[2]], scr, k, 0) != 0
            for i in range(h):
                _adam(t, r, P + i * k + lo, y + i * k + lo, G + i * k + lo, scr + i * k + lo,
                      hi - lo)
    elif code == T_LINEAR_WGRAD:    # rows of W: v0 G (m, h), v1 W (h, k), v2 x (m, k),
        G = <floating *>ptr[t.v[0]]     # v4 state / gradient buffer, v5 scratch, v6 Adam's v
        P = <floating *>ptr[t.v[1]]
        x = <floating *>ptr[t.v[2]]
        if t.mode == U_SGD or t.mode == U_SET:
            y = P if t.mode == U_SGD else <floating *>ptr[t.v[4]]
            failed += _gemm(h, k, lo, hi, 0, k, m, G, 1, ld[t.v[0]], x, 0, ld[t.v[2]], y, k,
                            t.mode != U_SET) != 0
        else:
            scr = <floating *>ptr[t.v[5]]
            y = <floating *>ptr[t.v[4]]
            failed += _gemm(h, k, lo, hi, 0, k, m, G, 1, ld[t.v[0]], x, 0, ld[t.v[2]], scr, k,
                            0) != 0
            if t.mode == U_ADD:
                _axpy((hi - lo) * k, 1.0, scr + lo * k, y + lo * k)
            elif t.mode == U_ADAGRAD:
                _adagrad(P + lo * k, y + lo * k, scr + lo * k, (hi - lo) * k, r.lr, r.eps)
            else:                       # U_ADAM
                _adam(t, r, P + lo * k, y + lo * k, <floating *>ptr[t.v[6]] + lo * k,
                      scr + lo * k, (hi - lo) * k)
    elif code == T_EMB_SGD:     # chunks of the sorted slots: v0 table, v1 the slots grouped
        _emb_sgd(t, r, dummy, lo, hi)
    elif code == T_EMB_SGD_OWN:     # ownership classes: v0 table (V, h), v1 ids (m, w), v2 g rows
        P = <floating *>ptr[t.v[0]]
        ids = <const cnp.int64_t *>ptr[t.v[1]]
        G = <floating *>ptr[t.v[2]]
        K = t.k                 # the number of classes
        if lo == 0 and hi == K:
            for q in range(m * w):
                _axpy(h, 1.0, G + (q // w) * ld[t.v[2]] + (q % w) * h, P + ids[q] * h)
        else:
            for q in range(m * w):
                row = ids[q]
                if lo <= (row // ROW_BLOCK) % K < hi:
                    _axpy(h, 1.0, G + (q // w) * ld[t.v[2]] + (q % w) * h, P + row * h)
    elif code == T_EMB_GROUP:
        _emb_group(t, r)
    elif code == T_EMB_ADAGRAD or code == T_EMB_ADAM:
        _emb_adagrad(t, r, dummy, lo, hi)
    elif code == T_BAG:         # v0 table (V, h), v1 bag ids (m, w), v2 ptr, v3 items, v4 out
        bag_rows(ptr[t.v[0]], <const cnp.int64_t *>ptr[t.v[1]],
                 <const cnp.int64_t *>ptr[t.v[2]], <const cnp.int64_t *>ptr[t.v[3]],
                 ptr[t.v[4]], ld[t.v[4]], lo, hi, w, h, floating is float)
    elif code == T_BAG_SGD:     # ownership classes: v0 table, v1 bag ids (m, w), v2 g rows,
        _bag_sgd(t, r, dummy, lo, hi)   # v3 ptr, v4 items
    elif code == T_BAG_ADAGRAD or code == T_BAG_ADAM:
        _bag_update(t, r, dummy)
    elif code == T_LN:          # rows: v0 x, v1 weight, v2 bias -> v3 y, v4 xhat, v5 rstd
        _ln(<const floating *>ptr[t.v[0]] + lo * ld[t.v[0]], ld[t.v[0]],
            <const floating *>ptr[t.v[1]], <const floating *>ptr[t.v[2]],
            <floating *>ptr[t.v[3]] + lo * ld[t.v[3]], ld[t.v[3]],
            <floating *>ptr[t.v[4]] + lo * ld[t.v[4]], ld[t.v[4]],
            <floating *>ptr[t.v[5]] + lo * ld[t.v[5]], hi - lo, h, t.alpha)
    elif code == T_LN_BWD:      # rows: v0 g, v1 weight, v2 xhat, v3 rstd -> v4 dx, v5 g xhat
        x = <floating *>_opt(r, t.v[4])
        y = <floating *>_opt(r, t.v[5])
        _ln_bwd(<const floating *>ptr[t.v[0]] + lo * ld[t.v[0]], ld[t.v[0]],
                <const floating *>ptr[t.v[1]],
                <const floating *>ptr[t.v[2]] + lo * ld[t.v[2]], ld[t.v[2]],
                <const floating *>ptr[t.v[3]] + lo * ld[t.v[3]],
                x + lo * ld[t.v[4]] if x != NULL else NULL, ld[t.v[4]] if x != NULL else 0,
                y + lo * ld[t.v[5]] if y != NULL else NULL, ld[t.v[5]] if y != NULL else 0,
                hi - lo, h)
    elif code == T_UPDATE:      # elements: v0 param, v1 gradient buffer, v2 state (v3: Adam's v)
        P = <floating *>ptr[t.v[0]]
        G = <floating *>_opt(r, t.v[2])
        if t.mode == U_ADAM:
            _adam(t, r, P + lo, G + lo, <floating *>ptr[t.v[3]] + lo,
                  <floating *>ptr[t.v[1]] + lo, hi - lo)
            return failed
        _update(t.mode, P + lo, G + lo if G else NULL, P + lo, <floating *>ptr[t.v[1]] + lo,
                hi - lo, r)
    return failed


cdef inline void _row_step(Task *t, Run *r, cnp.int64_t rr, const floating *row,
                           bint adam) noexcept nogil:
    """Table row rr's one step for its summed gradient ``row`` (v0 table, v1 Adagrad's
    accumulator or Adam's m, v4 Adam's v): the embedding and bag updates share it."""
    cdef Py_ssize_t h = t.h
    cdef floating *P = <floating *>r.ptr[t.v[0]] + rr * h
    cdef floating *A = <floating *>r.ptr[t.v[1]] + rr * h
    if adam:
        _adam(t, r, P, A, <floating *>r.ptr[t.v[4]] + rr * h, row, h)
    else:
        _adagrad(P, A, row, h, r.lr, r.eps)


cdef void _emb_group(Task *t, Run *r) noexcept nogil:
    """T_EMB_GROUP: an embedding table's slots (its uses' ids, segments in order) into
    the scratch v0 (3 int64 a slot: the slots' row ids, then their (row, slot) pairs),
    grouped by row as the eager sparse steps group them (bp_group_slots)."""
    cdef cnp.int64_t *ids = <cnp.int64_t *>r.ptr[t.v[0]]
    cdef Py_ssize_t n, total = 0
    cdef int s
    for s in range(t.nseg):
        n = t.seg_m[s] * t.w
        memcpy(ids + total, r.ptr[t.seg_ids[s]], n * sizeof(cnp.int64_t))
        total += n
    bp_group_slots(ids, total, ids + total)


cdef const cnp.int64_t *_chunk_slots(Task *t, Run *r, int v, Py_ssize_t lo, Py_ssize_t hi,
                                     Py_ssize_t *start, Py_ssize_t *a,
                                     Py_ssize_t *e) noexcept nogil:
    """The slots of a table's uses grouped by T_EMB_GROUP into view v: fills start
    (each segment's first slot; start[nseg] the total) and [a, e), the sorted slots of
    the rows whose first slot falls in rows [lo, hi) of the batch's t.m (that share of
    the sorted slots): each row in one chunk, whole. Returns the (row, slot) pairs."""
    cdef Py_ssize_t total, x, y
    cdef int s
    start[0] = 0
    for s in range(t.nseg):
        start[s + 1] = start[s] + t.seg_m[s] * t.w
    total = start[t.nseg]
    cdef const cnp.int64_t *pairs = <const cnp.int64_t *>r.ptr[t.v[v]] + total
    x = lo * total // t.m if t.m > 0 else 0
    y = total if t.m <= 0 or hi >= t.m else hi * total // t.m
    while 0 < x < total and pairs[2 * x] == pairs[2 * x - 2]:     # on to a row's start
        x += 1
    while 0 < y < total and pairs[2 * y] == pairs[2 * y - 2]:
        y += 1
    a[0] = x
    e[0] = y
    return pairs


cdef void _emb_sgd(Task *t, Run *r, floating *dummy, Py_ssize_t lo,
                   Py_ssize_t hi) noexcept nogil:
    """SGD on the table rows (v0) whose first slot lies in the chunk (v1: the slots
    grouped by T_EMB_GROUP): each slot's gradient row, which carries -lr, added into
    its table row in slot order (segments in order), as the ownership classes add
    them (T_EMB_SGD_OWN), balanced by slots however the ids are distributed."""
    cdef Py_ssize_t h = t.h, w = t.w, j, q, a, e
    cdef Py_ssize_t start[MAXSEG + 1]
    cdef int s
    cdef floating *P = <floating *>r.ptr[t.v[0]]
    cdef const cnp.int64_t *pairs = _chunk_slots(t, r, 1, lo, hi, start, &a, &e)
    s = 0
    for j in range(a, e):
        if j > a and pairs[2 * j] != pairs[2 * j - 2]:
            s = 0
        q = pairs[2 * j + 1]
        while q >= start[s + 1]:
            s += 1
        q -= start[s]
        _axpy(h, 1.0, <const floating *>r.ptr[t.seg_g[s]] + (q // w) * r.ld[t.seg_g[s]] +
              (q % w) * h, P + pairs[2 * j] * h)


cdef void _emb_adagrad(Task *t, Run *r, floating *dummy, Py_ssize_t lo,
                       Py_ssize_t hi) noexcept nogil:
    """Adagrad (T_EMB_ADAGRAD) or lazy Adam (T_EMB_ADAM) on the table rows the
    segments' slots touch (v0 table, v1 accumulator or Adam's m, v2 the slots grouped
    by T_EMB_GROUP, v4 Adam's v): each row's slot gradients summed in slot order
    (segments in order), one step. Rows [lo, hi) of the batch's t.m stand for the
    same share of the sorted slots; the chunk steps the rows whose first slot lies in
    it, each whole, so a row's bits do not depend on the chunking. A row is summed in
    the chunk's own rows of v3 (the chunk starting at row lo owns rows lo / ROW_GRAIN_
    of it; two rows for dense gradients: each use's slots summed on their own, then
    the uses added in order, as eager adds the uses' dense gradients)."""
    cdef Py_ssize_t h = t.h, w = t.w, j, q, a, b, e, kk
    cdef floating *row = <floating *>r.ptr[t.v[3]] + (lo // ROW_GRAIN_) * (t.k + 1) * h
    cdef floating *part = row + h if t.k == 1 else row
    cdef const floating *g
    cdef cnp.int64_t rr
    cdef int s, cur
    cdef bint adam = t.code == T_EMB_ADAM
    cdef Py_ssize_t start[MAXSEG + 1]
    cdef const cnp.int64_t *pairs = _chunk_slots(t, r, 2, lo, hi, start, &a, &e)
    while a < e:
        rr = pairs[2 * a]
        b = a
        while b < e and pairs[2 * b] == rr:         # the row's slots, in increasing order
            b += 1
        for kk in range(h):
            row[kk] = 0
        s = 0
        cur = -1
        for j in range(a, b):
            q = pairs[2 * j + 1]
            while q >= start[s + 1]:
                s += 1
            if t.k == 1 and s != cur:
                if cur >= 0:
                    _axpy(h, 1.0, part, row)
                for kk in range(h):
                    part[kk] = 0
                cur = s
            q -= start[s]
            g = <const floating *>r.ptr[t.seg_g[s]] + (q // w) * r.ld[t.seg_g[s]] + (q % w) * h
            _axpy(h, 1.0, g, part)
        if t.k == 1 and cur >= 0:
            _axpy(h, 1.0, part, row)
        _row_step(t, r, rr, row, adam)
        a = b


cdef inline floating _bag_scale(const cnp.int64_t *bp, cnp.int64_t bag,
                                floating *dummy) noexcept nogil:
    """1 / the bag's size in the gradient's dtype (as the graph op's backward)."""
    cdef cnp.int64_t n = bp[bag + 1] - bp[bag]
    return <floating>(1.0 / n) if n > 0 else 0


cdef void _bag_sgd(Task *t, Run *r, floating *dummy, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """SGD on a bag table's rows owned by classes [lo, hi) of t.k: every item of slot
    q's bag gets the slot's gradient (carrying -lr) over the bag's size, slots in
    order, items in order."""
    cdef floating *P = <floating *>r.ptr[t.v[0]]
    cdef const cnp.int64_t *ids = <const cnp.int64_t *>r.ptr[t.v[1]]
    cdef const cnp.int64_t *bp = <const cnp.int64_t *>r.ptr[t.v[3]]
    cdef const cnp.int64_t *items = <const cnp.int64_t *>r.ptr[t.v[4]]
    cdef Py_ssize_t h = t.h, w = t.w, q, a, kk, lg = r.ld[t.v[2]]
    cdef cnp.int64_t row
    cdef floating sc
    cdef const floating *g
    cdef bint every = lo == 0 and hi == t.k
    for q in range(t.m * w):
        sc = _bag_scale(bp, ids[q], dummy)
        g = <const floating *>r.ptr[t.v[2]] + (q // w) * lg + (q % w) * h
        for a in range(bp[ids[q]], bp[ids[q] + 1]):
            row = items[a]
            if every or lo <= (row // ROW_BLOCK) % t.k < hi:
                for kk in range(h):
                    P[row * h + kk] = P[row * h + kk] + <floating>(g[kk] * sc)


cdef void _bag_update(Task *t, Run *r, floating *dummy) noexcept nogil:
    """Adagrad (T_BAG_ADAGRAD) or lazy Adam (T_BAG_ADAM) on the rows a bag table's
    segments touch (v0 table, v1 accumulator or Adam's m, v2 scratch (4 t.k int64:
    each (slot, item) pair's row, its slot, then the (row, pair) pairs), v3 one row,
    v4 Adam's v, v5 ptr, v6 items): each row's pairs summed in order (segments, slots,
    items), each the slot's gradient over its bag's size in the gradient's dtype, as
    the graph op's row-sparse gradient is summed; grouped by bp_group_slots."""
    cdef cnp.int64_t *item_row = <cnp.int64_t *>r.ptr[t.v[2]]
    cdef cnp.int64_t *slot = item_row + t.k
    cdef cnp.int64_t *pairs = slot + t.k
    cdef floating *row = <floating *>r.ptr[t.v[3]]
    cdef const cnp.int64_t *bp = <const cnp.int64_t *>r.ptr[t.v[5]]
    cdef const cnp.int64_t *items = <const cnp.int64_t *>r.ptr[t.v[6]]
    cdef const cnp.int64_t *ids
    cdef Py_ssize_t h = t.h, w = t.w, total = 0, q, a, b, kk, sl
    cdef cnp.int64_t rr, e
    cdef int s
    cdef floating sc
    cdef const floating *g
    cdef Py_ssize_t start[MAXSEG + 1]
    start[0] = 0
    for s in range(t.nseg):     # the pairs in order: segments, slots, items
        start[s + 1] = start[s] + t.seg_m[s] * w
        ids = <const cnp.int64_t *>r.ptr[t.seg_ids[s]]
        for q in range(t.seg_m[s] * w):
            for e in range(bp[ids[q]], bp[ids[q] + 1]):
                item_row[total] = items[e]
                slot[total] = start[s] + q
                total += 1
    bp_group_slots(item_row, total, pairs)
    a = 0
    while a < total:
        rr = pairs[2 * a]
        for kk in range(h):
            row[kk] = 0
        s = 0
        b = a
        while b < total and pairs[2 * b] == rr:     # the row's pairs, in increasing order
            sl = slot[pairs[2 * b + 1]]
            while sl >= start[s + 1]:
                s += 1
            q = sl - start[s]
            ids = <const cnp.int64_t *>r.ptr[t.seg_ids[s]]
            sc = _bag_scale(bp, ids[q], dummy)
            g = <const floating *>r.ptr[t.seg_g[s]] + (q // w) * r.ld[t.seg_g[s]] + (q % w) * h
            for kk in range(h):
                row[kk] = row[kk] + <floating>(g[kk] * sc)
            b += 1
        _row_step(t, r, rr, row, t.code == T_BAG_ADAM)
        a = b


cdef bint _timing = False      # set_timing(): each plan adds up its stages' wall times
cdef enum:
    TIME_SLOTS = 16             # per task: one CPU-time slot per worker (the last shared)


def set_timing(bint on):
    """Record every plan's wall time per stage and its threads' time per task
    (Plan.stage_times) from now on (profiling: benches/profile_step.py); off by
    default."""
    global _timing
    _timing = on


cdef inline long long _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef void _stage_chunks(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """Chunks [lo, hi) of the current stage: for each group they cover, each task
    of the group over the chunks' whole index range, in order."""
    cdef Run *r = <Run *>ctx
    cdef Stage *st = r.stage
    cdef Group *g
    cdef Py_ssize_t a, b, elo, ehi
    cdef int gi, ti
    cdef bint f32 = r.f32
    cdef long long t0 = 0
    for gi in range(st.g0, st.g1):
        g = &r.groups[gi]
        a = max(lo, g.c0)
        b = min(hi, g.c0 + g.nchunks)
        if a >= b:
            continue
        elo = split_at(g.n, g.nchunks, a - g.c0, g.align)
        ehi = split_at(g.n, g.nchunks, b - g.c0, g.align)
        if elo >= ehi:
            continue
        for ti in range(g.t0, g.t1):
            if r.task_ns != NULL:
                t0 = _now_ns()
            if f32:
                if _task[float](&r.tasks[ti], r, <float *>NULL, elo, ehi):
                    bp_set_flag(&r.failed)
            else:
                if _task[double](&r.tasks[ti], r, <double *>NULL, elo, ehi):
                    bp_set_flag(&r.failed)
            if r.task_ns != NULL:
                r.task_ns[ti * TIME_SLOTS + min(worker, TIME_SLOTS - 1)] += _now_ns() - t0


cdef int _execute(Run *r, Stage *stages, int nstages, int nt,
                  long long *times) noexcept nogil:
    """The stages in order; each group in at most r.parts chunks per thread (one
    chunk, the whole range, on one thread). Chunk results do not depend on the
    chunking, so neither does the step. ``times`` (or NULL): each stage's wall
    time is added to times[stage]."""
    cdef int s, gi
    cdef Py_ssize_t c0, units, nch
    cdef Group *g
    cdef long long t0 = 0, t1
    if times != NULL:
        t0 = _now_ns()
    for s in range(nstages):
        c0 = 0
        for gi in range(stages[s].g0, stages[s].g1):
            g = &r.groups[gi]
            units = (g.n + g.align - 1) // g.align
            nch = min(units, <Py_ssize_t>r.parts * nt)
            g.nchunks = max(1, nch)
            g.c0 = c0
            c0 += g.nchunks
        stages[s].nchunks = c0
        r.stage = &stages[s]
        parallel_for(_stage_chunks, r, c0, 1, nt)
        if times != NULL:
            t1 = _now_ns()
            times[s] += t1 - t0
            t0 = t1
    return r.failed


cdef class Plan:
    """A compiled step's tasks, groups and stages, and the views they read and
    write. Built by cygrad.compile (which validates everything it puts here);
    ``execute`` runs it on resolved base pointers."""

    cdef Task *tasks
    cdef Group *groups
    cdef Stage *stages
    cdef int ntasks, ngroups, nstages
    cdef Py_ssize_t nviews
    cdef Py_ssize_t *vbuf
    cdef Py_ssize_t *voff
    cdef Py_ssize_t *vld
    cdef char **vptr
    cdef char **bases
    cdef Py_ssize_t nbufs
    cdef readonly bint f32
    cdef readonly Py_ssize_t batch      # the rows the plan was built for: its capacity
    cdef Py_ssize_t cur_rows            # the rows the tables now say (<= batch)
    cdef Py_ssize_t cur_sents           # the sentences they say (CRF plans)
    cdef long long *times               # set_timing: per stage, wall ns; then per task
    cdef Py_ssize_t ntimes              # and worker slot, thread ns
    cdef readonly long long timed_runs  # runs timed since the last stage_times()

    def __cinit__(self):
        self.tasks = NULL
        self.groups = NULL
        self.stages = NULL
        self.vbuf = self.voff = self.vld = NULL
        self.vptr = self.bases = NULL
        self.times = NULL

    def __dealloc__(self):
        free(self.tasks)
        free(self.groups)
        free(self.stages)
        free(self.vbuf)
        free(self.voff)
        free(self.vld)
        free(self.vptr)
        free(self.bases)
        free(self.times)

    def __init__(self, tasks, groups, stages, views, nbufs, f32, batch):
        """tasks: dicts with the Task fields (code, axis, mode, act, m, k, h, w,
        alpha, v, segs); groups: (t0, t1, n, grain); stages:
        (g0, g1); views: (buffer, offset in bytes, leading dimension). A group
        (t0, t1, n, align) is cut at run time into near-equal chunks on multiples
        of align, at most `parts` per thread."""
        cdef int i, j
        cdef Task *t
        self.ntasks, self.ngroups, self.nstages = len(tasks), len(groups), len(stages)
        self.nviews, self.nbufs = len(views), nbufs
        self.f32, self.batch = f32, batch
        self.cur_rows, self.cur_sents = batch, -1
        self.tasks = <Task *>malloc(max(1, self.ntasks) * sizeof(Task))
        self.groups = <Group *>malloc(max(1, self.ngroups) * sizeof(Group))
        self.stages = <Stage *>malloc(max(1, self.nstages) * sizeof(Stage))
        self.vbuf = <Py_ssize_t *>malloc(max(1, self.nviews) * sizeof(Py_ssize_t))
        self.voff = <Py_ssize_t *>malloc(max(1, self.nviews) * sizeof(Py_ssize_t))
        self.vld = <Py_ssize_t *>malloc(max(1, self.nviews) * sizeof(Py_ssize_t))
        self.vptr = <char **>malloc(max(1, self.nviews) * sizeof(char *))
        self.bases = <char **>malloc(max(1, nbufs) * sizeof(char *))
        self.ntimes = self.nstages + self.ntasks * TIME_SLOTS
        self.times = <long long *>malloc(max(1, self.ntimes) * sizeof(long long))
        if not (self.tasks and self.groups and self.stages and self.vbuf and self.voff
                and self.vld and self.vptr and self.bases and self.times):
            raise MemoryError("compile: cannot allocate the plan")
        for i, d in enumerate(tasks):
            t = &self.tasks[i]
            memset(t, 0, sizeof(Task))
            t.code, t.axis, t.mode, t.act = d["code"], d["axis"], d["mode"], d["act"]
            t.m, t.k, t.h, t.w, t.alpha = d["m"], d["k"], d["h"], d["w"], d["alpha"]
            t.pidx = d["pidx"]
            vs = list(d["v"]) + [-1] * (MAXV - len(d["v"]))
            for j in range(MAXV):
                t.v[j] = vs[j]
            segs = d["segs"]
            if len(segs) > MAXSEG:
                raise ValueError(f"compile: at most {MAXSEG} uses of one embedding table")
            t.nseg = len(segs)
            for j, (ids, g, m) in enumerate(segs):
                t.seg_ids[j], t.seg_g[j], t.seg_m[j] = ids, g, m
        for i, (t0, t1, n, align, dim) in enumerate(groups):
            self.groups[i].t0, self.groups[i].t1 = t0, t1
            self.groups[i].n, self.groups[i].align = n, align
            self.groups[i].dim = dim
            self.groups[i].nchunks = self.groups[i].c0 = 0
        for i, (g0, g1) in enumerate(stages):
            self.stages[i].g0, self.stages[i].g1 = g0, g1
            self.stages[i].nchunks = 0
        for i, (b, off, ld) in enumerate(views):
            self.vbuf[i], self.voff[i], self.vld[i] = b, off, ld
        memset(self.times, 0, max(1, self.ntimes) * sizeof(long long))
        self.timed_runs = 0

    def stage_times(self, bint reset=True):
        """Over the runs timed since the last reset (set_timing(True) turns timing
        on): the wall seconds of each stage, the thread seconds of each task (summed
        over the threads that ran its chunks), and the number of runs."""
        cdef Py_ssize_t i, j
        stages = np.array([self.times[i] * 1e-9 for i in range(self.nstages)], np.float64)
        tasks = np.zeros(self.ntasks, np.float64)
        for i in range(self.ntasks):
            for j in range(TIME_SLOTS):
                tasks[i] += self.times[self.nstages + i * TIME_SLOTS + j] * 1e-9
        runs = self.timed_runs
        if reset:
            memset(self.times, 0, max(1, self.ntimes) * sizeof(long long))
            self.timed_runs = 0
        return stages, tasks, runs

    cdef void _set_rows(self, Py_ssize_t rows, Py_ssize_t sents) noexcept:
        """Point every batch dimension of the tables at ``rows`` (<= the capacity):
        every task's row count (a task's m is the batch's rows wherever it is set),
        its segments', and the row spaces of the groups; sentence spaces at
        ``sents``."""
        cdef Py_ssize_t i, j
        cdef Task *t
        for i in range(self.ntasks):
            t = &self.tasks[i]
            if t.m > 0:
                t.m = rows
            for j in range(t.nseg):
                t.seg_m[j] = rows
        for i in range(self.ngroups):
            if self.groups[i].dim == 1:
                self.groups[i].n = rows
            elif self.groups[i].dim == 2:
                self.groups[i].n = sents
        self.cur_rows, self.cur_sents = rows, sents

    cdef double _run(self, list arrays, double gscale, double lr, double eps, losses, int nt,
                     int parts, double div, adam=None, Py_ssize_t rows=-1,
                     _Crf *crf=NULL, double *crf_s=NULL, Py_ssize_t sents=-1) except? -1.0:
        """Run the plan: ``arrays[i]`` is buffer i (an ndarray, validated by the
        caller and not changed during the call); the loss's gradient carries 1/div;
        ``rows`` (default: the capacity) the batch's rows; returns the sum of the loss
        blocks (the caller divides it by div)."""
        cdef Py_ssize_t i, nb
        if rows < 0:
            rows = self.batch
        if rows != self.cur_rows or sents != self.cur_sents:
            self._set_rows(rows, sents)
        cdef Run r
        if len(arrays) != self.nbufs:
            raise ValueError("compile: wrong number of buffers")
        for i in range(self.nbufs):
            self.bases[i] = <char *>cnp.PyArray_DATA(<cnp.ndarray>arrays[i])
        for i in range(self.nviews):
            self.vptr[i] = self.bases[self.vbuf[i]] + self.voff[i]
        r.tasks, r.groups, r.ptr, r.ld = self.tasks, self.groups, self.vptr, self.vld
        r.gscale, r.lr, r.eps = gscale, lr, eps
        r.adam = NULL
        if adam is not None:        # (scalars array float64 (2 * params,), b1, b2, wd, decay)
            r.adam = <const double *>cnp.PyArray_DATA(<cnp.ndarray>adam[0])
            r.b1, r.b2, r.wd, r.decay = adam[1], adam[2], adam[3], adam[4]
        r.inv_b = 1.0 / div
        r.f32 = self.f32
        r.losses = <double *>cnp.PyArray_DATA(<cnp.ndarray>losses)
        r.failed = 0
        r.parts = max(1, parts)
        r.crf, r.crf_s, r.sents = crf, crf_s, sents
        cdef long long *times = NULL
        r.task_ns = NULL
        if _timing:
            times = self.times
            r.task_ns = self.times + self.nstages
            self.timed_runs += 1
        with nogil:
            # 1 while the pool runs loops on their callers (helpers do not pay): then
            # every group is one chunk, its whole range, as on one thread
            nt = pool_threads(nt) if nt > 1 else 1
            _execute(&r, self.stages, self.nstages, nt, times)
        if r.failed:
            raise MemoryError("compiled step: could not allocate the GEMM packing buffers")
        cdef double total = 0.0
        nb = sents if crf != NULL else (rows + LOSS_BLOCK - 1) // LOSS_BLOCK
        for i in range(nb):
            total += r.losses[i]
        return total


from cygrad import _config
from cygrad.graph._guard import written as _written


cdef Py_ssize_t _outside_unit(floating *t, Py_ssize_t n) noexcept nogil:
    """The first i with t[i] outside [0, 1] or NaN, else -1."""
    cdef Py_ssize_t i
    for i in range(n):
        if not (t[i] >= 0 and t[i] <= 1):
            return i
    return -1


cdef bint _overlaps(cnp.ndarray x, cnp.int64_t[:, ::1] spans):
    """Whether x's bytes overlap one of the byte ranges [lo, hi) in spans."""
    cdef cnp.int64_t lo = <cnp.int64_t>cnp.PyArray_DATA(x)
    cdef cnp.int64_t hi = lo + cnp.PyArray_NBYTES(x)
    cdef Py_ssize_t i
    for i in range(spans.shape[0]):
        if lo < spans[i, 1] and spans[i, 0] < hi:
            return True
    return False


cdef class Runner:
    """The per-call path of a compiled plan (cygrad.compiler.runtime.BoundPlan builds it and
    keeps the slow paths): copy and check the index arguments into the workspace,
    place the float ones, check by identity that the parameters' and the optimiser
    state's arrays are those the plan was bound to (else ``owner._refresh_ext()``),
    read the learning rate, resolve the threads and run."""

    cdef Plan plan
    cdef object owner, opt, losses, step, dtype
    cdef list arrays, ids, floats, targets, watch, watch_state
    cdef bint adagrad, gradmode, adam, f32, decoupled
    cdef list adam_params
    cdef object adam_scalars
    # guards (cygrad.compiler.runtime.BoundPlan.stale says what changed when one fails)
    cdef object g_type, g_form_fn, g_form, g_version_cell, g_opt_version
    cdef list g_params, g_requires
    cdef public Py_ssize_t g_version
    cdef Py_ssize_t work, min_work, batch
    cdef double div_per_row         # a mean's divisor per row; 0: a sum; -1: weighted
    cdef object crf                 # the CRF loss's arrays (cygrad.compiler.runtime.CrfArrays)
    cdef object xent_weights        # softmax_cross_entropy's class weights (float64), or None
    cdef _Crf kcrf
    cdef object xent_w              # weighted mean: (weights float64 (C,), labels' offset)
    cdef object arena
    cdef char *base

    def __init__(self, owner):
        self.owner = owner
        self.plan = owner.plan
        self.opt = owner.opt
        self.step = owner.step
        self.losses = owner.losses
        self.arrays = owner.arrays
        self.adagrad = owner.opt_kind == "adagrad"
        self.gradmode = owner.opt_kind == "grad"    # gradients only: the optimiser runs after
        self.adam = owner.opt_kind == "adam"
        self.adam_params = owner.adam_params
        self.adam_scalars = owner.adam_scalars
        self.f32 = owner.f32
        self.dtype = owner.dtype
        self.decoupled = owner.decoupled
        self.work = owner.work
        self.min_work = owner.min_work
        self.batch = owner.batch
        self.div_per_row = owner.div_per_row
        self.xent_w = owner.xent_w
        self.crf = owner.crf
        self.xent_weights = owner.xent_weights
        # (argument, byte offset in the workspace, elements, bound, op, name, shape,
        # elements per row of the batch or 0: not the batch's rows)
        self.ids = [(j, where[0], int(np.prod(where[1])), bound, op, name, where[1],
                     int(np.prod(where[1][1:])) if j in owner.row_args else 0)
                    for j, kind, where, bound, op, name in owner.inputs if kind == "ids"]
        self.floats = [(j, where) for j, kind, where, bound, op, name in owner.inputs
                       if kind == "float"]
        self.targets = [(j, where, name, kind == "target")
                        for j, kind, where, bound, op, name in owner.inputs
                        if kind in ("target", "value")]
        self.watch = owner.watch
        self.watch_state = owner.watch_state
        self.arena = None
        self.g_type = owner.g_type
        self.g_params = owner.g_params
        self.g_requires = owner.g_requires
        self.g_form_fn = owner.g_form_fn
        self.g_form = owner.g_form
        self.g_opt_version = None
        self.g_version_cell = owner.g_version_cell
        self.g_version = owner.g_version

    cdef bint _guards_hold(self):
        """The guards' fast path: identities and a few comparisons, no allocation."""
        opt = self.opt
        if type(opt) is not self.g_type:
            return False
        cdef list ps = opt.params
        cdef list want = self.g_params, req = self.g_requires
        cdef Py_ssize_t i, n = len(want)
        if len(ps) != n:
            return False
        for i in range(n):
            p = ps[i]
            if p is not want[i] or p.requires_grad is not req[i]:
                return False
        if self.g_form_fn is not None:
            # cygrad's optimisers count their assignments: ask fused_update() only when
            # one happened since it last gave the plan's answer
            v = getattr(opt, "_version", None)
            if v is None or v != self.g_opt_version:
                if self.g_form_fn() != self.g_form:
                    return False
                self.g_opt_version = v
        if self.g_version_cell is not None and self.g_version_cell[0] != self.g_version:
            return False
        return True

    cdef _bind(self):
        self.owner._bind_arena()
        self.arena = self.step._arena
        self.base = <char *>cnp.PyArray_DATA(<cnp.ndarray>self.arena)

    cdef Py_ssize_t _crf_setup(self, tuple args, Py_ssize_t rows) except -1:
        """The CRF loss's per-call part, before anything runs: the sentence lengths
        checked (each >= 1, summing to the rows) into offsets; the gold paths checked
        against the allowed transitions; the transitions' kernel tables from the
        parameter as it is now (exp(T - max), -inf where forbidden). As
        cygrad.kernels.crf_nll does for each call."""
        c = self.crf
        lengths = args[c.lengths_arg]
        fn = "crf_nll"
        if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
            raise TypeError(f"{fn}: lengths must be a 1-D integer array, got "
                            f"{lengths.dtype} {lengths.shape}")
        cdef Py_ssize_t S = lengths.shape[0]
        if S > c.capacity:      # (the caller's shape checks keep it within)
            raise ValueError(f"{fn}: {S} sentences, the plan holds {c.capacity}")
        if S and lengths.min() < 1:
            bad = int(np.flatnonzero(lengths < 1)[0])
            raise ValueError(f"{fn}: lengths[{bad}] = {lengths[bad]}: every sentence needs "
                             f"at least one token (nothing was updated)")
        if S and lengths.max() > rows:     # (each at most the rows: the sum cannot wrap)
            bad = int(np.argmax(lengths))
            raise ValueError(f"{fn}: lengths[{bad}] = {lengths[bad]} is more than the "
                             f"{rows} rows of scores (nothing was updated)")
        total = int(lengths.sum())
        if total != rows:
            raise ValueError(f"{fn}: lengths sum to {total} but scores has {rows} rows "
                             f"(nothing was updated)")
        off = c.off
        off[0] = 0
        np.cumsum(lengths, out=off[1:S + 1])
        y = self.owner.id_arrays[c.tags_arg][:rows]
        C = c.C
        check_gold(fn, c.allowed, y, off[:S + 1], " (nothing was updated)")
        A = self.opt.params[c.trans_param].data
        T = c.T
        T[...] = A
        if not np.isfinite(T).all():
            raise ValueError(f"{fn}: trans holds NaN or infinity (nothing was updated)")
        if c.allowed is not None:
            T[c.forbidden] = -np.inf
        tmax, fast = transition_tables(T, c.E)     # the kernel's own
        k = &self.kcrf
        k.s = <const double *>cnp.PyArray_DATA(<cnp.ndarray>c.s)
        k.T = <const double *>cnp.PyArray_DATA(<cnp.ndarray>T)
        k.E = <const double *>cnp.PyArray_DATA(<cnp.ndarray>c.E)
        k.tmax = tmax
        k.fast = fast
        k.reach = <const cnp.uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>c.reach)
        k.coreach = <const cnp.uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>c.coreach)
        k.e = <double *>cnp.PyArray_DATA(<cnp.ndarray>c.e)
        k.z = <double *>cnp.PyArray_DATA(<cnp.ndarray>c.z)
        k.off = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>off)
        k.y = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>self.owner.id_arrays[c.tags_arg])
        k.C = C
        k.alpha = <double *>cnp.PyArray_DATA(<cnp.ndarray>c.alpha)
        k.beta = <double *>cnp.PyArray_DATA(<cnp.ndarray>c.beta)
        k.ds = <double *>cnp.PyArray_DATA(<cnp.ndarray>c.ds)
        k.dT = <double *>cnp.PyArray_DATA(<cnp.ndarray>c.dT)
        k.loss = <double *>cnp.PyArray_DATA(<cnp.ndarray>c.loss)
        k.back = NULL
        k.out = NULL
        return S

    cdef tuple _adam_scalars(self, double lr):
        """Count this step for every parameter the plan updates (as Adam.step does for
        those with a gradient) and give the kernels its scalars: per parameter
        lr / (1 - b1^t) and sqrt(1 - b2^t); then b1, b2, the coupled weight decay and
        the decoupled decay factor."""
        opt = self.opt
        cdef double b1 = opt.betas[0], b2 = opt.betas[1], wd = opt.weight_decay
        cdef double[::1] s = self.adam_scalars
        steps = opt.steps
        cdef Py_ssize_t i
        for i in self.adam_params:
            steps[i] += 1
            t = steps[i]
            s[2 * i] = lr / (1.0 - b1 ** t)
            s[2 * i + 1] = sqrt(1.0 - b2 ** t)     # as cygrad.kernels.adam_update computes them
        if self.decoupled:
            return (self.adam_scalars, b1, b2, 0.0, 1.0 - lr * wd)
        return (self.adam_scalars, b1, b2, wd, 1.0)

    def run(self, tuple args, bint checked=False, Py_ssize_t rows=-1):
        """One step; None (nothing done) when a guard fails, unless ``checked``;
        ``rows``: the batch's rows (default: the plan's capacity; the caller checked
        that the arguments' shapes say so)."""
        cdef Py_ssize_t i, n, upper, bad, per
        cdef cnp.int64_t *dst
        cdef object x
        cdef list arrays = self.arrays
        if not checked and not self._guards_hold():
            return None
        if self.step._arena is not self.arena:
            self._bind()
        if rows < 0:
            rows = self.batch
        for j, off, n, upper, op, name, shape, per in self.ids:
            x = args[j]
            if per:
                n = rows * per
            dst = <cnp.int64_t *>(self.base + <Py_ssize_t>off)
            if (cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_INT64
                    and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x)
                    and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>x)):
                memcpy(dst, cnp.PyArray_DATA(<cnp.ndarray>x), n * sizeof(cnp.int64_t))
                with nogil:
                    bad = first_out_of_range(dst, n, upper)
                if bad < 0:
                    continue
            # other dtypes and layouts, and the error message
            index_into(x, self.owner.id_arrays[j][:rows] if per else self.owner.id_arrays[j],
                       op, name, upper)
        for j, pos, name, unit in self.targets:
            # as the eager loss: converted to the scores' dtype (binary targets: every
            # value in [0, 1])
            x = args[j]
            if not (cnp.PyArray_TYPE(<cnp.ndarray>x) == (cnp.NPY_FLOAT32 if self.f32
                                                        else cnp.NPY_FLOAT64)
                    and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x)
                    and cnp.PyArray_ISALIGNED(<cnp.ndarray>x)
                    and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>x)):
                x = np.require(x, dtype=self.dtype, requirements="CA")
            n = cnp.PyArray_SIZE(<cnp.ndarray>x)
            bad = -1
            if not unit:
                pass
            elif self.f32:
                bad = _outside_unit[float](<float *>cnp.PyArray_DATA(<cnp.ndarray>x), n)
            else:
                bad = _outside_unit[double](<double *>cnp.PyArray_DATA(<cnp.ndarray>x), n)
            if bad >= 0:
                raise ValueError(f"sigmoid_binary_cross_entropy: targets[{bad}] = "
                                 f"{args[j].reshape(-1)[bad]} is outside [0, 1] (argument "
                                 f"{name!r}; nothing was updated)")
            arrays[pos] = x
        for j, pos in self.floats:
            x = args[j]
            if not (cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x)
                    and cnp.PyArray_ISALIGNED(<cnp.ndarray>x)
                    and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>x)):
                x = np.array(x, dtype=x.dtype.newbyteorder("="), order="C")   # aligned
            elif _overlaps(<cnp.ndarray>x, self.owner.written):
                x = x.copy()    # a parameter's own array: read whole before any update
            arrays[pos] = x
        stale = False
        for pos, t in self.watch:
            if t.data is not arrays[pos]:
                stale = True
                break
        if not stale and self.watch_state:
            for pos, attr, k in self.watch_state:
                if getattr(self.opt, attr)[k] is not arrays[pos]:
                    stale = True
                    break
        if stale:
            self.owner._refresh_ext()
        cdef double lr = 0.0, gscale, eps
        if not self.gradmode:       # (an optimiser of the user's may have no lr)
            lr = self.opt.lr
        adam = None
        if self.adagrad:
            gscale, eps = 1.0, self.opt.eps
        elif self.adam:
            gscale, eps = 1.0, self.opt.eps
        elif self.gradmode:
            gscale, eps = 1.0, 0.0
        else:
            gscale, eps = -lr, 0.0
        cdef double div = 1.0
        cdef const double[::1] wts
        cdef const cnp.int64_t *lab
        if self.xent_weights is not None:   # read at every call: checked at every call
            wts = self.xent_weights
            for i in range(wts.shape[0]):
                if not (wts[i] >= 0 and wts[i] < INFINITY):
                    raise ValueError(f"softmax_cross_entropy: weight[{i}] = {wts[i]} must be "
                                     f"a finite number >= 0 (nothing was updated)")
        if self.div_per_row > 0:    # a mean
            div = rows * self.div_per_row
        elif self.div_per_row < 0:  # the weighted mean: the batch's label weights, in order
            div = 0.0
            wts = self.xent_w[0]
            lab = <const cnp.int64_t *>(self.base + <Py_ssize_t>self.xent_w[1])
            for i in range(rows):
                div += wts[lab[i]]
            if not div > 0:
                raise ValueError(f"softmax_cross_entropy: the class weights of the batch's "
                                 f"labels sum to {div}; a weighted mean needs a positive sum "
                                 f"(nothing was updated)")
        cdef Py_ssize_t sents = -1
        cdef double *crf_s = NULL
        if self.crf is not None:    # the sentences of this call, checked; the kernel's tables
            sents = self._crf_setup(args, rows)
            crf_s = <double *>cnp.PyArray_DATA(<cnp.ndarray>self.crf.s)
            if self.crf.per_sentence:       # crf_nll(reduction="mean"): / the sentences
                div = max(sents, 1)
        if self.adam:               # counted once every check has passed
            adam = self._adam_scalars(lr)
        cdef int nt = 1
        if self.work >= self.min_work:
            nt = _config.resolve(self.step.threads)
        _written(self.opt.params)       # a live graph that saved one must refuse its backward
        cdef double loss
        try:
            loss = self.plan._run(arrays, gscale, lr, eps, self.losses, nt, 1, div, adam,
                                  rows, &self.kcrf if crf_s != NULL else NULL, crf_s,
                                  sents) / div
        except BaseException:
            if adam is not None:        # the step did not happen: nor does its count
                for i in self.adam_params:
                    self.opt.steps[i] -= 1
            raise
        if self.f32:
            return <double><float>loss
        return loss
