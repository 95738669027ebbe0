# cython: language_level=3
"""Embedding windows: gather rows into concatenated windows, scatter their
gradients back, and SGD on the touched rows (a scatter of -lr times the gradient;
every other optimiser step, dense or on a table's rows, is in cygrad.kernels._optim).

Design: gather is split by output rows (windows), in fixed chunks of about GRAIN
elements claimed by the pool's threads (cygrad.kernels._parallel). Scatter-add and the
sparse SGD update are split by *table row ownership*: class t of nt handles
exactly the slots whose row id lies in a block of 16 rows numbered b with
b % nt == t, scanning the slots in (window, position) order (a scratch list of
its slots per class). No two threads ever write one row, and every row receives
its updates in the same order whatever the thread count, so results are bitwise
identical for 1, 2, ... threads. Indices are range-checked once at the wrapper.
"""

import numpy as np
cimport numpy as cnp
from cython cimport floating
from libc.string cimport memcpy

from cygrad.kernels._common cimport (float_array, inplace_array, same_dtype, out_array,
                             index_array, threads_for, is_f32, no_overlap)
from cygrad.kernels._parallel cimport parallel_for, pool_threads

cnp.import_array()

from cygrad.kernels._nogil cimport axpy

cdef enum:
    GRAIN = 16384          # elements per chunk of a threaded loop (fixed, whatever the threads)
    MIN_ELEMENTS = 2 * GRAIN
    MIN_SCATTER = 4194304  # random-row updates are latency-bound: threads only for huge batches
    ROW_BLOCK = 16


cdef struct _Emb:
    int f32
    void *table
    Py_ssize_t d, w, n
    const cnp.int64_t *win
    void *X                 # gathered windows (gather) or slot gradients (scatter)
    double alpha
    Py_ssize_t *scratch     # scatter: n slots per ownership class


cdef void _gather_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """Windows [lo, hi): X[i] = the rows of window i, concatenated."""
    cdef _Emb *e = <_Emb *>ctx
    cdef Py_ssize_t i, sz = 4 if e.f32 else 8, row = e.d * sz
    cdef char *X = <char *>e.X
    cdef const char *tab = <const char *>e.table
    for i in range(lo * e.w, hi * e.w):
        memcpy(X + i * row, tab + e.win[i] * row, row)


cdef void _scatter_rows(floating *table, Py_ssize_t d, const cnp.int64_t *win,
                        const Py_ssize_t *slots, Py_ssize_t n, const floating *dX,
                        double alpha) noexcept nogil:
    cdef Py_ssize_t c, j
    for c in range(n):
        j = slots[c] if slots != NULL else c
        axpy(d, alpha, dX + j * d, table + win[j] * d)


cdef void _scatter_owned(int t, int nt, floating *table, Py_ssize_t d,
                         const cnp.int64_t *win, Py_ssize_t n, const floating *dX,
                         double alpha, Py_ssize_t *mine) noexcept nogil:
    """Thread t's share: first list, branch-free and in slot order, the slots whose
    row it owns (a test that would mispredict half the time as a branch), then
    update those rows."""
    cdef Py_ssize_t j, cnt = 0
    for j in range(n):
        mine[cnt] = j
        cnt = cnt + ((win[j] // ROW_BLOCK) % nt == t)
    _scatter_rows(table, d, win, mine, cnt, dX, alpha)


cdef void _scatter_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """Ownership classes [lo, hi) of nt = (the loop's size): table[win[j]] += alpha *
    dX[j] for the slots j whose row lies in a block b of ROW_BLOCK rows with
    b % nt == class: whole blocks, so that threads do not share the cache lines
    where one row ends and the next begins."""
    cdef _Emb *e = <_Emb *>ctx
    cdef Py_ssize_t c
    cdef int nparts = <int>(e.scratch[0])
    for c in range(lo, hi):
        if e.f32:
            _scatter_owned[float](<int>c, nparts, <float *>e.table, e.d, e.win, e.n,
                                  <const float *>e.X, e.alpha, e.scratch + 1 + c * e.n)
        else:
            _scatter_owned[double](<int>c, nparts, <double *>e.table, e.d, e.win, e.n,
                                   <const double *>e.X, e.alpha, e.scratch + 1 + c * e.n)


def embedding_gather(table, windows, out=None):
    """Concatenate the embedding rows of each window: ``X[i] = [table[windows[i, 0]], ...]``.

    Parameters
    ----------
    table : ndarray (V, d) of float32 or float64
    windows : ndarray (B, w) of integers in [0, V)
    out : ndarray (B, w*d), optional

    Returns
    -------
    X : ndarray (B, w*d)

    Raises
    ------
    TypeError
        Non-float table, non-integer windows.
    ValueError
        Wrong ndim, a bad ``out``.
    IndexError
        A window index outside [0, V).
    """
    fn = "embedding_gather"
    table = float_array(table, fn, "table", 2)
    windows = index_array(windows, fn, "windows", 2, table.shape[0])
    cdef Py_ssize_t B = windows.shape[0], w = windows.shape[1], d = table.shape[1]
    out = out_array(out, (B, w * d), table.dtype, fn)
    no_overlap(out, "out", table, "table", fn, False)
    cdef int nt = threads_for(B * w * d, MIN_ELEMENTS)
    cdef _Emb e
    e.f32, e.d, e.w = is_f32(table), d, w
    e.table = cnp.PyArray_DATA(<cnp.ndarray>table)
    e.X = cnp.PyArray_DATA(<cnp.ndarray>out)
    e.win = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>windows)
    if d == 0 or w == 0:
        return out
    with nogil:
        parallel_for(_gather_task, &e, B, max(1, GRAIN // (w * d)), nt)
    return out


cdef object _scatter_checked(str fn, str tname, table, windows, dX, double alpha):
    table = inplace_array(table, fn, tname, 2)
    windows = index_array(windows, fn, "windows", 2, table.shape[0])
    dX = float_array(dX, fn, "dX", 2)
    same_dtype(table, dX, fn, tname, "dX")
    cdef Py_ssize_t B = windows.shape[0], w = windows.shape[1], d = table.shape[1]
    if dX.shape != (B, w * d):
        raise ValueError(f"{fn}: dX must have shape {(B, w * d)} for windows {windows.shape} "
                         f"and {tname} {table.shape}, got {dX.shape}")
    no_overlap(table, tname, dX, "dX", fn, False)
    cdef int nt = pool_threads(threads_for(B * w * d, MIN_SCATTER))
    cdef _Emb e
    e.f32, e.d, e.n, e.alpha = is_f32(table), d, B * w, alpha
    e.table = cnp.PyArray_DATA(<cnp.ndarray>table)
    e.X = cnp.PyArray_DATA(<cnp.ndarray>dX)
    e.win = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>windows)
    if d == 0:
        return table
    if nt == 1:
        with nogil:
            if e.f32:
                _scatter_rows[float](<float *>e.table, d, e.win, NULL, e.n, <const float *>e.X,
                                     alpha)
            else:
                _scatter_rows[double](<double *>e.table, d, e.win, NULL, e.n,
                                      <const double *>e.X, alpha)
        return table
    # one ownership class per thread; the classes' slot lists follow the count
    scratch = np.empty(1 + nt * e.n, dtype=np.intp)
    e.scratch = <Py_ssize_t *>cnp.PyArray_DATA(<cnp.ndarray>scratch)
    e.scratch[0] = nt
    with nogil:
        parallel_for(_scatter_task, &e, nt, 1, nt)
    return table


def embedding_scatter_add(grad_table, windows, dX):
    """Add each window slot's gradient into its table row, in place.

    ``grad_table[windows[i, s]] += dX[i, s*d:(s+1)*d]`` for every slot; repeated
    indices accumulate. Race-free and bitwise deterministic for any thread
    count (rows are owned by threads; each row's updates keep slot order).

    Parameters
    ----------
    grad_table : ndarray (V, d), C-contiguous, writeable, float32 or float64
    windows : ndarray (B, w) of integers in [0, V)
    dX : ndarray (B, w*d), same dtype as ``grad_table``

    Returns
    -------
    grad_table

    Raises
    ------
    TypeError, ValueError, IndexError
        As for embedding_gather; also a non-contiguous or read-only ``grad_table``.
    """
    return _scatter_checked("embedding_scatter_add", "grad_table", grad_table, windows, dX,
                            1.0)


def embedding_sgd_update(table, windows, dX, lr):
    """Sparse SGD on the rows a batch touched: ``table[windows[i, s]] -= lr * dX[i, s-th slot]``.

    Only the rows present in ``windows`` are read or written; a row that appears
    in several slots receives each slot's update, in slot order.

    Parameters
    ----------
    table : ndarray (V, d), C-contiguous, writeable, float32 or float64
    windows : ndarray (B, w) of integers in [0, V)
    dX : ndarray (B, w*d), same dtype as ``table``
    lr : float, the learning rate

    Returns
    -------
    table

    Raises
    ------
    TypeError, ValueError, IndexError
        As for embedding_scatter_add; also a non-finite ``lr``.
    """
    lr = float(lr)
    if not np.isfinite(lr):
        raise ValueError(f"embedding_sgd_update: lr must be finite, got {lr}")
    return _scatter_checked("embedding_sgd_update", "table", table, windows, dX, -lr)
