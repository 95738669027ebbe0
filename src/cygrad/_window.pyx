# cython: language_level=3
"""The window model's SGD training step, fused into one call (cygrad.ner.WindowTrainer).

Model (CS224N lecture 3, Collobert et al.'s window approach): for a window of w
word ids, x = [E[w_1]; ...; E[w_w]] (D = w d), h = tanh(W x + b), s = U h + c,
loss = softmax cross-entropy of s against the label, averaged over the batch.
One step computes every gradient and applies SGD to W, b, U, c and the
embedding rows of the batch's windows, in place.

Design. The step is six phases; every array it touches is allocated once (the
work buffers grow with the largest batch seen) and nothing is allocated per
step. The learning rate is folded into the loss gradient once,
dS = -lr/B (P - Y), so every later product yields an update directly:
    dZ = (dS U) * (1 - h^2)          (delta, computed once, reused three times)
    U += dSᵀ H,  c += colsum(dS),  b += colsum(dZ),
    dX = dZ W,   W += dZᵀ X,  E[rows] += the slices of dX.
The products that read a weight matrix before it is updated (dS U, dZ W) are
split between threads by the *columns* of that matrix, and each thread first
reads, then updates its own columns, so no barrier is needed between reading the
old weights and writing the new ones. Phases:
  1. rows of the batch: gather X; with enough rows per thread also Z = X Wᵀ + b,
     H = tanh(Z), S = H Uᵀ + c and the fused softmax cross-entropy (row mode);
  2. (small batches) columns of H: Z = X Wᵀ + b, tanh;
  3. (small batches) rows: S and softmax cross-entropy;
  4. columns of H: dH = dS U, dZ = dH (1 - h^2), U += dSᵀ H, b += colsum(dZ);
  5. columns of X: dX = dZ W, W += dZᵀ X;
  6. the embedding rows, split by row ownership (as embedding_scatter_add), each
     row updated in (window, position) order, so repeated words sum correctly
     (Adagrad: on one thread, each touched row's slots summed, then one step).
The products use cygrad._gemm's block routine (csrc/bp_gemm: dot tiles, axpy rows or
the packed kernel, chosen from the product's shape, not from the thread split).
Small batches run on one thread: the work does not pay for waking a second.
For a fixed thread count the result is bitwise reproducible.
"""

import math
import threading

import numpy as np
cimport numpy as cnp
from cython cimport floating
from cygrad._parallel cimport bp_set_flag, parallel_for, pool_threads
from libc.string cimport memcpy

from cygrad._common cimport index_array
from cygrad import _config

cnp.import_array()

from cygrad._csrc cimport (
    BP_SIGMOID, BP_TANH, BP_RELU, BP_LEAKY_RELU, BP_HARDTANH, BP_GELU, BP_SILU,
    bp_unary_fwd_f32, bp_unary_fwd_f64, bp_unary_bwd_f32, bp_unary_bwd_f64,
    bp_axpy_f32, bp_axpy_f64, bp_add_bias_f32, bp_add_bias_f64, bp_colsum_f32, bp_colsum_f64,
    bp_adagrad_f32, bp_adagrad_f64, bp_softmax_xent_f32, bp_softmax_xent_f64,
    bp_sparse_adagrad_f32, bp_sparse_adagrad_f64)
from cygrad._gemm cimport gemm_block_f32, gemm_block_f64


cdef enum:
    MIN_WORK = 400000       # B*H*D multiply-adds per product below which one thread runs
    ROW_MODE_ROWS = 64      # rows per thread from which the forward pass splits by rows
    COL_ALIGN = 32          # column splits on multiples of every micro-kernel's NR
    ROW_BLOCK = 16          # embedding rows are owned in blocks of 16
    LOSS_BLOCK = 4          # the loss is summed in blocks of 4 rows (row splits align to them)
    MAX_TABLES = 4
    SCORE_CHUNK = 4096      # rows per pass of window_scores


cdef struct Net:
    # shapes: batch, window width, input size, hidden units, classes
    Py_ssize_t B, w, D, H, C
    # embedding tables: pointer, row size, ids (B x w), first column in X, update it?
    int ntab
    void *tab[MAX_TABLES]
    Py_ssize_t dim[MAX_TABLES]
    Py_ssize_t off[MAX_TABLES]
    const cnp.int64_t *ids[MAX_TABLES]
    int scatter[MAX_TABLES]
    # dense parameters
    void *W
    void *b
    void *U
    void *c
    int act                 # BP_* activation whose derivative is a function of its output
    double alpha            # leaky_relu's slope
    # optimiser: SGD (adagrad = 0) folds -lr into the gradient; Adagrad keeps the
    # gradients in gW / gU and updates with the accumulators G*
    int adagrad
    double lr, eps
    void *GW
    void *Gb
    void *GU
    void *Gc
    void *gW
    void *gU
    # Adagrad on the embedding rows: each table's accumulator and chain heads (one
    # per row, -1 between steps), scratch of 2 B w slots, one row's summed gradient
    void *Gtab[MAX_TABLES]
    cnp.int64_t *head[MAX_TABLES]
    cnp.int64_t *slots
    void *row


cdef inline Py_ssize_t _part(Py_ssize_t n, int nt, int t, Py_ssize_t align) noexcept nogil:
    """Where thread t's part of range(n) starts (part t ends where t + 1 starts);
    parts are multiples of align long, the last one shorter."""
    cdef Py_ssize_t chunk = (n + nt - 1) // nt
    chunk = (chunk + align - 1) // align * align
    return min(n, t * chunk)


cdef inline int _gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1,
                      Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t k, const floating *A, int ta,
                      Py_ssize_t lda, const floating *B, int tb, Py_ssize_t ldb, floating *C,
                      Py_ssize_t ldc, int acc) noexcept nogil:
    if floating is float:
        return gemm_block_f32(m, n, i0, i1, j0, j1, k, A, ta, lda, B, tb, ldb, C, ldc, acc)
    else:
        return gemm_block_f64(m, n, i0, i1, j0, j1, k, A, ta, lda, B, tb, ldb, C, ldc, acc)


cdef inline void _axpy(Py_ssize_t n, double a, const floating *x, floating *y) noexcept nogil:
    if floating is float:
        bp_axpy_f32(n, a, x, y)
    else:
        bp_axpy_f64(n, a, x, y)


cdef inline void _colsum(const floating *x, floating *out, Py_ssize_t rows, Py_ssize_t ld,
                         Py_ssize_t cols) noexcept nogil:
    if floating is float:
        bp_colsum_f32(x, out, rows, ld, cols)
    else:
        bp_colsum_f64(x, out, rows, ld, cols)


cdef inline void _adagrad(floating *p, floating *G, const floating *g, Py_ssize_t n, double lr,
                          double eps) noexcept nogil:
    if floating is float:
        bp_adagrad_f32(p, G, g, n, lr, eps)
    else:
        bp_adagrad_f64(p, G, g, n, lr, eps)


cdef inline void _update(Net *net, floating *p, floating *G, const floating *g, Py_ssize_t n,
                         double lr) noexcept nogil:
    """p += g (SGD: g already holds -lr * gradient) or an Adagrad step with gradient g."""
    if net.adagrad:
        _adagrad(p, G, g, n, lr, net.eps)
    else:
        _axpy(n, 1.0, g, p)


cdef inline int _weight_update(Net *net, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lo,
                               Py_ssize_t hi, const floating *A, const floating *X, floating *P,
                               floating *G, floating *g) noexcept nogil:
    """Columns [lo, hi) of a weight matrix P (rows x cols) take the step for the
    gradient Aᵀ X (A: B x rows, X: B x cols): accumulated straight into P for SGD
    (A already carries -lr), or computed into g for an Adagrad step with
    accumulator G. Returns nonzero on a failed packing allocation."""
    cdef Py_ssize_t r
    if not net.adagrad:
        return _gemm(rows, cols, 0, rows, lo, hi, net.B, A, 1, rows, X, 0, cols, P, cols, 1)
    if _gemm(rows, cols, 0, rows, lo, hi, net.B, A, 1, rows, X, 0, cols, g, cols, 0):
        return 1
    for r in range(rows):
        _adagrad(P + r * cols + lo, G + r * cols + lo, g + r * cols + lo, hi - lo, net.lr,
                 net.eps)
    return 0


cdef inline void _bias_act(floating *Z, const floating *b, Py_ssize_t i0, Py_ssize_t i1,
                           Py_ssize_t h0, Py_ssize_t h1, Py_ssize_t H, int act,
                           double alpha) noexcept nogil:
    """Z[i0:i1, h0:h1] = f(Z + b[h0:h1]) in place."""
    cdef Py_ssize_t i
    if h0 == 0 and h1 == H:
        if floating is float:
            bp_add_bias_f32(Z + i0 * H, b, Z + i0 * H, i1 - i0, H)
            bp_unary_fwd_f32(act, Z + i0 * H, Z + i0 * H, (i1 - i0) * H, alpha)
        else:
            bp_add_bias_f64(Z + i0 * H, b, Z + i0 * H, i1 - i0, H)
            bp_unary_fwd_f64(act, Z + i0 * H, Z + i0 * H, (i1 - i0) * H, alpha)
        return
    for i in range(i0, i1):
        if floating is float:
            bp_add_bias_f32(Z + i * H + h0, b + h0, Z + i * H + h0, 1, h1 - h0)
            bp_unary_fwd_f32(act, Z + i * H + h0, Z + i * H + h0, h1 - h0, alpha)
        else:
            bp_add_bias_f64(Z + i * H + h0, b + h0, Z + i * H + h0, 1, h1 - h0)
            bp_unary_fwd_f64(act, Z + i * H + h0, Z + i * H + h0, h1 - h0, alpha)


cdef inline void _bias_xent(floating *S, const floating *c, const cnp.int64_t *lab,
                           Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t C, double scale,
                           double *block_loss) noexcept nogil:
    """Rows i0..i1 (i0 a multiple of LOSS_BLOCK) of the scores S (+= c), then
    overwritten by (softmax - onehot) * scale; block_loss[j] receives the summed
    loss of rows [j LOSS_BLOCK, (j + 1) LOSS_BLOCK), so that the mean loss, added
    block by block, does not depend on how the rows were split."""
    cdef Py_ssize_t r, r1
    if i0 >= i1:
        return
    if floating is float:
        bp_add_bias_f32(S + i0 * C, c, S + i0 * C, i1 - i0, C)
    else:
        bp_add_bias_f64(S + i0 * C, c, S + i0 * C, i1 - i0, C)
    r = i0
    while r < i1:
        r1 = min(i1, r + LOSS_BLOCK)
        if floating is float:
            block_loss[r // LOSS_BLOCK] = bp_softmax_xent_f32(S + r * C, lab + r, S + r * C,
                                                              r1 - r, C, scale)
        else:
            block_loss[r // LOSS_BLOCK] = bp_softmax_xent_f64(S + r * C, lab + r, S + r * C,
                                                              r1 - r, C, scale)
        r = r1


cdef inline void _gather_rows(Net *net, floating *X, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i, j, d, w = net.w, D = net.D
    cdef int t
    cdef const floating *tab
    cdef const cnp.int64_t *ids
    for t in range(net.ntab):
        tab = <const floating *>net.tab[t]
        ids = net.ids[t]
        d = net.dim[t]
        for i in range(lo, hi):
            for j in range(w):
                memcpy(X + i * D + net.off[t] + j * d, tab + ids[i * w + j] * d,
                       d * sizeof(floating))


cdef struct Work:
    # one step's batch arrays: labels, X (B x D), Z (B x H), S (B x C), dZ, dX, the
    # column sums (H + C) and each thread's summed loss
    const cnp.int64_t *lab
    void *X
    void *Z
    void *S
    void *dZ
    void *dX
    void *colbuf
    double *losses
    double scale
    bint row_mode


cdef int _phase(int ph, Net *net, Work *wk, floating *dummy, int t, int nt) noexcept nogil:
    """Thread t's share of phase ph of the step (see the module docstring).
    Returns nonzero if a GEMM packing buffer could not be allocated."""
    cdef Py_ssize_t B = net.B, w = net.w, D = net.D, H = net.H, C = net.C
    cdef Py_ssize_t i, r, d, lo, hi
    cdef floating *X = <floating *>wk.X
    cdef floating *Z = <floating *>wk.Z
    cdef floating *S = <floating *>wk.S
    cdef floating *dZ = <floating *>wk.dZ
    cdef floating *dX = <floating *>wk.dX
    cdef floating *colbuf = <floating *>wk.colbuf
    cdef floating *W = <floating *>net.W
    cdef floating *b = <floating *>net.b
    cdef floating *U = <floating *>net.U
    cdef floating *c = <floating *>net.c
    cdef floating *tab
    cdef const cnp.int64_t *ids
    cdef int k, failed = 0
    if ph == 1:     # rows: gather (and, in row mode, the forward pass and the loss)
        lo = _part(B, nt, t, LOSS_BLOCK)
        hi = _part(B, nt, t + 1, LOSS_BLOCK)
        _gather_rows(net, X, lo, hi)
        if wk.row_mode and lo < hi:
            failed += _gemm(B, H, lo, hi, 0, H, D, X, 0, D, W, 1, D, Z, H, 0) != 0
            _bias_act(Z, b, lo, hi, 0, H, H, net.act, net.alpha)
            failed += _gemm(B, C, lo, hi, 0, C, H, Z, 0, H, U, 1, H, S, C, 0) != 0
            _bias_xent(S, c, wk.lab, lo, hi, C, wk.scale, wk.losses)
    elif ph == 2:   # columns of H: Z = X Wᵀ + b, H = f(Z)
        lo = _part(H, nt, t, COL_ALIGN)
        hi = _part(H, nt, t + 1, COL_ALIGN)
        failed += _gemm(B, H, 0, B, lo, hi, D, X, 0, D, W, 1, D, Z, H, 0) != 0
        _bias_act(Z, b, 0, B, lo, hi, H, net.act, net.alpha)
    elif ph == 3:   # rows: scores and softmax cross-entropy
        lo = _part(B, nt, t, LOSS_BLOCK)
        hi = _part(B, nt, t + 1, LOSS_BLOCK)
        failed += _gemm(B, C, lo, hi, 0, C, H, Z, 0, H, U, 1, H, S, C, 0) != 0
        _bias_xent(S, c, wk.lab, lo, hi, C, wk.scale, wk.losses)
    elif ph == 4:   # columns of H: delta, then U, b (and c on thread 0)
        lo = _part(H, nt, t, COL_ALIGN)
        hi = _part(H, nt, t + 1, COL_ALIGN)
        if lo < hi:
            failed += _gemm(B, H, 0, B, lo, hi, C, S, 0, C, U, 0, H, dZ, H, 0) != 0
            for i in range(B):
                if floating is float:
                    bp_unary_bwd_f32(net.act, dZ + i * H + lo, Z + i * H + lo, dZ + i * H + lo,
                                     hi - lo, net.alpha)
                else:
                    bp_unary_bwd_f64(net.act, dZ + i * H + lo, Z + i * H + lo, dZ + i * H + lo,
                                     hi - lo, net.alpha)
            failed += _weight_update(net, C, H, lo, hi, S, Z, U, <floating *>net.GU,
                                     <floating *>net.gU)
            _colsum(dZ + lo, colbuf + lo, B, H, hi - lo)
            _update(net, b + lo, <floating *>net.Gb + lo, colbuf + lo, hi - lo, net.lr)
        if t == 0:
            _colsum(S, colbuf + H, B, C, C)
            _update(net, c, <floating *>net.Gc, colbuf + H, C, net.lr)
    elif ph == 5:   # columns of X: dX = dZ W with the old W, then W's update
        lo = _part(D, nt, t, COL_ALIGN)
        hi = _part(D, nt, t + 1, COL_ALIGN)
        if lo < hi:
            failed += _gemm(B, D, 0, B, lo, hi, H, dZ, 0, H, W, 0, D, dX, D, 0) != 0
            failed += _weight_update(net, H, D, lo, hi, dZ, X, W, <floating *>net.GW,
                                     <floating *>net.gW)
    elif net.adagrad:   # sparse Adagrad on the embedding rows, duplicates summed first
        for k in range(net.ntab):
            if net.scatter[k] and t == 0:
                if floating is float:
                    bp_sparse_adagrad_f32(<float *>net.tab[k], <float *>net.Gtab[k],
                                          net.dim[k], net.ids[k], B * w, w, dX + net.off[k],
                                          D, net.slots, net.head[k], <float *>net.row, net.lr,
                                          net.eps)
                else:
                    bp_sparse_adagrad_f64(<double *>net.tab[k], <double *>net.Gtab[k],
                                          net.dim[k], net.ids[k], B * w, w, dX + net.off[k],
                                          D, net.slots, net.head[k], <double *>net.row, net.lr,
                                          net.eps)
    else:           # SGD on the embedding rows, by ownership of blocks of ROW_BLOCK rows
        for k in range(net.ntab):
            if net.scatter[k]:
                tab = <floating *>net.tab[k]
                ids = net.ids[k]
                d = net.dim[k]
                for i in range(B * w):
                    r = ids[i]
                    if nt == 1 or (r // ROW_BLOCK) % nt == t:
                        _axpy(d, 1.0, dX + (i // w) * D + net.off[k] + (i % w) * d,
                              tab + r * d)
    return failed


cdef struct _Phase:
    int ph, nt, f32, failed
    Net *net
    Work *wk


cdef void _phase_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """Parts [lo, hi) of nt of a phase (a part is what thread t did in a fork-join)."""
    cdef _Phase *p = <_Phase *>ctx
    cdef Py_ssize_t t
    for t in range(lo, hi):
        if p.f32:
            if _phase[float](p.ph, p.net, p.wk, <float *>NULL, <int>t, p.nt):
                bp_set_flag(&p.failed)
        else:
            if _phase[double](p.ph, p.net, p.wk, <double *>NULL, <int>t, p.nt):
                bp_set_flag(&p.failed)


cdef int _run(int ph, Net *net, Work *wk, floating *dummy, int nt) noexcept nogil:
    """Phase ph in nt parts on the pool's threads (parts claimed dynamically, so a
    descheduled helper never holds the caller back); on one thread directly."""
    if nt == 1:
        return _phase(ph, net, wk, dummy, 0, 1)
    cdef _Phase p
    p.ph, p.nt, p.failed, p.net, p.wk = ph, nt, 0, net, wk
    p.f32 = floating is float
    parallel_for(_phase_task, &p, nt, 1, nt)
    return p.failed


cdef int _step(Net *net, const cnp.int64_t *lab, floating *X, floating *Z,
               floating *S, floating *dZ, floating *dX, floating *colbuf, double *losses,
               int nt) noexcept nogil:
    """One fused training step; losses[j] receives the summed loss of rows
    [j LOSS_BLOCK, (j + 1) LOSS_BLOCK). Returns
    nonzero if a GEMM packing buffer could not be allocated."""
    cdef Work wk
    cdef int failed = 0
    wk.lab = lab
    wk.X = X
    wk.Z = Z
    wk.S = S
    wk.dZ = dZ
    wk.dX = dX
    wk.colbuf = colbuf
    wk.losses = losses
    wk.scale = (1.0 / net.B) if net.adagrad else (-net.lr / net.B)
    wk.row_mode = net.B >= ROW_MODE_ROWS * nt
    failed += _run(1, net, &wk, X, nt)
    if not wk.row_mode:
        failed += _run(2, net, &wk, X, nt)
        failed += _run(3, net, &wk, X, nt)
    failed += _run(4, net, &wk, X, nt)
    failed += _run(5, net, &wk, X, nt)
    failed += _run(6, net, &wk, X, nt)
    return failed


cdef struct _Fwd:
    int nt, f32, failed
    Net *net
    void *X
    void *Z
    void *S
    Py_ssize_t B


cdef void _forward_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef _Fwd *f = <_Fwd *>ctx
    cdef Py_ssize_t t
    for t in range(lo, hi):
        if f.f32:
            if _forward_part[float](f.net, <float *>f.X, <float *>f.Z, <float *>f.S, f.B,
                                    <int>t, f.nt):
                bp_set_flag(&f.failed)
        else:
            if _forward_part[double](f.net, <double *>f.X, <double *>f.Z, <double *>f.S, f.B,
                                     <int>t, f.nt):
                bp_set_flag(&f.failed)


cdef int _forward_rows(Net *net, floating *X, floating *Z, floating *S, Py_ssize_t B,
                       int nt) noexcept nogil:
    """Inference: S = f(X Wᵀ + b) Uᵀ + c for B windows, X gathered from the tables;
    rows in nt parts on the pool's threads. Returns nonzero on a failed packing
    allocation."""
    if nt == 1:
        return _forward_part(net, X, Z, S, B, 0, 1)
    cdef _Fwd f
    f.nt, f.f32, f.failed, f.net, f.X, f.Z, f.S, f.B = nt, floating is float, 0, net, X, Z, S, B
    parallel_for(_forward_task, &f, nt, 1, nt)
    return f.failed


cdef int _forward_part(Net *net, floating *X, floating *Z, floating *S, Py_ssize_t B, int t,
                       int nt) noexcept nogil:
    """Thread t's rows of _forward_rows."""
    cdef Py_ssize_t H = net.H, D = net.D, C = net.C
    cdef Py_ssize_t lo = _part(B, nt, t, 8), hi = _part(B, nt, t + 1, 8)
    cdef int failed = 0
    if lo < hi:
        _gather_rows(net, X, lo, hi)
        failed += _gemm(B, H, lo, hi, 0, H, D, X, 0, D, <floating *>net.W, 1, D, Z, H, 0) != 0
        _bias_act(Z, <floating *>net.b, lo, hi, 0, H, H, net.act, net.alpha)
        failed += _gemm(B, C, lo, hi, 0, C, H, Z, 0, H, <floating *>net.U, 1, H, S, C, 0) != 0
        if floating is float:
            bp_add_bias_f32(S + lo * C, <float *>net.c, S + lo * C, hi - lo, C)
        else:
            bp_add_bias_f64(S + lo * C, <double *>net.c, S + lo * C, hi - lo, C)
    return failed


def window_scores(tables, ids, W, b, U, c, activation="tanh", alpha=0.01, out=None,
                  threads=None):
    """Scores S = f(X Wᵀ + b) Uᵀ + c of the window model for a batch, X being the
    concatenation, table by table, of each window's rows (ids[k]: (B, w) into
    tables[k]); gather, hidden layer and output layer in one compiled pass, rows
    split between threads. Any activation of cygrad.kernels.ACTIVATIONS.

    Returns ``out`` (B, C), allocated if None."""
    fn = "window_scores"
    codes = {"tanh": BP_TANH, "sigmoid": BP_SIGMOID, "relu": BP_RELU,
             "leaky_relu": BP_LEAKY_RELU, "hardtanh": BP_HARDTANH, "gelu": BP_GELU,
             "silu": BP_SILU}
    if activation not in codes:
        raise ValueError(f"{fn}: activation must be one of {sorted(codes)}, got {activation!r}")
    tables = list(tables)
    if not 1 <= len(tables) <= MAX_TABLES or len(ids) != len(tables):
        raise ValueError(f"{fn}: 1 to {MAX_TABLES} tables and one id array per table")
    dt = W.dtype
    for name, a in [("W", W), ("b", b), ("U", U), ("c", c)] + \
            [(f"tables[{k}]", t) for k, t in enumerate(tables)]:
        if not isinstance(a, np.ndarray) or a.dtype != dt or dt not in (np.float32, np.float64) \
                or not a.flags.c_contiguous:
            raise TypeError(f"{fn}: {name} must be a C-contiguous float32/float64 ndarray of "
                            f"W's dtype {dt}")
    ids = [index_array(x, fn, f"ids[{k}]", 2, tables[k].shape[0]) for k, x in enumerate(ids)]
    cdef Py_ssize_t B = ids[0].shape[0], w = ids[0].shape[1]
    cdef Py_ssize_t H = W.shape[0], C = U.shape[0]
    cdef Py_ssize_t D = w * sum(t.shape[1] for t in tables)
    if any(x.shape != (B, w) for x in ids):
        raise ValueError(f"{fn}: every id array must have shape ({B}, {w})")
    if W.shape != (H, D) or b.shape != (H,) or U.shape != (C, H) or c.shape != (C,):
        raise ValueError(f"{fn}: W {W.shape}, b {b.shape}, U {U.shape}, c {c.shape} do not "
                         f"fit an input of size {D}")
    if out is None:
        out = np.empty((B, C), dt)
    elif out.shape != (B, C) or out.dtype != dt or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError(f"{fn}: out must be a writeable C-contiguous ({B}, {C}) {dt} array")
    if B == 0:
        return out
    # rows in chunks, so that the work arrays stay bounded whatever B is
    cdef Py_ssize_t chunk = min(B, SCORE_CHUNK), lo, nb
    X = np.empty((chunk, D), dt)
    Z = np.empty((chunk, H), dt)
    cdef Net net
    cdef const cnp.int64_t *base[MAX_TABLES]
    cdef int k, failed = 0
    off = 0
    net.ntab = len(tables)
    for k in range(net.ntab):
        net.tab[k] = cnp.PyArray_DATA(<cnp.ndarray>tables[k])
        net.dim[k] = tables[k].shape[1]
        net.off[k] = off
        off += w * tables[k].shape[1]
        base[k] = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>ids[k])
    net.w, net.D, net.H, net.C = w, D, H, C
    net.W = cnp.PyArray_DATA(<cnp.ndarray>W)
    net.b = cnp.PyArray_DATA(<cnp.ndarray>b)
    net.U = cnp.PyArray_DATA(<cnp.ndarray>U)
    net.c = cnp.PyArray_DATA(<cnp.ndarray>c)
    net.act, net.alpha = codes[activation], alpha
    cdef int nt = 1
    if chunk * H * D >= MIN_WORK:
        nt = _config._check(threads) if threads is not None else _config.get_num_threads()
        nt = pool_threads(nt)
    cdef void *xp = cnp.PyArray_DATA(<cnp.ndarray>X)
    cdef void *zp = cnp.PyArray_DATA(<cnp.ndarray>Z)
    cdef char *sp = <char *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef bint f32 = dt == np.float32
    cdef Py_ssize_t row_bytes = C * (4 if f32 else 8)
    with nogil:
        lo = 0
        while lo < B and not failed:
            nb = min(chunk, B - lo)
            net.B = nb
            for k in range(net.ntab):
                net.ids[k] = base[k] + lo * w
            if f32:
                failed = _forward_rows[float](&net, <float *>xp, <float *>zp,
                                              <float *>(sp + lo * row_bytes), nb, nt)
            else:
                failed = _forward_rows[double](&net, <double *>xp, <double *>zp,
                                               <double *>(sp + lo * row_bytes), nb, nt)
            lo += nb
    if failed:
        raise MemoryError(f"{fn}: could not allocate the GEMM packing buffers")
    return out


#: Activations the fused step supports: those whose derivative is a function of
#: the output (so the step keeps h and not z).
FUSED_ACTIVATIONS = ("tanh", "sigmoid", "relu", "leaky_relu", "hardtanh")


cdef int _act_code(str name) except -1:
    codes = {"tanh": BP_TANH, "sigmoid": BP_SIGMOID, "relu": BP_RELU,
             "leaky_relu": BP_LEAKY_RELU, "hardtanh": BP_HARDTANH}
    if name not in codes:
        raise ValueError(f"the fused step supports the activations {sorted(codes)} (whose "
                         f"derivative is a function of the output), got {name!r}")
    return codes[name]


cdef class _FusedStep:
    """The fused step over arrays it does not own: the parameters (and Adagrad's
    accumulators) are updated in place. Validation of the arrays is the caller's
    job (WindowTrainer, or cygrad.ner.train, which build them); step() checks its
    batch. Not public: use WindowTrainer."""

    cdef list tables, dims, scatter, accum
    cdef object W, b, U, c, GW, Gb, GU, Gc, gW, gU, dtype
    cdef readonly Py_ssize_t w, D, H, C
    cdef int act
    cdef double alpha, eps
    cdef bint adagrad
    cdef object _X, _Z, _S, _dZ, _dX, _colbuf, _losses, _slots, _row, _heads
    cdef Py_ssize_t _cap
    cdef object _lock

    def __init__(self, tables, W, b, U, c, w, activation="tanh", alpha=0.01,
                 optimizer="sgd", update_tables=None, accumulators=None, eps=1e-8):
        self.tables = list(tables)
        if not 1 <= len(self.tables) <= MAX_TABLES:
            raise ValueError(f"_FusedStep: 1 to {MAX_TABLES} embedding tables, "
                             f"got {len(self.tables)}")
        self.dims = [t.shape[1] for t in self.tables]
        self.w = w
        self.D = w * sum(self.dims)
        self.H, self.C = W.shape[0], U.shape[0]
        if W.shape != (self.H, self.D) or b.shape != (self.H,) or U.shape != (self.C, self.H) \
                or c.shape != (self.C,):
            raise ValueError(f"_FusedStep: shapes do not fit: W {W.shape}, b {b.shape}, "
                             f"U {U.shape}, c {c.shape} for input size {self.D}")
        arrays = self.tables + [W, b, U, c]
        self.dtype = W.dtype
        for a in arrays:
            if a.dtype != self.dtype or not a.flags.c_contiguous or not a.flags.writeable:
                raise ValueError("_FusedStep: arrays must share one float dtype and be "
                                 "C-contiguous and writeable")
        self.W, self.b, self.U, self.c = W, b, U, c
        self.act = _act_code(activation)
        self.alpha = alpha
        self.scatter = [True] * len(self.tables) if update_tables is None \
            else [bool(x) for x in update_tables]
        if optimizer not in ("sgd", "adagrad"):
            raise ValueError(f"_FusedStep: optimizer must be 'sgd' or 'adagrad', "
                             f"got {optimizer!r}")
        self.adagrad = optimizer == "adagrad"
        self.eps = eps
        if self.adagrad:
            acc = accumulators
            self.accum = list(acc["tables"])
            self.GW, self.Gb, self.GU, self.Gc = acc["W"], acc["b"], acc["U"], acc["c"]
            for a, p in zip(self.accum + [self.GW, self.Gb, self.GU, self.Gc],
                            self.tables + [W, b, U, c]):
                if a is not None and (a.shape != p.shape or a.dtype != p.dtype
                                      or not a.flags.c_contiguous):
                    raise ValueError("_FusedStep: each accumulator must match its parameter")
            self.gW = np.empty_like(W)
            self.gU = np.empty_like(U)
            # one chain head per table row (-1: not in this batch) for sparse Adagrad
            self._heads = [np.full(t.shape[0], -1, np.int64) if up else None
                           for t, up in zip(self.tables, self.scatter)]
        else:
            self.accum = [None] * len(self.tables)
            self.GW = self.Gb = self.GU = self.Gc = self.gW = self.gU = W   # unused
        self._cap = 0
        self._lock = threading.Lock()
        self._colbuf = np.empty(self.H + self.C, self.dtype)
        self._losses = np.zeros(0, np.float64)

    cdef _reserve(self, Py_ssize_t B, int nt):
        if B > self._cap:
            dt = self.dtype
            self._X = np.empty((B, self.D), dt)
            self._Z = np.empty((B, self.H), dt)
            self._S = np.empty((B, self.C), dt)
            self._dZ = np.empty((B, self.H), dt)
            self._dX = np.empty((B, self.D), dt)
            if self.adagrad:   # the embedding rows' slot chains and one row's gradient
                self._slots = np.empty(2 * B * self.w, np.int64)
                self._row = np.empty(max(self.dims), dt)
            self._cap = B
        if (B + LOSS_BLOCK - 1) // LOSS_BLOCK > len(self._losses):
            self._losses = np.zeros((B + LOSS_BLOCK - 1) // LOSS_BLOCK, np.float64)

    def step(self, ids, labels, double lr, threads=None):
        """One step: ``ids`` one (B, w) integer array per table, ``labels`` (B,)
        integers in [0, C). Returns the mean loss (before the update). Calls from
        several Python threads on one object run one after the other (they share
        the parameters and the work buffers)."""
        fn = "fused step"
        labels = index_array(labels, fn, "labels", 1, self.C)
        B = labels.shape[0]
        if len(ids) != len(self.tables):
            raise ValueError(f"{fn}: {len(self.tables)} id arrays needed, got {len(ids)}")
        ids = [index_array(x, fn, f"ids[{k}]", 2, self.tables[k].shape[0])
               for k, x in enumerate(ids)]
        for x in ids:
            if x.shape != (B, self.w):
                raise ValueError(f"{fn}: id arrays must have shape ({B}, {self.w}), "
                                 f"got {x.shape}")
        if B == 0:
            raise ValueError(f"{fn}: the batch is empty")
        return self._run(ids, labels, lr, threads)

    cdef double _run(self, list ids, labels, double lr, threads) except? -1.0:
        """The step on checked input: int64 C-contiguous ids in range, one (B, w)
        array per table, labels (B,) in range, B > 0."""
        with self._lock:
            return self._run_locked(ids, labels, lr, threads)

    cdef double _run_locked(self, list ids, labels, double lr, threads) except? -1.0:
        cdef Py_ssize_t B = labels.shape[0]
        cdef Net net
        cdef int k, t, failed
        cdef int nt = 1
        if B * self.H * self.D >= MIN_WORK:
            nt = _config._check(threads) if threads is not None else _config.get_num_threads()
            nt = pool_threads(nt)      # 1 while the pool's helpers would not come
        self._reserve(B, nt)
        net.B, net.w, net.D, net.H, net.C = B, self.w, self.D, self.H, self.C
        net.ntab = len(self.tables)
        off = 0
        for k in range(net.ntab):
            net.tab[k] = cnp.PyArray_DATA(<cnp.ndarray>self.tables[k])
            net.dim[k] = self.dims[k]
            net.off[k] = off
            off += self.w * self.dims[k]
            net.ids[k] = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>ids[k])
            net.scatter[k] = self.scatter[k]
        net.W = cnp.PyArray_DATA(<cnp.ndarray>self.W)
        net.b = cnp.PyArray_DATA(<cnp.ndarray>self.b)
        net.U = cnp.PyArray_DATA(<cnp.ndarray>self.U)
        net.c = cnp.PyArray_DATA(<cnp.ndarray>self.c)
        net.act, net.alpha = self.act, self.alpha
        net.adagrad, net.lr, net.eps = self.adagrad, lr, self.eps
        if self.adagrad:
            net.GW = cnp.PyArray_DATA(<cnp.ndarray>self.GW)
            net.Gb = cnp.PyArray_DATA(<cnp.ndarray>self.Gb)
            net.GU = cnp.PyArray_DATA(<cnp.ndarray>self.GU)
            net.Gc = cnp.PyArray_DATA(<cnp.ndarray>self.Gc)
            net.gW = cnp.PyArray_DATA(<cnp.ndarray>self.gW)
            net.gU = cnp.PyArray_DATA(<cnp.ndarray>self.gU)
            net.slots = <cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>self._slots)
            net.row = cnp.PyArray_DATA(<cnp.ndarray>self._row)
            for k in range(net.ntab):
                if net.scatter[k]:
                    net.Gtab[k] = cnp.PyArray_DATA(<cnp.ndarray>self.accum[k])
                    net.head[k] = <cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>self._heads[k])
        else:               # not read by SGD; valid pointers all the same
            net.GW = net.Gb = net.GU = net.Gc = net.gW = net.gU = net.W
        cdef const cnp.int64_t *lab = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>labels)
        cdef double *losses = <double *>cnp.PyArray_DATA(<cnp.ndarray>self._losses)
        cdef void *X = cnp.PyArray_DATA(<cnp.ndarray>self._X)
        cdef void *Z = cnp.PyArray_DATA(<cnp.ndarray>self._Z)
        cdef void *S = cnp.PyArray_DATA(<cnp.ndarray>self._S)
        cdef void *dZ = cnp.PyArray_DATA(<cnp.ndarray>self._dZ)
        cdef void *dX = cnp.PyArray_DATA(<cnp.ndarray>self._dX)
        cdef void *colbuf = cnp.PyArray_DATA(<cnp.ndarray>self._colbuf)
        cdef bint f32 = self.dtype == np.float32
        with nogil:
            if f32:
                failed = _step[float](&net, lab, <float *>X, <float *>Z, <float *>S,
                                      <float *>dZ, <float *>dX, <float *>colbuf, losses, nt)
            else:
                failed = _step[double](&net, lab, <double *>X, <double *>Z,
                                       <double *>S, <double *>dZ, <double *>dX,
                                       <double *>colbuf, losses, nt)
        if failed:
            raise MemoryError("fused step: could not allocate the GEMM packing buffers")
        cdef double total = 0.0
        for t in range((B + LOSS_BLOCK - 1) // LOSS_BLOCK):
            total += losses[t]
        return total / B


def _as_param(x, name, dtype, ndim):
    fn = "WindowTrainer"
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: {name} must be float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{fn}: {name} has dtype {x.dtype} but E has {dtype}; "
                        f"all five arrays must have one dtype")
    if x.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {x.shape}")
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{fn}: {name} holds NaN or infinity")
    return np.array(x, dtype=x.dtype, order="C", copy=True)


cdef class WindowTrainer:
    """The window model's training step (tanh hidden layer, softmax
    cross-entropy, SGD on every parameter), fused into one compiled call.

    Parameters
    ----------
    E : ndarray (V, d)
        Word vectors; the rows of each window's words are updated in place.
    W : ndarray (H, w*d)
        Hidden weights for windows of w words (the window width is W.shape[1] / d).
    b : ndarray (H,)
    U : ndarray (C, H)
        Output weights, one row per class.
    c : ndarray (C,)
    threads : int or None
        Threads to use; None follows cygrad.get_num_threads() at every step.
        Small batches run on one thread whatever the setting.

    All five arrays must be float32, or all float64; they are copied in, so the
    caller's arrays are never modified. ``arrays()`` returns copies of the
    current values.

    The step, for windows (B, w) of word ids and labels (B,):
    x = concatenated rows of E, h = tanh(W x + b), s = U h + c,
    loss = mean softmax cross-entropy; then every parameter p -= lr * dloss/dp,
    the gradients all taken before any update. A word that occurs several times
    in the batch gets the sum of its gradients. The result is reproducible
    bitwise for a fixed thread count (and equal to rounding across counts).
    """

    cdef readonly object dtype
    cdef readonly Py_ssize_t V, d, w, H, C
    cdef object _E, _W, _b, _U, _c
    cdef _FusedStep _core
    cdef object _threads

    def __init__(self, E, W, b, U, c, threads=None):
        fn = "WindowTrainer"
        E = _as_param(E, "E", None, 2)
        dt = E.dtype
        W = _as_param(W, "W", dt, 2)
        b = _as_param(b, "b", dt, 1)
        U = _as_param(U, "U", dt, 2)
        c = _as_param(c, "c", dt, 1)
        V, d = E.shape
        H, D = W.shape
        if V < 1 or d < 1:
            raise ValueError(f"{fn}: E must have at least one row and one column, got {E.shape}")
        if H < 1 or D < 1 or D % d:
            raise ValueError(f"{fn}: W must be H x (w*d) with d = E.shape[1] = {d}, "
                             f"got shape {W.shape}")
        if b.shape != (H,):
            raise ValueError(f"{fn}: b must have shape ({H},) to match W {W.shape}, "
                             f"got {b.shape}")
        if U.ndim != 2 or U.shape[1] != H or U.shape[0] < 1:
            raise ValueError(f"{fn}: U must have shape (C, {H}) to match W {W.shape}, "
                             f"got {U.shape}")
        C = U.shape[0]
        if c.shape != (C,):
            raise ValueError(f"{fn}: c must have shape ({C},) to match U {U.shape}, "
                             f"got {c.shape}")
        self.dtype = dt
        self.V, self.d, self.w, self.H, self.C = V, d, D // d, H, C
        self._E, self._W, self._b, self._U, self._c = E, W, b, U, c
        self._core = _FusedStep([E], W, b, U, c, D // d)
        self.threads = threads

    @property
    def threads(self):
        """The thread setting: an int, or None to follow cygrad.get_num_threads()."""
        return self._threads

    @threads.setter
    def threads(self, n):
        if n is not None:
            n = _config._check(n)
        self._threads = n

    def arrays(self):
        """Copies of the current parameters: a dict with keys E, W, b, U, c."""
        return {"E": self._E.copy(), "W": self._W.copy(), "b": self._b.copy(),
                "U": self._U.copy(), "c": self._c.copy()}

    def step(self, windows, labels, lr):
        """One SGD step on a batch, in place; returns the batch's mean loss
        (computed before the update).

        Parameters
        ----------
        windows : integer ndarray (B, w), word ids in [0, V)
        labels : integer ndarray (B,), classes in [0, C)
        lr : float, the learning rate (finite, >= 0)
        """
        fn = "WindowTrainer.step"
        windows = index_array(windows, fn, "windows", 2, self.V)
        labels = index_array(labels, fn, "labels", 1, self.C)
        if windows.shape[1] != self.w:
            raise ValueError(f"{fn}: windows must have shape (B, {self.w}) for W "
                             f"{self._W.shape} and d = {self.d}, got {windows.shape}")
        if labels.shape[0] != windows.shape[0]:
            raise ValueError(f"{fn}: labels must have shape ({windows.shape[0]},) to match "
                             f"windows {windows.shape}, got {labels.shape}")
        if windows.shape[0] == 0:
            raise ValueError(f"{fn}: the batch is empty (windows has shape {windows.shape})")
        cdef double rate = lr
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"{fn}: lr must be finite and >= 0, got {lr!r}")
        return self._core._run([windows], labels, rate, self._threads)
