# cython: language_level=3
"""The window model's scores in one compiled pass (inference of cygrad.ner).

S = f(X Wᵀ + b) Uᵀ + c for a batch of windows, X being the concatenation, table
by table, of each window's rows: gather, hidden layer and output layer per row
block, so that X and the hidden layer of a block stay in cache. Rows are cut
into parts (multiples of 8 rows) that the pool's threads (cygrad.kernels._parallel)
claim one at a time; each row's scores do not depend on the split.
cygrad.ner.model calls it for the model it describes (one hidden layer,
concatenated windows); training runs on cygrad.compile.
"""

import numpy as np
cimport numpy as cnp
from cython cimport floating
from cygrad.kernels._parallel cimport bp_set_flag, parallel_for, pool_threads
from libc.string cimport memcpy

from cygrad.kernels._common cimport index_array
from cygrad import _config

cnp.import_array()

from cygrad.kernels._elementwise import ACT_CODES as _CODES     # the one activation registry
from cygrad.kernels._nogil cimport split_at, gemm as _gemm, add_bias, act_fwd, axpy


cdef enum:
    MIN_WORK = 400000       # B*H*D multiply-adds below which one thread runs
    MAX_TABLES = 8
    SCORE_CHUNK = 4096      # rows per pass
    PART_ROWS = 256         # rows per part that a thread claims


cdef struct Net:
    # shapes: batch, window width, input size, hidden units, classes
    Py_ssize_t B, w, D, H, C
    # embedding tables: pointer, row size, ids (B x w), first column in X
    int ntab
    void *tab[MAX_TABLES]
    Py_ssize_t dim[MAX_TABLES]
    Py_ssize_t off[MAX_TABLES]
    const cnp.int64_t *ids[MAX_TABLES]
    void *W
    void *b
    void *U
    void *c
    int act
    double alpha
    # the typed pass (window_scores_typed): slot projections P (T x w*H) and the
    # windows' type ids (B x w) in place of the tables and X Wᵀ
    const void *P
    const cnp.int64_t *types

cdef inline void _bias_act(floating *Z, const floating *b, Py_ssize_t i0, Py_ssize_t i1,
                           Py_ssize_t h0, Py_ssize_t h1, Py_ssize_t H, int act,
                           double alpha) noexcept nogil:
    """Z[i0:i1, h0:h1] = f(Z + b[h0:h1]) in place."""
    cdef Py_ssize_t i
    if h0 == 0 and h1 == H:
        add_bias(Z + i0 * H, b, Z + i0 * H, i1 - i0, H)
        act_fwd(act, Z + i0 * H, Z + i0 * H, (i1 - i0) * H, alpha)
        return
    for i in range(i0, i1):
        add_bias(Z + i * H + h0, b + h0, Z + i * H + h0, 1, h1 - h0)
        act_fwd(act, Z + i * H + h0, Z + i * H + h0, h1 - h0, alpha)


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


cdef inline void _typed_rows(Net *net, floating *Z, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Z[i] = b + sum over slots j of P[types[i, j], j*H:(j+1)*H], slot by slot in order."""
    cdef Py_ssize_t i, j, w = net.w, H = net.H
    cdef const floating *P = <const floating *>net.P
    cdef const floating *b = <const floating *>net.b
    for i in range(lo, hi):
        memcpy(Z + i * H, b, H * sizeof(floating))
        for j in range(w):
            axpy(H, 1.0, P + net.types[i * w + j] * w * H + j * H, Z + i * H)


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
    rows in parts of about PART_ROWS that the pool's threads claim one at a time
    (a thread that is not running leaves its parts to the others, rather than
    holding up the pass with a fixed half). Returns nonzero on a failed packing
    allocation."""
    if nt == 1:
        return _forward_part(net, X, Z, S, B, 0, 1)
    cdef _Fwd f
    cdef Py_ssize_t parts = max(nt, (B + PART_ROWS - 1) // PART_ROWS)
    f.nt, f.f32, f.failed, f.net, f.X, f.Z, f.S, f.B = <int>parts, floating is float, 0, net, \
        X, Z, S, B
    parallel_for(_forward_task, &f, parts, 1, nt)
    return f.failed


cdef int _forward_part(Net *net, floating *X, floating *Z, floating *S, Py_ssize_t B, int t,
                       int nt) noexcept nogil:
    """Thread t's rows of _forward_rows."""
    cdef Py_ssize_t H = net.H, D = net.D, C = net.C
    cdef Py_ssize_t lo = split_at(B, nt, t, 8), hi = split_at(B, nt, t + 1, 8)
    cdef int failed = 0
    if lo < hi:
        if net.P != NULL:
            _typed_rows(net, Z, lo, hi)
            act_fwd(net.act, Z + lo * H, Z + lo * H, (hi - lo) * H, net.alpha)
        else:
            _gather_rows(net, X, lo, hi)
            failed += _gemm(B, H, lo, hi, 0, H, D, X, 0, D, <floating *>net.W, 1, D, Z, H,
                            0) != 0
            _bias_act(Z, <floating *>net.b, lo, hi, 0, H, H, net.act, net.alpha)
        failed += _gemm(B, C, lo, hi, 0, C, H, Z, 0, H, <floating *>net.U, 1, H, S, C, 0) != 0
        add_bias(S + lo * C, <floating *>net.c, S + lo * C, hi - lo, C)
    return failed


cdef int _score_chunks(Net *net, const cnp.int64_t **base, const cnp.int64_t *types,
                       void *X, void *Z, char *S, Py_ssize_t B, Py_ssize_t chunk, int nt,
                       bint f32) noexcept nogil:
    """Both entry points' pass: rows in chunks of ``chunk`` (the work arrays X, Z
    hold one), each chunk's id windows (``base``, one per table) or type windows
    (``types``) set in ``net``; the scores into S. Nonzero on a failed packing
    allocation."""
    cdef Py_ssize_t lo = 0, nb, w = net.w, row_bytes = net.C * (4 if f32 else 8)
    cdef int k, failed = 0
    while lo < B and not failed:
        nb = min(chunk, B - lo)
        net.B = nb
        for k in range(net.ntab):
            net.ids[k] = base[k] + lo * w
        if types != NULL:
            net.types = types + lo * w
        if f32:
            failed = _forward_rows[float](net, <float *>X, <float *>Z, <float *>(S + lo * row_bytes),
                                          nb, nt)
        else:
            failed = _forward_rows[double](net, <double *>X, <double *>Z,
                                           <double *>(S + lo * row_bytes), nb, nt)
        lo += nb
    return failed


def _check_arrays(fn, named, dt, ref):
    """Each (name, array, ndim) of ``named``: a C-contiguous ndarray of dtype dt
    (float32 or float64, that of ``ref``) with that many dimensions."""
    for name, a, nd in named:
        if not isinstance(a, np.ndarray) or a.dtype != dt or dt not in (np.float32, np.float64) \
                or not a.flags.c_contiguous:
            raise TypeError(f"{fn}: {name} must be a C-contiguous float32/float64 ndarray of "
                            f"{ref}'s dtype {dt}")
        if a.ndim != nd:
            raise ValueError(f"{fn}: {name} must be {nd}-d, got shape {a.shape}")


def _out_array(fn, out, B, C, dt):
    """``out`` checked (a writeable C-contiguous (B, C) array of dtype dt), or a new one."""
    if out is None:
        return np.empty((B, C), dt)
    if out.shape != (B, C) or out.dtype != dt or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError(f"{fn}: out must be a writeable C-contiguous ({B}, {C}) {dt} array")
    return out


def window_scores(tables, ids, W, b, U, c, activation="tanh", alpha=0.01, out=None,
                  threads=None):
    """Scores S = f(X Wᵀ + b) Uᵀ + c of the window model for a batch, X being the
    concatenation, table by table, of each window's rows (ids[k]: (B, w) into
    tables[k]); gather, hidden layer and output layer in one compiled pass, rows
    split between threads. Any activation of cygrad.kernels.ACTIVATIONS.

    Returns ``out`` (B, C), allocated if None."""
    fn = "window_scores"
    if activation not in _CODES:
        raise ValueError(f"{fn}: activation must be one of {sorted(_CODES)}, got {activation!r}")
    tables = list(tables)
    if not 1 <= len(tables) <= MAX_TABLES or len(ids) != len(tables):
        raise ValueError(f"{fn}: 1 to {MAX_TABLES} tables and one id array per table")
    dt = getattr(W, "dtype", None)
    _check_arrays(fn, [("W", W, 2), ("b", b, 1), ("U", U, 2), ("c", c, 1)]
                  + [(f"tables[{k}]", t, 2) for k, t in enumerate(tables)], dt, "W")
    ids = [index_array(x, fn, f"ids[{k}]", 2, tables[k].shape[0]) for k, x in enumerate(ids)]
    cdef Py_ssize_t B = ids[0].shape[0], w = ids[0].shape[1]
    cdef Py_ssize_t H = W.shape[0], C = U.shape[0]
    cdef Py_ssize_t D = w * sum(t.shape[1] for t in tables)
    if any(x.shape != (B, w) for x in ids):
        raise ValueError(f"{fn}: every id array must have shape ({B}, {w})")
    if W.shape != (H, D) or b.shape != (H,) or U.shape != (C, H) or c.shape != (C,):
        raise ValueError(f"{fn}: W {W.shape}, b {b.shape}, U {U.shape}, c {c.shape} do not "
                         f"fit an input of size {D}")
    out = _out_array(fn, out, B, C, dt)
    if B == 0:
        return out
    # rows in chunks, so that the work arrays stay bounded whatever B is
    cdef Py_ssize_t chunk = min(B, SCORE_CHUNK)
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
    net.act, net.alpha = _CODES[activation], alpha
    net.P, net.types = NULL, NULL
    cdef int nt = pool_threads(_config.resolve(threads, chunk * H * D, MIN_WORK))
    cdef void *xp = cnp.PyArray_DATA(<cnp.ndarray>X)
    cdef void *zp = cnp.PyArray_DATA(<cnp.ndarray>Z)
    cdef char *sp = <char *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef bint f32 = dt == np.float32
    with nogil:
        failed = _score_chunks(&net, base, NULL, xp, zp, sp, B, chunk, nt, f32)
    if failed:
        raise MemoryError(f"{fn}: could not allocate the GEMM packing buffers")
    return out


def window_scores_typed(P, types, b, U, c, activation="tanh", alpha=0.01, out=None,
                        threads=None):
    """The scores of :func:`window_scores` from slot projections: ``P`` (T, w*H)
    holds, for each of T token types (the distinct tokens of a corpus, and the
    pads), the products of its input vector with the hidden layer's columns of
    each window slot j in columns j*H:(j+1)*H; ``types`` (B, w) names each
    window's token types. S = f(b + sum_j P[types[:, j], j]) Uᵀ + c: the same
    function, with the first layer's multiply-adds done once per type rather
    than once per window (rounding differs from window_scores: the dot products
    are summed slot by slot).

    Returns ``out`` (B, C), allocated if None."""
    fn = "window_scores_typed"
    if activation not in _CODES:
        raise ValueError(f"{fn}: activation must be one of {sorted(_CODES)}, got {activation!r}")
    dt = getattr(P, "dtype", None)
    _check_arrays(fn, [("P", P, 2), ("b", b, 1), ("U", U, 2), ("c", c, 1)], dt, "P")
    types = index_array(types, fn, "types", 2, P.shape[0])
    cdef Py_ssize_t B = types.shape[0], w = types.shape[1]
    cdef Py_ssize_t H = b.shape[0], C = U.shape[0]
    if H < 1 or w < 1 or P.shape[1] != w * H:
        raise ValueError(f"{fn}: P {P.shape} must have w*H = {w}*{H} columns for types "
                         f"{types.shape} and b {b.shape}")
    if U.shape[1] != H or c.shape != (C,):
        raise ValueError(f"{fn}: U {U.shape} and c {c.shape} do not fit {H} hidden units")
    out = _out_array(fn, out, B, C, dt)
    if B == 0:
        return out
    cdef Py_ssize_t chunk = min(B, SCORE_CHUNK)
    Z = np.empty((chunk, H), dt)
    cdef Net net
    net.ntab, net.w, net.D, net.H, net.C = 0, w, 0, H, C
    net.W = NULL
    net.P = cnp.PyArray_DATA(<cnp.ndarray>P)
    net.b = cnp.PyArray_DATA(<cnp.ndarray>b)
    net.U = cnp.PyArray_DATA(<cnp.ndarray>U)
    net.c = cnp.PyArray_DATA(<cnp.ndarray>c)
    net.act, net.alpha = _CODES[activation], alpha
    cdef const cnp.int64_t *base = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>types)
    cdef int failed = 0
    cdef int nt = pool_threads(_config.resolve(threads, chunk * H * (w + C), MIN_WORK // 20))
    cdef void *zp = cnp.PyArray_DATA(<cnp.ndarray>Z)
    cdef char *sp = <char *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef bint f32 = dt == np.float32
    with nogil:
        failed = _score_chunks(&net, NULL, base, NULL, zp, sp, B, chunk, nt, f32)
    if failed:
        raise MemoryError(f"{fn}: could not allocate the GEMM packing buffers")
    return out
