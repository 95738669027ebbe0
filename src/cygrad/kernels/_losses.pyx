# cython: language_level=3
"""Losses with their gradients, fused: softmax cross-entropy, the logistic
loss and the max-margin loss of CS224N lecture 3.

Design: softmax cross-entropy runs over fixed blocks of 256 rows (one row is
read once: max, exponentials into the gradient row, normalise); the blocks are
claimed by the pool's threads (cygrad.kernels._parallel), each block's loss is summed in double
into its own slot, and the slots are added in block order, so the mean loss
is bitwise the same for any thread count. Labels are range-checked at the
wrapper.
"""

import numpy as np
cimport numpy as cnp
from cython cimport floating

from cygrad.kernels._common cimport (float_array, same_dtype, out_array, index_array, no_overlap,
                             threads_for, is_f32)
from cygrad.kernels._parallel cimport parallel_for
from cygrad.kernels._nogil cimport (at, weighted_xent_rt, softmax_xent_rt, mse_rt,
                                    sigmoid_bce_rt, max_margin_rt)

cnp.import_array()


cdef enum:
    ROW_BLOCK = 256
    MIN_ELEMENTS = 16384


cdef struct _Xent:
    int f32
    const void *z
    const cnp.int64_t *y
    void *d
    double *partial         # one loss sum per block of ROW_BLOCK rows
    Py_ssize_t rows, cols
    double scale
    const double *w         # class weights, or NULL


def reduction_divisor(reduction, n, fn):
    """What a summed loss is divided by: n for "mean", 1 for "sum"."""
    if reduction == "mean":
        return n
    if reduction == "sum":
        return 1
    raise ValueError(f"{fn}: reduction must be 'mean' or 'sum', got {reduction!r}")


def class_weights(weight, Py_ssize_t C, fn):
    """Class weights as a float64 (C,) array (the caller's own when it is one): finite,
    >= 0."""
    w = np.asarray(weight)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{fn}: weight must be a numeric array of shape ({C},), got "
                        f"{w.dtype}")
    if w.shape != (C,):
        raise ValueError(f"{fn}: weight must have shape ({C},) (one per class), got {w.shape}")
    w = np.require(w, dtype=np.float64, requirements="CA")
    bad = ~(np.isfinite(w) & (w >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{fn}: weight[{i}] = {w[i]} must be a finite number >= 0")
    return w


cdef void _xent_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """Loss sums and gradients of the blocks [lo, hi) of ROW_BLOCK rows."""
    cdef _Xent *x = <_Xent *>ctx
    cdef Py_ssize_t blk, r0, r1
    for blk in range(lo, hi):
        r0 = blk * ROW_BLOCK
        r1 = min(x.rows, r0 + ROW_BLOCK)
        if x.w != NULL:
            x.partial[blk] = weighted_xent_rt(x.f32, at(x.z, r0 * x.cols, x.f32), x.y + r0,
                                              at(x.d, r0 * x.cols, x.f32), r1 - r0, x.cols,
                                              x.w, x.scale)
        else:
            x.partial[blk] = softmax_xent_rt(x.f32, at(x.z, r0 * x.cols, x.f32), x.y + r0,
                                             at(x.d, r0 * x.cols, x.f32), r1 - r0, x.cols,
                                             x.scale)


def softmax_cross_entropy(logits, labels, out=None, reduction="mean", weight=None):
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    loss = mean_i [ logsumexp(logits[i]) - logits[i, labels[i]] ],
    dlogits = (softmax(logits) - onehot(labels)) / B, computed stably (the row
    max is subtracted) in one pass over each row. ``reduction="sum"``: the sum,
    and dlogits without the 1/B. With class weights (PyTorch's rule): loss =
    sum_i w[y_i] nll_i / sum_i w[y_i] (mean) or sum_i w[y_i] nll_i (sum), each
    row's gradient scaled by w[y_i] likewise.

    Parameters
    ----------
    logits : ndarray (B, C) of float32 or float64, B >= 1, C >= 1
    labels : ndarray (B,) of integers in [0, C)
    out : ndarray (B, C), optional, for dlogits; may be ``logits`` itself.
    reduction : "mean" (default) or "sum"
    weight : array (C,) of finite numbers >= 0, optional (used in float64)

    Returns
    -------
    loss : float
    dlogits : ndarray (B, C), the dtype of ``logits``

    Raises
    ------
    TypeError
        Non-float logits, non-integer labels.
    ValueError
        Wrong ndim, an empty batch or class set, mismatched B.
    IndexError
        A label outside [0, C).
    """
    fn = "softmax_cross_entropy"
    logits = float_array(logits, fn, "logits", 2)
    cdef Py_ssize_t B = logits.shape[0], C = logits.shape[1]
    if B == 0 or C == 0:
        raise ValueError(f"{fn}: logits must have at least one row and one class, "
                         f"got shape {logits.shape}")
    labels = index_array(labels, fn, "labels", 1, C)
    if labels.shape[0] != B:
        raise ValueError(f"{fn}: labels must have shape ({B},) to match logits "
                         f"{logits.shape}, got {labels.shape}")
    cdef double div = reduction_divisor(reduction, B, fn)
    w = None
    if weight is not None:
        w = class_weights(weight, C, fn)
        if reduction == "mean":
            div = xent_weight_sum(w, labels, fn)
    out = out_array(out, logits.shape, logits.dtype, fn)
    no_overlap(out, "out", logits, "logits", fn, True)
    cdef int nt = threads_for(B * C, MIN_ELEMENTS)
    cdef Py_ssize_t nblocks = (B + ROW_BLOCK - 1) // ROW_BLOCK, i
    partial = np.empty(nblocks, dtype=np.float64)
    cdef _Xent x
    x.f32, x.rows, x.cols, x.scale = is_f32(logits), B, C, 1.0 / div
    x.z, x.d = cnp.PyArray_DATA(<cnp.ndarray>logits), cnp.PyArray_DATA(<cnp.ndarray>out)
    x.y = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>labels)
    x.partial = <double *>cnp.PyArray_DATA(<cnp.ndarray>partial)
    x.w = NULL if w is None else <const double *>cnp.PyArray_DATA(<cnp.ndarray>w)
    cdef double total = 0.0
    with nogil:
        parallel_for(_xent_task, &x, nblocks, 1, nt)
        for i in range(nblocks):        # block order: the same sum for any thread count
            total += x.partial[i]
    return total / div, out


def xent_weight_sum(w, labels, fn="softmax_cross_entropy"):
    """sum_i w[labels[i]] in float64, in row order (the weighted mean's divisor); > 0."""
    cdef const double[::1] wv = w
    cdef const cnp.int64_t[::1] y = np.ascontiguousarray(labels, dtype=np.int64)
    cdef double total = 0.0
    cdef Py_ssize_t i
    for i in range(y.shape[0]):
        total += wv[y[i]]
    if not total > 0:
        raise ValueError(f"{fn}: the class weights of the batch's labels sum to {total}; "
                         f"a weighted mean needs a positive sum")
    return total


def mse_loss(pred, target, out=None, reduction="mean"):
    """Mean squared error and its gradient: loss = mean((pred - target)**2) over every
    element (``reduction="sum"``: the sum); dpred = 2 (pred - target) / N (or without
    the 1/N). Summed in double, in element order.

    Parameters
    ----------
    pred : ndarray of float32 or float64, at least one element
    target : ndarray of pred's shape, numbers (converted to pred's dtype)
    out : ndarray of pred's shape, optional, for dpred (may be ``pred``)

    Returns
    -------
    loss : float
    dpred : ndarray, pred's shape and dtype
    """
    fn = "mse_loss"
    if not isinstance(pred, np.ndarray) or pred.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: pred must be a float32 or float64 numpy.ndarray, got "
                        f"{getattr(pred, 'dtype', type(pred).__name__)}")
    pred = np.require(pred, requirements="CA")
    if not isinstance(target, np.ndarray) or target.dtype.kind not in "biuf":
        raise TypeError(f"{fn}: target must be a numeric numpy.ndarray, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    if target.shape != pred.shape:
        raise ValueError(f"{fn}: target must have pred's shape {pred.shape}, got "
                         f"{target.shape}")
    cdef Py_ssize_t n = pred.size
    if n == 0:
        raise ValueError(f"{fn}: pred must not be empty")
    cdef double div = reduction_divisor(reduction, n, fn)
    t = np.require(target, dtype=pred.dtype, requirements="CA")
    out = out_array(out, pred.shape, pred.dtype, fn)
    no_overlap(out, "out", pred, "pred", fn, True)
    cdef double total
    cdef void *pp = cnp.PyArray_DATA(<cnp.ndarray>pred)
    cdef void *pt = cnp.PyArray_DATA(<cnp.ndarray>t)
    cdef void *pd = cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef bint f32 = is_f32(pred)
    with nogil:
        total = mse_rt(f32, pp, pt, pd, n, 1.0 / div)
    return total / div, out


def sigmoid_binary_cross_entropy(scores, targets, out=None, reduction="mean"):
    """Mean logistic loss of scores against binary (or soft) targets.

    loss = mean_i [ log(1 + exp(s_i)) - t_i s_i ], the cross-entropy of
    sigmoid(s_i) against t_i; dscores = (sigmoid(s) - t) / B. Stable for any s.
    ``reduction="sum"``: the sum, dscores without the 1/B.

    Parameters
    ----------
    scores : ndarray (B,) or (B, 1) (the output of a Linear(n, 1)) of float32 or
        float64, B >= 1
    targets : ndarray of the scores' shape, numbers in [0, 1] (bool and int arrays of
        0/1 are fine); converted to the dtype of ``scores``
    out : ndarray of the scores' shape, optional, for dscores
    reduction : "mean" (default) or "sum"

    Returns
    -------
    loss : float
    dscores : ndarray (B,)

    Raises
    ------
    TypeError, ValueError
        Non-float scores, wrong shapes, an empty batch, a target outside [0, 1] or NaN.
    """
    fn = "sigmoid_binary_cross_entropy"
    shape = getattr(scores, "shape", None)
    if isinstance(scores, np.ndarray) and scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores.reshape(scores.shape[0])        # (B, 1): one score a row
        if out is not None and getattr(out, "shape", None) == shape:
            out = out.reshape(shape[0])
    scores = float_array(scores, fn, "scores", 1)
    cdef Py_ssize_t B = scores.shape[0]
    if B == 0:
        raise ValueError(f"{fn}: scores must not be empty")
    if not isinstance(targets, np.ndarray) or targets.dtype.kind not in "biuf":
        raise TypeError(f"{fn}: targets must be a numeric numpy.ndarray, "
                        f"got {getattr(targets, 'dtype', type(targets).__name__)}")
    if targets.shape != shape:
        raise ValueError(f"{fn}: targets must have shape {shape}, got "
                         f"{targets.shape}")
    cdef double div = reduction_divisor(reduction, B, fn)
    t = np.require(targets.reshape(B), dtype=scores.dtype, requirements="CA")    # aligned
    bad = ~((t >= 0) & (t <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{fn}: targets[{i}] = {targets.reshape(B)[i]} is outside [0, 1]")
    out = out_array(out, scores.shape, scores.dtype, fn)
    cdef double total
    no_overlap(out, "out", scores, "scores", fn, True)
    cdef bint f32 = is_f32(scores)
    cdef const void *ps = cnp.PyArray_DATA(<cnp.ndarray>scores)
    cdef const void *pt = cnp.PyArray_DATA(<cnp.ndarray>t)
    cdef void *pd = cnp.PyArray_DATA(<cnp.ndarray>out)
    with nogil:
        total = sigmoid_bce_rt(f32, ps, pt, pd, B, 1.0 / div)
    return total / div, (out if out.shape == shape else out.reshape(shape))


def max_margin(s_true, s_corrupt, margin=1.0, reduction="mean"):
    """Mean hinge loss J = max(0, margin - s + s_c) over a batch of window pairs.

    The lecture's max-margin objective: the true window's score s should beat
    the corrupt window's score s_c by at least ``margin``. Where the hinge is
    active (``margin - s + s_c > 0``), ds = -1/B and ds_c = +1/B; elsewhere,
    including the tie ``margin - s + s_c == 0``, both are 0.

    Parameters
    ----------
    s_true, s_corrupt : ndarray (B,), float32 or float64, same dtype, B >= 1
    margin : float
    reduction : "mean" (default) or "sum" (then the gradients are -1 and +1)

    Returns
    -------
    loss : float
    ds_true, ds_corrupt : ndarray (B,)

    Raises
    ------
    TypeError, ValueError
        Non-float or mixed dtypes, mismatched shapes, an empty batch, a NaN margin.
    """
    fn = "max_margin"
    s_true = float_array(s_true, fn, "s_true", 1)
    s_corrupt = float_array(s_corrupt, fn, "s_corrupt", 1)
    same_dtype(s_true, s_corrupt, fn, "s_true", "s_corrupt")
    if s_true.shape != s_corrupt.shape:
        raise ValueError(f"{fn}: s_true and s_corrupt must have the same shape, got "
                         f"{s_true.shape} and {s_corrupt.shape}")
    if s_true.shape[0] == 0:
        raise ValueError(f"{fn}: s_true must not be empty")
    cdef double mg = float(margin)
    if mg != mg:
        raise ValueError(f"{fn}: margin must be a number, got {margin!r}")
    cdef double div = reduction_divisor(reduction, s_true.shape[0], fn)
    ds = np.empty_like(s_true)
    dsc = np.empty_like(s_true)
    cdef double total
    cdef Py_ssize_t n = s_true.shape[0]
    cdef void *ps = cnp.PyArray_DATA(<cnp.ndarray>s_true)
    cdef void *pc = cnp.PyArray_DATA(<cnp.ndarray>s_corrupt)
    cdef void *pd = cnp.PyArray_DATA(<cnp.ndarray>ds)
    cdef void *pdc = cnp.PyArray_DATA(<cnp.ndarray>dsc)
    cdef bint f32 = is_f32(s_true)
    with nogil:
        total = max_margin_rt(f32, ps, pc, pd, pdc, n, mg, 1.0 / div)
    return total / div, ds, dsc
