# cython: language_level=3
"""Dense optimiser steps in place (the kernels of cygrad.optim for dense
gradients): SGD, ``param -= lr * grad``, and Adagrad, ``accum += grad**2;
param -= lr * grad / (sqrt(accum) + eps)``.

Design: one flat loop over param, grad (and accum) in fixed chunks of GRAIN
elements claimed by the pool's threads (cygrad._parallel); every element is
owned by one chunk, so the result is the same for any thread count. The sparse
steps on embedding rows are in cygrad._embedding.
"""

import numpy as np
cimport numpy as cnp

from cygrad._common cimport (float_array, inplace_array, same_dtype, threads_for, is_f32,
                             no_overlap, check_lr_eps)
from cygrad._parallel cimport parallel_for

cnp.import_array()

from cygrad._csrc cimport bp_axpy_f32, bp_axpy_f64, bp_adagrad_f32, bp_adagrad_f64

cdef enum:
    GRAIN = 16384          # elements per chunk of a threaded loop (fixed, whatever the threads)
    MIN_ELEMENTS = 2 * GRAIN


cdef struct _Dense:
    int f32
    void *p
    void *G
    const void *g
    double alpha, eps


cdef void _axpy_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """p[lo:hi] += alpha g[lo:hi]."""
    cdef _Dense *u = <_Dense *>ctx
    if u.f32:
        bp_axpy_f32(hi - lo, u.alpha, <const float *>u.g + lo, <float *>u.p + lo)
    else:
        bp_axpy_f64(hi - lo, u.alpha, <const double *>u.g + lo, <double *>u.p + lo)


cdef void _adagrad_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """An Adagrad step (lr = alpha) on elements [lo, hi)."""
    cdef _Dense *u = <_Dense *>ctx
    if u.f32:
        bp_adagrad_f32(<float *>u.p + lo, <float *>u.G + lo, <const float *>u.g + lo, hi - lo,
                       u.alpha, u.eps)
    else:
        bp_adagrad_f64(<double *>u.p + lo, <double *>u.G + lo, <const double *>u.g + lo,
                       hi - lo, u.alpha, u.eps)


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
