# cython: language_level=3
"""Embedding bags over windows: each window slot holds a bag id, bag b is the
rows items[ptr[b]:ptr[b + 1]] of a table, and the slot's vector is the mean of
those rows (zero for an empty bag). fastText's sum of character n-gram vectors,
for the window model (cygrad.ner: hashed n-grams of each word).

Design: the output is split by windows among the pool's threads (each window's
w * d outputs belong to one thread); a slot's mean is summed in double, items
in order, so results do not depend on the thread count. The backward hands
out the gradient as row-sparse pieces: every item of every slot's bag receives
the slot's gradient divided by the bag's size (cygrad.graph.SparseRows sums
repeated rows). Checks run once at the Python boundary: bag ids within
[0, nbags), ptr non-decreasing from 0 to len(items), items within the table.
"""

import numpy as np
cimport numpy as cnp
from cygrad.kernels._parallel cimport parallel_for

from cygrad.kernels._common cimport float_array, index_array, threads_for, is_f32

cnp.import_array()


cdef enum:
    ROW_GRAIN = 64      # windows per chunk


cdef struct _Bags:
    const void *table
    const cnp.int64_t *win
    const cnp.int64_t *ptr
    const cnp.int64_t *items
    void *out
    Py_ssize_t w, d
    int f32


cdef void bag_rows(const void *table, const cnp.int64_t *win, const cnp.int64_t *ptr,
                   const cnp.int64_t *items, void *out, Py_ssize_t ldo, Py_ssize_t lo,
                   Py_ssize_t hi, Py_ssize_t w, Py_ssize_t d, bint f32) noexcept nogil:
    """Windows [lo, hi): out row i (ldo apart) = the means of the bags of win[i, :w],
    each summed in double, items in order (also the compiled plans' loop)."""
    cdef Py_ssize_t i, j, q, a, z, k
    cdef cnp.int64_t bag
    cdef double acc[256]
    cdef double inv
    cdef Py_ssize_t k0, kn
    for i in range(lo, hi):
        for j in range(w):
            bag = win[i * w + j]
            a, z = ptr[bag], ptr[bag + 1]
            inv = 1.0 / (z - a) if z > a else 0.0
            k0 = 0
            while k0 < d:           # columns in blocks of 256 (acc on the stack)
                kn = min(d - k0, 256)
                for k in range(kn):
                    acc[k] = 0.0
                for q in range(a, z):
                    if f32:
                        for k in range(kn):
                            acc[k] += (<const float *>table)[items[q] * d + k0 + k]
                    else:
                        for k in range(kn):
                            acc[k] += (<const double *>table)[items[q] * d + k0 + k]
                if f32:
                    for k in range(kn):
                        (<float *>out)[i * ldo + j * d + k0 + k] = <float>(acc[k] * inv)
                else:
                    for k in range(kn):
                        (<double *>out)[i * ldo + j * d + k0 + k] = acc[k] * inv
                k0 += kn


cdef void _fwd_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef _Bags *b = <_Bags *>ctx
    bag_rows(b.table, b.win, b.ptr, b.items, b.out, b.w * b.d, lo, hi, b.w, b.d, b.f32)


cdef object _check(str fn, object table, object windows, object ptr, object items):
    table = float_array(table, fn, "table", 2)
    items = index_array(items, fn, "items", 1, table.shape[0])
    ptr = index_array(ptr, fn, "ptr", 1, items.shape[0] + 1)
    if ptr.shape[0] < 1 or ptr[0] != 0 or ptr[-1] != items.shape[0] \
            or np.any(np.diff(ptr) < 0):
        raise ValueError(f"{fn}: ptr must rise from 0 to {items.shape[0]} (the number of "
                         f"items)")
    windows = index_array(windows, fn, "windows", 2, ptr.shape[0] - 1)
    return table, windows, ptr, items


def embedding_bag_windows(table, windows, ptr, items):
    """``out[i, j*d:(j+1)*d]`` = mean of ``table[items[ptr[b]:ptr[b+1]]]`` for
    ``b = windows[i, j]`` (zeros for an empty bag).

    Parameters
    ----------
    table : ndarray (V, d) of float32 or float64
    windows : integer ndarray (B, w) of bag ids in [0, len(ptr) - 1)
    ptr : integer ndarray (nbags + 1,), non-decreasing from 0 to len(items)
    items : integer ndarray (nnz,) of row ids in [0, V)

    Returns
    -------
    ndarray (B, w * d), the table's dtype
    """
    fn = "embedding_bag_windows"
    table, windows, ptr, items = _check(fn, table, windows, ptr, items)
    cdef Py_ssize_t B = windows.shape[0], w = windows.shape[1], d = table.shape[1]
    out = np.empty((B, w * d), dtype=table.dtype)
    cdef _Bags b
    b.table = cnp.PyArray_DATA(<cnp.ndarray>table)
    b.win = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>windows)
    b.ptr = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>ptr)
    b.items = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>items)
    b.out = cnp.PyArray_DATA(<cnp.ndarray>out)
    b.w, b.d, b.f32 = w, d, is_f32(table)
    cdef Py_ssize_t work = B * w * d * 8
    cdef int nt = threads_for(work, 200000)
    with nogil:
        parallel_for(_fwd_task, &b, B, ROW_GRAIN, nt)
    return out


def embedding_bag_backward(grad, windows, ptr, items):
    """The gradient of :func:`embedding_bag_windows` as row-sparse pieces:
    ``(rows, values)`` with ``values[k]`` the gradient for table row ``rows[k]``
    (repeated rows add up): every item of slot (i, j)'s bag receives
    ``grad[i, j*d:(j+1)*d] / len(bag)``. Bag ids and ptr are trusted to be the
    forward's (checked there)."""
    grad = np.asarray(grad)
    windows = np.asarray(windows, dtype=np.int64)
    w = windows.shape[1]
    win = windows.reshape(-1)
    if grad.shape[0] != windows.shape[0] or (w and grad.shape[1] % w):
        raise ValueError(f"embedding_bag_backward: grad of shape {grad.shape} does not fit "
                         f"windows of shape {windows.shape}")
    d = grad.shape[1] // w if w else 0
    g = grad.reshape(win.size, d)
    lens = ptr[win + 1] - ptr[win]
    total = int(lens.sum())
    # the items of each slot's bag, slots in order: starts repeated, plus the
    # position within the bag
    first = np.repeat(ptr[win], lens)
    within = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
    rows = items[first + within]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(lens > 0, 1.0 / np.maximum(lens, 1), 0.0).astype(g.dtype)
    values = np.repeat(g * scale[:, None], lens, axis=0)
    return rows, values
