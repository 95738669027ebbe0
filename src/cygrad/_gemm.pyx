# cython: language_level=3
"""Matrix products for backprop: C (+)= op(A) op(B), op = identity or transpose.

Design: C is split between threads by ownership, into row ranges (or column
ranges when C has too few rows to go round); each element of C is computed by
one thread, summing over the inner dimension in one fixed order, so the result
is bitwise the same for any thread count. Transposes are never materialised:
op(A) is read through its strides, and a transposed B is packed panel by panel
(256 x 256) inside the tile routine. A Bᵀ with few rows of A (the forward
product Z = X Wᵀ of a small batch) uses contiguous dot products instead.
This is the correct, parallel baseline; a packed register-blocked GEMM is the
next step.
"""

import numpy as np
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

from cygrad._common cimport (float_array, inplace_array, same_dtype, out_array,
                             threads_for, is_f32)

cnp.import_array()

cdef extern from "bp_gemm.h" nogil:
    void bp_gemm_tile_f32(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1,
                          Py_ssize_t k, const float *A, Py_ssize_t ars, Py_ssize_t acs,
                          const float *B, Py_ssize_t brs, Py_ssize_t bcs, float *C,
                          Py_ssize_t ldc, int accumulate, float *work)
    void bp_gemm_tile_f64(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1,
                          Py_ssize_t k, const double *A, Py_ssize_t ars, Py_ssize_t acs,
                          const double *B, Py_ssize_t brs, Py_ssize_t bcs, double *C,
                          Py_ssize_t ldc, int accumulate, double *work)
    void bp_gemm_dot_f32(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1,
                         Py_ssize_t k, const float *A, Py_ssize_t lda, const float *B,
                         Py_ssize_t ldb, float *C, Py_ssize_t ldc, int accumulate)
    void bp_gemm_dot_f64(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1,
                         Py_ssize_t k, const double *A, Py_ssize_t lda, const double *B,
                         Py_ssize_t ldb, double *C, Py_ssize_t ldc, int accumulate)
    int BP_GEMM_JB, BP_GEMM_KB

cdef enum:
    MIN_FLOPS = 65536      # multiply-adds below which one thread does the product


cdef void _gemm(const floating[:, ::1] A, bint ta, const floating[:, ::1] B, bint tb,
                floating[:, ::1] C, bint acc, Py_ssize_t k, int nt,
                floating[::1] work) noexcept nogil:
    cdef Py_ssize_t m = C.shape[0], n = C.shape[1]
    cdef Py_ssize_t lda = A.shape[1], ldb = B.shape[1]
    cdef Py_ssize_t ars = 1 if ta else lda, acs = lda if ta else 1
    cdef Py_ssize_t brs = 1 if tb else ldb, bcs = ldb if tb else 1
    cdef Py_ssize_t rc, cc, i0, i1, j0, j1
    cdef bint by_rows = m >= 4 * nt
    cdef bint dot = tb and not ta and k > 0 and (
        m <= 16 or n * k * <Py_ssize_t>sizeof(floating) <= 512 * 1024)
    cdef int t
    cdef const floating *a = &A[0, 0] if A.shape[0] * A.shape[1] > 0 else NULL
    cdef const floating *b = &B[0, 0] if B.shape[0] * B.shape[1] > 0 else NULL
    cdef floating *wk
    if m == 0 or n == 0:
        return
    rc = (m + nt - 1) // nt
    rc = (rc + 3) // 4 * 4
    cc = (n + nt - 1) // nt
    cc = (cc + 15) // 16 * 16
    for t in prange(nt, num_threads=nt, schedule="static", use_threads_if=nt > 1):
        if by_rows:
            i0 = t * rc
            i1 = min(m, i0 + rc)
            j0 = 0
            j1 = n
        else:
            i0 = 0
            i1 = m
            j0 = t * cc
            j1 = min(n, j0 + cc)
        if i0 < i1 and j0 < j1:
            wk = &work[t * BP_GEMM_JB * BP_GEMM_KB] if work.shape[0] > 0 else NULL
            if dot:
                if floating is float:
                    bp_gemm_dot_f32(i0, i1, j0, j1, k, a, lda, b, ldb, &C[0, 0], n, acc)
                else:
                    bp_gemm_dot_f64(i0, i1, j0, j1, k, a, lda, b, ldb, &C[0, 0], n, acc)
            else:
                if floating is float:
                    bp_gemm_tile_f32(i0, i1, j0, j1, k, a, ars, acs, b, brs, bcs,
                                     &C[0, 0], n, acc, wk)
                else:
                    bp_gemm_tile_f64(i0, i1, j0, j1, k, a, ars, acs, b, brs, bcs,
                                     &C[0, 0], n, acc, wk)


cdef object _matmul(str fn, a, b, bint trans_a, bint trans_b, out, bint accumulate):
    a = float_array(a, fn, "a", 2)
    b = float_array(b, fn, "b", 2)
    same_dtype(a, b, fn, "a", "b")
    cdef Py_ssize_t m, k, kb, n
    m, k = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
    kb, n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if k != kb:
        raise ValueError(
            f"{fn}: inner dimensions differ: op(a) is {m}x{k} (a{a.shape}, trans_a={trans_a}) "
            f"and op(b) is {kb}x{n} (b{b.shape}, trans_b={trans_b})")
    if accumulate:
        if out is None:
            raise ValueError(f"{fn}: accumulate=True needs out= (the array to add into)")
        out = inplace_array(out, fn, "out", 2)
    out = out_array(out, (m, n), a.dtype, fn)
    if (np.may_share_memory(out, a) or np.may_share_memory(out, b)) and k > 0 and m * n > 0:
        raise ValueError(f"{fn}: out must not overlap a or b")
    cdef int nt = threads_for(m * n * k, MIN_FLOPS)
    cdef bint packs = trans_b and not (not trans_a and (
        m <= 16 or n * k * a.itemsize <= 512 * 1024))
    work = np.empty(nt * BP_GEMM_JB * BP_GEMM_KB if packs and k > 0 else 0, dtype=a.dtype)
    if is_f32(a):
        _gemm[float](a, trans_a, b, trans_b, out, accumulate, k, nt, work)
    else:
        _gemm[double](a, trans_a, b, trans_b, out, accumulate, k, nt, work)
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
