# cython: language_level=3
"""Matrix products for backprop: C (+)= op(A) op(B), op = identity or transpose.

Design: C is split between threads by ownership, into row ranges (or column
ranges when C has too few rows to go round), claimed from the pool
(cygrad.kernels._parallel); each thread runs the packed,
cache-blocked GEMM of csrc/bp_gemm_kernels.c on its block: panels of op(A) and
op(B) packed into contiguous buffers (transposes are absorbed by the packing,
never materialised; with a row split and an op(B) of over 2 MB the threads pack
each slice of op(B) together, once, and each packs its own rows of op(A)),
register-blocked micro-kernels for AVX-512, AVX2+FMA or portable C chosen at run
time. Each element of C is summed over the inner dimension in one fixed order, so the result is bitwise the same for any thread
count. A Bᵀ with 1 to 3 rows of A runs, on AVX-512 in float32, a one-row kernel
(eight dot products at a time, reduced together); with at most 8 rows of A
(the forward product Z = X Wᵀ of a very small batch) or at most 16 columns (a
small output layer) it uses 4 x 4 tiles of contiguous dot products instead:
packing would transpose all of B on every call, which costs more than the
product there.
Likewise op(A) B with at most 4 rows of A (dX = dZ W for one example) keeps
each row's strip of C in registers over the whole inner dimension while B's
rows stream past (on AVX-512; elsewhere it accumulates rows of B into C), and
with an inner dimension of at most 2 (the rank-1 update dW += δ xᵀ of one
example) accumulates rows of B into C directly; op(A) B with at most 16 rows
(dX of a small batch) or an inner dimension of at most 64 (its dW) runs, on
AVX-512, register tiles over the unpacked operands (8 rows x 32 columns, or
4 rows x 64 columns when the inner dimension is short). The method is
chosen from the product's shape alone (csrc/bp_gemm.h), never from a thread's
share of it.
"""

import numpy as np
cimport numpy as cnp
from cython cimport floating
from cygrad.kernels._parallel cimport bp_set_flag, parallel_for, pool_threads

from cygrad.kernels._common cimport (float_array, inplace_array, same_dtype, out_array, threads_for,
                             is_f32)

cnp.import_array()

from cygrad.kernels._csrc cimport (bp_for_fn, bp_gemm_block_f32, bp_gemm_block_f64, bp_gemm_path, bp_gemm_paths,
                           bp_gemm_reset_path, bp_gemm_uses_packed_f32, bp_gemm_uses_packed_f64,
                           bp_gemm_shared_f32, bp_gemm_shared_f64)

cdef enum:
    MIN_FLOPS = 131072     # multiply-adds below which one thread does the product (a
                           # B = 1 window product, 75,000, takes ~3 µs: less than waking a thread)
    ROW_ALIGN = 8          # thread row splits on multiples of 8 rows (the AVX-512 MR; keeps
                           # the dot kernels' 4-row groups, hence the bits, split-independent)
    COL_ALIGN = 32         # ... and column splits on multiples of every NR
    MIN_ROWS = 48          # rows per thread below which C is split by columns
    SHARE_B_BYTES = 2097152  # op(B) from this size (past a core's L2) is packed once for
                             # all threads; a smaller one each thread packs for itself


def _gemm_path():
    """(path in use, paths this CPU supports) for the GEMM micro-kernel."""
    return bp_gemm_path().decode(), bp_gemm_paths().decode().split(",")


def _force_gemm_path(name=None):
    """Use the micro-kernel path ``name`` (None: the best one) from the next call on.
    For tests and comparisons; sets CYGRAD_GEMM_PATH for this process."""
    import os
    if name is None:
        os.environ.pop("CYGRAD_GEMM_PATH", None)
    else:
        if name not in _gemm_path()[1]:
            raise ValueError(f"GEMM path {name!r} is not supported here; "
                             f"choose from {_gemm_path()[1]}")
        os.environ["CYGRAD_GEMM_PATH"] = name
    bp_gemm_reset_path()
    return bp_gemm_path().decode()


cdef int gemm_block_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1,
                        Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t k, const float *A, int ta,
                        Py_ssize_t lda, const float *B, int tb, Py_ssize_t ldb, float *C,
                        Py_ssize_t ldc, int accumulate) noexcept nogil:
    return bp_gemm_block_f32(m, n, i0, i1, j0, j1, k, A, ta, lda, B, tb, ldb, C, ldc,
                             accumulate)


cdef int gemm_block_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t i0, Py_ssize_t i1,
                        Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t k, const double *A, int ta,
                        Py_ssize_t lda, const double *B, int tb, Py_ssize_t ldb, double *C,
                        Py_ssize_t ldc, int accumulate) noexcept nogil:
    return bp_gemm_block_f64(m, n, i0, i1, j0, j1, k, A, ta, lda, B, tb, ldb, C, ldc,
                             accumulate)


cdef struct _Gemm:
    int f32, ta, tb, acc, by_rows, failed
    const void *a
    const void *b
    void *c
    Py_ssize_t lda, ldb, m, n, k


cdef void _gemm_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """Rows (or columns) [lo, hi) of C."""
    cdef _Gemm *g = <_Gemm *>ctx
    cdef Py_ssize_t i0 = 0, i1 = g.m, j0 = 0, j1 = g.n
    cdef int bad
    if g.by_rows:
        i0, i1 = lo, hi
    else:
        j0, j1 = lo, hi
    if g.f32:
        bad = bp_gemm_block_f32(g.m, g.n, i0, i1, j0, j1, g.k, <const float *>g.a, g.ta, g.lda,
                                <const float *>g.b, g.tb, g.ldb, <float *>g.c, g.n, g.acc)
    else:
        bad = bp_gemm_block_f64(g.m, g.n, i0, i1, j0, j1, g.k, <const double *>g.a, g.ta,
                                g.lda, <const double *>g.b, g.tb, g.ldb, <double *>g.c, g.n,
                                g.acc)
    if bad:
        bp_set_flag(&g.failed)


cdef int _gemm(_Gemm *g, int nt) noexcept nogil:
    """C (m x n, C-contiguous) (+)= op(A) op(B) on at most nt threads of the pool,
    in one chunk of rows of C per thread, or of columns when C has too few rows
    to go round (the chunks' bits do not depend on the split). Returns nonzero if
    a packing buffer could not be allocated."""
    cdef Py_ssize_t m = g.m, n = g.n, rc, cc
    g.failed = 0
    if m == 0 or n == 0:
        return 0
    nt = pool_threads(nt)
    if nt == 1:     # no loop at all (also while the pool's helpers would not come)
        g.by_rows = 1
        _gemm_task(g, 0, m, 0)
        return g.failed
    rc = (m + nt - 1) // nt
    rc = (rc + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    cc = (n + nt - 1) // nt
    cc = (cc + COL_ALIGN - 1) // COL_ALIGN * COL_ALIGN
    # by rows when there are enough of them and the largest share is no larger
    # than by columns (the few-row kernels want all rows against a column strip)
    g.by_rows = m >= MIN_ROWS * nt and min(rc, m) * n <= m * min(cc, n)
    if g.by_rows and g.k * n * (4 if g.f32 else 8) >= SHARE_B_BYTES:
        # the packed GEMM shares each packed slice of a large B between the threads
        if g.f32:
            if bp_gemm_uses_packed_f32(m, n, g.k, g.ta, g.tb):
                return bp_gemm_shared_f32(m, n, g.k, <const float *>g.a, g.ta, g.lda,
                                          <const float *>g.b, g.tb, g.ldb, <float *>g.c, n,
                                          g.acc, nt, <bp_for_fn>parallel_for) != 0
        else:
            if bp_gemm_uses_packed_f64(m, n, g.k, g.ta, g.tb):
                return bp_gemm_shared_f64(m, n, g.k, <const double *>g.a, g.ta, g.lda,
                                          <const double *>g.b, g.tb, g.ldb, <double *>g.c, n,
                                          g.acc, nt, <bp_for_fn>parallel_for) != 0
    if g.by_rows:
        parallel_for(_gemm_task, g, m, rc, nt)
    else:
        parallel_for(_gemm_task, g, n, cc, nt)
    return g.failed


cdef inline bint _overlap(object x, object y):
    """Whether two C-contiguous arrays' memory ranges intersect (exact for them)."""
    cdef char *px = <char *>cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef char *py = <char *>cnp.PyArray_DATA(<cnp.ndarray>y)
    cdef Py_ssize_t nx = cnp.PyArray_NBYTES(<cnp.ndarray>x)
    cdef Py_ssize_t ny = cnp.PyArray_NBYTES(<cnp.ndarray>y)
    return nx > 0 and ny > 0 and px < py + ny and py < px + nx


cdef object _matmul(str fn, a, b, bint trans_a, bint trans_b, out, bint accumulate):
    a = float_array(a, fn, "a", 2)
    b = float_array(b, fn, "b", 2)
    same_dtype(a, b, fn, "a", "b")
    cdef cnp.npy_intp *da = cnp.PyArray_DIMS(<cnp.ndarray>a)
    cdef cnp.npy_intp *db = cnp.PyArray_DIMS(<cnp.ndarray>b)
    cdef Py_ssize_t m = da[1] if trans_a else da[0], k = da[0] if trans_a else da[1]
    cdef Py_ssize_t kb = db[1] if trans_b else db[0], n = db[0] if trans_b else db[1]
    if k != kb:
        raise ValueError(
            f"{fn}: inner dimensions differ: op(a) is {m}x{k} (a{a.shape}, trans_a={trans_a}) "
            f"and op(b) is {kb}x{n} (b{b.shape}, trans_b={trans_b})")
    cdef bint given = out is not None
    if accumulate:
        if not given:
            raise ValueError(f"{fn}: accumulate=True needs out= (the array to add into)")
        out = inplace_array(out, fn, "out", 2)
    out = out_array(out, (m, n), a.dtype, fn)
    if given and k > 0 and (_overlap(out, a) or _overlap(out, b)):
        raise ValueError(f"{fn}: out must not overlap a or b")
    cdef int nt = threads_for(m * n * k, MIN_FLOPS)
    cdef _Gemm g
    g.f32, g.ta, g.tb, g.acc = is_f32(a), trans_a, trans_b, accumulate
    g.a, g.b = cnp.PyArray_DATA(<cnp.ndarray>a), cnp.PyArray_DATA(<cnp.ndarray>b)
    g.c = cnp.PyArray_DATA(<cnp.ndarray>out)
    g.lda, g.ldb, g.m, g.n, g.k = da[1], db[1], m, n, k
    cdef int failed
    with nogil:
        failed = _gemm(&g, nt)
    if failed:
        raise MemoryError(f"{fn}: could not allocate the packing buffers")
    return out


def matmul(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
    """Matrix product ``op(a) @ op(b)``, op(x) = x.T when the flag is set.

    The three products of a dense layer's backprop, with X: B x D, W: H x D,
    dZ: B x H, are ``matmul(X, W, trans_b=True)`` (Z = X Wᵀ),
    ``matmul(dZ, W)`` (dX = dZ W) and ``matmul(dZ, X, trans_a=True)``
    (dW = dZᵀ X). No transpose is materialised.

    Parameters
    ----------
    a : ndarray (m, k), or (k, m) with trans_a; float32 or float64
    b : ndarray (k, n), or (n, k) with trans_b; same dtype as ``a``
        Non-contiguous inputs are copied to C order first.
    trans_a, trans_b : bool
    out : ndarray (m, n), optional
        C-contiguous, writeable, same dtype, not overlapping ``a`` or ``b``.
    accumulate : bool
        If True, add the product into ``out`` (which is then required).

    Returns
    -------
    ndarray (m, n)

    Raises
    ------
    TypeError
        Non-float or mixed dtypes.
    ValueError
        Not 2-D, inner dimensions differ, or a bad ``out``.
    """
    return _matmul("matmul", a, b, trans_a, trans_b, out, accumulate)


def outer_accumulate(dW, delta, x):
    """Accumulate the weight gradient ``dW += delta xᵀ`` in place.

    For one example (``delta``: (H,), ``x``: (D,)) this is the outer product;
    for a batch (``delta``: (B, H), ``x``: (B, D)) it is the sum of the
    examples' outer products, ``dW += deltaᵀ x``. Each row of dW is owned by
    one thread.

    Parameters
    ----------
    dW : ndarray (H, D), C-contiguous, writeable, float32 or float64
    delta : ndarray (H,) or (B, H), same dtype
    x : ndarray (D,) or (B, D), same dtype and ndim as ``delta``

    Returns
    -------
    dW

    Raises
    ------
    TypeError, ValueError
        Mixed or non-float dtypes; mismatched shapes or ndim.
    """
    fn = "outer_accumulate"
    dW = inplace_array(dW, fn, "dW", 2)
    delta = float_array(delta, fn, "delta", -1)
    x = float_array(x, fn, "x", -1)
    same_dtype(dW, delta, fn, "dW", "delta")
    same_dtype(dW, x, fn, "dW", "x")
    if delta.ndim != x.ndim or delta.ndim not in (1, 2):
        raise ValueError(f"{fn}: delta and x must both be 1-D (one example) or both 2-D "
                         f"(a batch), got shapes {delta.shape} and {x.shape}")
    shapes = f"delta {delta.shape} and x {x.shape}"
    if delta.ndim == 1:
        delta = delta.reshape(1, -1)
        x = x.reshape(1, -1)
    if delta.shape[0] != x.shape[0]:
        raise ValueError(f"{fn}: delta and x must have the same batch size, got {shapes}")
    if dW.shape != (delta.shape[1], x.shape[1]):
        raise ValueError(f"{fn}: dW must have shape {(delta.shape[1], x.shape[1])} for "
                         f"{shapes}, got {dW.shape}")
    _matmul(fn, delta, x, True, False, dW, True)
    return dW
