# cython: language_level=3
"""Optimiser steps in place (the kernels of cygrad.optim), dense: SGD, ``param -= lr * grad``; Adagrad, ``accum += grad**2;
param -= lr * grad / (sqrt(accum) + eps)``; SGD with momentum (and Nesterov,
weight decay) and Adam / AdamW, each one pass over param, grad and state.

Design: one flat loop over param, grad (and accum) in fixed chunks of GRAIN
elements claimed by the pool's threads (cygrad.kernels._parallel); every element is
owned by one chunk, so the result is the same for any thread count. On a table's
rows (row-sparse gradients): Adagrad and lazy Adam sum each touched row's slot
gradients first, in slot order (csrc/bp_optim's bp_group_slots: the slots sorted by
(row, slot), as compiled plans group them too), then take one step per row; sparse SGD is a scatter
(cygrad.kernels._embedding).
"""

import numpy as np
cimport numpy as cnp

from cygrad.kernels._common cimport (float_array, inplace_array, same_dtype, threads_for, is_f32,
                             no_overlap, check_lr_eps, index_array, sparse_update_args)
from cygrad.kernels._parallel cimport parallel_for

cnp.import_array()

from cygrad.kernels._csrc cimport (bp_sparse_adam_f32, bp_sparse_adam_f64, bp_sparse_adagrad_f32,
                           bp_sparse_adagrad_f64)
from cygrad.kernels._nogil cimport at, axpy_rt, adagrad_rt, sgd_momentum_rt, adam_rt

cdef enum:
    GRAIN = 16384          # elements per chunk of a threaded loop (fixed, whatever the threads)
    MIN_ELEMENTS = 2 * GRAIN


cdef struct _Dense:
    int f32
    void *p
    void *G
    void *H
    const void *g
    double alpha, eps
    double b1, b2, c, wd, decay
    int flag, first


cdef void _axpy_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """p[lo:hi] += alpha g[lo:hi]."""
    cdef _Dense *u = <_Dense *>ctx
    axpy_rt(u.f32, hi - lo, u.alpha, at(u.g, lo, u.f32), at(u.p, lo, u.f32))


cdef void _adagrad_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """An Adagrad step (lr = alpha) on elements [lo, hi)."""
    cdef _Dense *u = <_Dense *>ctx
    adagrad_rt(u.f32, at(u.p, lo, u.f32), at(u.G, lo, u.f32), at(u.g, lo, u.f32), hi - lo,
               u.alpha, u.eps)


def sgd_update(param, grad, lr):
    """Dense SGD step in place: ``param -= lr * grad``.

    Parameters
    ----------
    param : ndarray, any shape, C-contiguous, writeable, float32 or float64
    grad : ndarray, same shape and dtype
    lr : float

    Returns
    -------
    param

    Raises
    ------
    TypeError, ValueError
        Mixed or non-float dtypes, shape mismatch, non-contiguous or read-only
        ``param``, a non-finite ``lr``.
    """
    fn = "sgd_update"
    param = inplace_array(param, fn, "param", -1)
    grad = float_array(grad, fn, "grad", -1)
    same_dtype(param, grad, fn, "param", "grad")
    if param.shape != grad.shape:
        raise ValueError(f"{fn}: grad must have the shape of param {param.shape}, "
                         f"got {grad.shape}")
    no_overlap(param, "param", grad, "grad", fn, True)
    lr = float(lr)
    if not np.isfinite(lr):
        raise ValueError(f"{fn}: lr must be finite, got {lr}")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>param)
    cdef int nt = threads_for(n, MIN_ELEMENTS)
    cdef _Dense u
    u.f32, u.alpha = is_f32(param), -lr
    u.p, u.g = cnp.PyArray_DATA(<cnp.ndarray>param), cnp.PyArray_DATA(<cnp.ndarray>grad)
    with nogil:
        parallel_for(_axpy_task, &u, n, GRAIN, nt)
    return param



def adagrad_update(param, accum, grad, lr, eps=1e-8):
    """Adagrad step in place: ``accum += grad**2; param -= lr * grad / (sqrt(accum) + eps)``.

    Parameters
    ----------
    param, accum : ndarray, same shape, C-contiguous, writeable, float32 or float64
    grad : ndarray, same shape and dtype
    lr, eps : positive floats

    Returns
    -------
    param

    Raises
    ------
    TypeError, ValueError
        Mixed or non-float dtypes, shape mismatch, non-contiguous or read-only
        ``param``/``accum``, a non-positive ``lr`` or ``eps``.
    """
    fn = "adagrad_update"
    param = inplace_array(param, fn, "param", -1)
    accum = inplace_array(accum, fn, "accum", -1)
    grad = float_array(grad, fn, "grad", -1)
    same_dtype(param, accum, fn, "param", "accum")
    same_dtype(param, grad, fn, "param", "grad")
    if accum.shape != param.shape or grad.shape != param.shape:
        raise ValueError(f"{fn}: accum and grad must have the shape of param {param.shape}, "
                         f"got {accum.shape} and {grad.shape}")
    no_overlap(param, "param", accum, "accum", fn, False)
    no_overlap(param, "param", grad, "grad", fn, False)
    no_overlap(accum, "accum", grad, "grad", fn, False)
    lr, eps = check_lr_eps(fn, lr, eps)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>param)
    cdef int nt = threads_for(n, MIN_ELEMENTS)
    cdef _Dense u
    u.f32, u.alpha, u.eps = is_f32(param), lr, eps
    u.p, u.G = cnp.PyArray_DATA(<cnp.ndarray>param), cnp.PyArray_DATA(<cnp.ndarray>accum)
    u.g = cnp.PyArray_DATA(<cnp.ndarray>grad)
    with nogil:
        parallel_for(_adagrad_task, &u, n, GRAIN, nt)
    return param


cdef void _momentum_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef _Dense *u = <_Dense *>ctx      # (no buffer: G is NULL, and stays so: at() keeps it)
    sgd_momentum_rt(u.f32, at(u.p, lo, u.f32), at(u.G, lo, u.f32), at(u.g, lo, u.f32),
                    hi - lo, u.alpha, u.b1, u.c, u.wd, u.flag, u.first)


cdef void _adam_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef _Dense *u = <_Dense *>ctx
    adam_rt(u.f32, at(u.p, lo, u.f32), at(u.G, lo, u.f32), at(u.H, lo, u.f32),
            at(u.g, lo, u.f32), hi - lo, u.alpha, u.b1, u.b2, u.eps, u.c, u.wd, u.decay)


cdef object _state_arrays(str fn, object param, object grad, tuple states):
    """Validate param, its state arrays (in place) and grad: one dtype, one shape,
    no two of them overlapping."""
    param = inplace_array(param, fn, "param", -1)
    grad = float_array(grad, fn, "grad", -1)
    same_dtype(param, grad, fn, "param", "grad")
    out = []
    for name, a in states:
        a = inplace_array(a, fn, name, -1)
        same_dtype(param, a, fn, "param", name)
        if a.shape != param.shape:
            raise ValueError(f"{fn}: {name} must have the shape of param {param.shape}, "
                             f"got {a.shape}")
        out.append((name, a))
    if grad.shape != param.shape:
        raise ValueError(f"{fn}: grad must have the shape of param {param.shape}, "
                         f"got {grad.shape}")
    arrays = [("param", param)] + out + [("grad", grad)]
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            no_overlap(arrays[i][1], arrays[i][0], arrays[j][1], arrays[j][0], fn, False)
    return param, grad, [a for _, a in out]


cdef double _unit(str fn, str name, object x, bint closed_top) except? -1:
    x = float(x)
    if not (0.0 <= x < 1.0 or (closed_top and x == 1.0)):
        raise ValueError(f"{fn}: {name} must be in [0, {'1]' if closed_top else '1)'}, got {x}")
    return x


cdef double _nonneg(str fn, str name, object x) except? -1:
    x = float(x)
    if not (np.isfinite(x) and x >= 0):
        raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {x}")
    return x


def sgd_momentum_update(param, buf, grad, lr, momentum, dampening=0.0, weight_decay=0.0,
                        nesterov=False, first=False):
    """SGD with momentum in place, PyTorch's rule.

    ``g' = grad + weight_decay * param``; ``buf = g'`` when ``first``, else
    ``buf = momentum * buf + (1 - dampening) * g'``; then
    ``param -= lr * (g' + momentum * buf)`` with ``nesterov``, else
    ``param -= lr * buf``.

    Parameters
    ----------
    param : ndarray, C-contiguous, writeable, float32 or float64
    buf : ndarray of param's shape and dtype (C-contiguous, writeable), or None
        when momentum is 0 (weight decay alone: ``param -= lr * g'``)
    grad : ndarray, same shape and dtype
    lr : float >= 0
    momentum, dampening : floats in [0, 1]
    weight_decay : float >= 0
    nesterov, first : bool

    Returns
    -------
    param
    """
    fn = "sgd_momentum_update"
    cdef _Dense u
    u.b1 = _unit(fn, "momentum", momentum, True)
    if buf is None and u.b1 != 0:
        raise ValueError(f"{fn}: momentum {u.b1} needs a buf array")
    if buf is None:
        param, grad, _ = _state_arrays(fn, param, grad, ())
    else:
        param, grad, (buf,) = _state_arrays(fn, param, grad, (("buf", buf),))
    lr = _nonneg(fn, "lr", lr)
    u.c = _unit(fn, "dampening", dampening, True)
    u.wd = _nonneg(fn, "weight_decay", weight_decay)
    if nesterov and (u.b1 <= 0 or u.c != 0):
        raise ValueError(f"{fn}: nesterov needs momentum > 0 and dampening 0, got momentum "
                         f"{u.b1}, dampening {u.c}")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>param)
    cdef int nt = threads_for(n, MIN_ELEMENTS)
    u.f32, u.alpha, u.flag, u.first = is_f32(param), lr, bool(nesterov), bool(first)
    u.p = cnp.PyArray_DATA(<cnp.ndarray>param)
    u.G = NULL if buf is None else cnp.PyArray_DATA(<cnp.ndarray>buf)
    u.g = cnp.PyArray_DATA(<cnp.ndarray>grad)
    with nogil:
        parallel_for(_momentum_task, &u, n, GRAIN, nt)
    return param


def adam_update(param, exp_avg, exp_avg_sq, grad, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, decoupled=False):
    """One Adam (or AdamW, ``decoupled=True``) step in place, bias-corrected.

    With ``decoupled``: ``param *= 1 - lr * weight_decay``; otherwise
    ``g = grad + weight_decay * param``. Then ``m = beta1 m + (1 - beta1) g``,
    ``v = beta2 v + (1 - beta2) g**2`` and
    ``param -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)``.

    Parameters
    ----------
    param, exp_avg, exp_avg_sq : ndarray, same shape, C-contiguous, writeable,
        float32 or float64 (``m`` and ``v``)
    grad : ndarray, same shape and dtype
    step : int >= 1, the number of this step (the bias corrections use it)
    lr : float >= 0
    eps : positive float
    beta1, beta2 : floats in [0, 1)
    weight_decay : float >= 0
    decoupled : bool

    Returns
    -------
    param
    """
    fn = "adam_update"
    param, grad, (m, v) = _state_arrays(fn, param, grad, (("exp_avg", exp_avg),
                                                          ("exp_avg_sq", exp_avg_sq)))
    lr = _nonneg(fn, "lr", lr)      # 0 is allowed: the moments still move (a schedule's end)
    _, eps = check_lr_eps(fn, 1.0, eps)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{fn}: step must be an integer >= 1, got {step!r}")
    cdef _Dense u
    u.b1 = _unit(fn, "beta1", beta1, False)
    u.b2 = _unit(fn, "beta2", beta2, False)
    wd = _nonneg(fn, "weight_decay", weight_decay)
    u.alpha = lr / (1.0 - u.b1 ** int(step))
    u.c = np.sqrt(1.0 - u.b2 ** int(step))
    u.eps = eps
    if decoupled:
        u.wd, u.decay = 0.0, 1.0 - lr * wd
    else:
        u.wd, u.decay = wd, 1.0
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>param)
    cdef int nt = threads_for(n, MIN_ELEMENTS)
    u.f32 = is_f32(param)
    u.p, u.G = cnp.PyArray_DATA(<cnp.ndarray>param), cnp.PyArray_DATA(<cnp.ndarray>m)
    u.H, u.g = cnp.PyArray_DATA(<cnp.ndarray>v), cnp.PyArray_DATA(<cnp.ndarray>grad)
    with nogil:
        parallel_for(_adam_task, &u, n, GRAIN, nt)
    return param


def embedding_adam_update(table, exp_avg, exp_avg_sq, windows, dX, step, lr, beta1=0.9,
                          beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """Lazy Adam (or AdamW) on the rows a batch touched, in place.

    The slot gradients of each row are summed first (in slot order, as a dense
    Adam on the scattered gradient would see them), then each touched row gets the
    step of :func:`adam_update` with that sum; the rows of ``table``,
    ``exp_avg`` and ``exp_avg_sq`` that no window holds are not read or written
    (their moments do not decay: the "lazy" variant).

    Parameters
    ----------
    table, exp_avg, exp_avg_sq : ndarray (V, d), C-contiguous, writeable, float32 or float64
    windows : ndarray (B, w) of integers in [0, V)
    dX : ndarray (B, w*d), same dtype as ``table``
    step : int >= 1, the number of this step (the bias corrections use it)
    lr : float >= 0
    beta1, beta2 : floats in [0, 1)
    eps : positive float
    weight_decay : float >= 0
    decoupled : bool

    Returns
    -------
    table
    """
    fn = "embedding_adam_update"
    table, (m, v), windows, dX = sparse_update_args(
        fn, table, (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)), windows, dX)
    lr = _nonneg(fn, "lr", lr)
    _, eps = check_lr_eps(fn, 1.0, eps)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{fn}: step must be an integer >= 1, got {step!r}")
    cdef double b1 = _unit(fn, "beta1", beta1, False), b2 = _unit(fn, "beta2", beta2, False)
    cdef double wd = _nonneg(fn, "weight_decay", weight_decay)
    cdef double alpha = lr / (1.0 - b1 ** int(step))
    cdef double c = np.sqrt(1.0 - b2 ** int(step))
    cdef double wdc = 0.0 if decoupled else wd
    cdef double decay = 1.0 - lr * wd if decoupled else 1.0
    cdef double e = eps
    _sparse_step(_ADAM, table, m, v, windows, dX, alpha, e, b1, b2, c, wdc, decay)
    return table


def embedding_adagrad_update(table, accum, windows, dX, lr, eps=1e-8):
    """Sparse Adagrad on the rows a batch touched.

    The slot gradients of each row are summed first (as a dense Adagrad on the
    scattered gradient would see them), then each touched row gets one step:
    ``accum[r] += g_r**2; table[r] -= lr * g_r / (sqrt(accum[r]) + eps)``.
    Untouched rows of ``table`` and ``accum`` are not read or written.

    Parameters
    ----------
    table, accum : ndarray (V, d), C-contiguous, writeable, float32 or float64
    windows : ndarray (B, w) of integers in [0, V)
    dX : ndarray (B, w*d), same dtype as ``table``
    lr, eps : positive floats

    Returns
    -------
    table

    Raises
    ------
    TypeError, ValueError, IndexError
        As for embedding_sgd_update; also a bad ``accum``.
    """
    fn = "embedding_adagrad_update"
    table, (accum,), windows, dX = sparse_update_args(fn, table, (("accum", accum),),
                                                      windows, dX)
    lr, eps = check_lr_eps(fn, lr, eps)
    _sparse_step(_ADAGRAD, table, accum, None, windows, dX, lr, eps)
    return table


cdef enum:
    _ADAGRAD = 0
    _ADAM = 1


cdef void _sparse_step(int kind, table, s1, s2, windows, dX, double lr, double eps,
                       double b1=0.0, double b2=0.0, double c=0.0, double wdc=0.0,
                       double decay=1.0) except *:
    """The row-sparse step of ``kind`` on checked arguments: each touched row's slot
    gradients summed (csrc/bp_optim's one row grouping), then one step per row. ``s1``,
    ``s2``: the state arrays (Adagrad's accum; Adam's exp_avg, exp_avg_sq)."""
    cdef Py_ssize_t B = windows.shape[0], w = windows.shape[1], d = table.shape[1]
    if d == 0 or B * w == 0:
        return
    pairs = np.empty(2 * B * w, dtype=np.int64)
    row = np.empty(d, dtype=table.dtype)
    cdef const cnp.int64_t *wp = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>windows)
    cdef cnp.int64_t *pp = <cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>pairs)
    cdef void *tp = cnp.PyArray_DATA(<cnp.ndarray>table)
    cdef void *ap = cnp.PyArray_DATA(<cnp.ndarray>s1)
    cdef void *vp = NULL if s2 is None else cnp.PyArray_DATA(<cnp.ndarray>s2)
    cdef void *gp = cnp.PyArray_DATA(<cnp.ndarray>dX)
    cdef void *rp = cnp.PyArray_DATA(<cnp.ndarray>row)
    cdef bint f32 = is_f32(table)
    cdef Py_ssize_t n = B * w, ld = w * d
    with nogil:
        if kind == _ADAGRAD and f32:
            bp_sparse_adagrad_f32(<float *>tp, <float *>ap, d, wp, n, w, <const float *>gp,
                                  ld, pp, <float *>rp, lr, eps)
        elif kind == _ADAGRAD:
            bp_sparse_adagrad_f64(<double *>tp, <double *>ap, d, wp, n, w, <const double *>gp,
                                  ld, pp, <double *>rp, lr, eps)
        elif f32:
            bp_sparse_adam_f32(<float *>tp, <float *>ap, <float *>vp, d, wp, n, w,
                               <const float *>gp, ld, pp, <float *>rp, lr, b1, b2, eps,
                               c, wdc, decay)
        else:
            bp_sparse_adam_f64(<double *>tp, <double *>ap, <double *>vp, d, wp, n, w,
                               <const double *>gp, ld, pp, <double *>rp, lr, b1, b2, eps,
                               c, wdc, decay)
