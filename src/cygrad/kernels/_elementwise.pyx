# cython: language_level=3
"""Activations (forward and backward), bias add and bias gradient.

Design: the array is cut into fixed chunks of GRAIN elements (rows for the bias
add, COL_GRAIN columns for the bias gradient), claimed by the threads of the
pool (cygrad.kernels._parallel), each handed to a vectorised C loop
(csrc/bp_elementwise.c, cloned per ISA level). Every output element is written
by exactly one thread, and its value does not depend on the chunk it is in:
results are identical for any thread count. Elementwise arithmetic runs in the
array's type (float32 stays float32, as in NumPy); exp is a branch-free polynomial (no overflow: only exp of non-positive numbers
is ever taken), sigmoid and tanh are evaluated in their stable forms.
Bias gradients are split by columns and summed in double, rows in order.
"""

import numpy as np
cimport numpy as cnp
from cython cimport floating

from cygrad.kernels._common cimport (float_array, same_dtype, out_array, threads_for, is_f32,
                             no_overlap)
from cygrad.kernels._parallel cimport parallel_for

cnp.import_array()

from cygrad.kernels._csrc cimport (BP_SIGMOID, BP_TANH, BP_RELU, BP_LEAKY_RELU, BP_HARDTANH, BP_GELU,
                           BP_SILU)
from cygrad.kernels._nogil cimport (at, act_fwd_rt, act_bwd_rt, dropout_rt, add_bias_rt,
                                    colsum_rt)

#: activation name -> its code in the C enum (csrc/bp_elementwise.h): the registry every
#: other place reads (the compiler's plan tasks, the NER scoring kernels)
ACT_CODES = {"sigmoid": BP_SIGMOID, "tanh": BP_TANH, "relu": BP_RELU,
             "leaky_relu": BP_LEAKY_RELU, "hardtanh": BP_HARDTANH, "gelu": BP_GELU,
             "silu": BP_SILU}
#: activation name -> what its backward reads as ``saved``: the forward's "input" or its
#: "output" (the ACTIVATIONS tables of cygrad.kernels and of the NumPy reference are
#: built from these two)
ACT_SAVES = {"sigmoid": "output", "tanh": "output", "relu": "input", "leaky_relu": "input",
             "hardtanh": "input", "gelu": "input", "silu": "input"}
assert set(ACT_SAVES) == set(ACT_CODES)

cdef enum:
    GRAIN = 16384       # elements per chunk of a threaded loop (fixed: the chunks, and so
                        # the bits, do not depend on the thread count); one chunk = one thread
    MIN_ELEMENTS = 2 * GRAIN
    COL_GRAIN = 64      # columns per chunk of the bias gradient


cdef struct _Unary:
    int op, f32
    const void *g       # grad_out (backward only)
    const void *x       # input (forward) or saved value (backward)
    void *y
    double alpha


cdef void _fwd_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef _Unary *u = <_Unary *>ctx
    act_fwd_rt(u.f32, u.op, at(u.x, lo, u.f32), at(u.y, lo, u.f32), hi - lo, u.alpha)


cdef void _bwd_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef _Unary *u = <_Unary *>ctx
    act_bwd_rt(u.f32, u.op, at(u.g, lo, u.f32), at(u.x, lo, u.f32), at(u.y, lo, u.f32),
               hi - lo, u.alpha)


# The elementwise kernels see any-shape C-contiguous arrays as flat buffers, so
# they take the arrays' data pointers (a memoryview would need a reshape and a
# buffer acquisition per call: microseconds that small inputs cannot afford).


cdef object _forward(int op, str fn, object z, object out, double alpha):
    z = float_array(z, fn, "z", -1)
    out = out_array(out, z.shape, z.dtype, fn)
    no_overlap(out, "out", z, "z", fn, True)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>z)
    cdef int nt = threads_for(n, MIN_ELEMENTS)
    cdef _Unary u
    u.op, u.f32, u.alpha = op, is_f32(z), alpha
    u.x = cnp.PyArray_DATA(<cnp.ndarray>z)
    u.y = cnp.PyArray_DATA(<cnp.ndarray>out)
    with nogil:
        parallel_for(_fwd_task, &u, n, GRAIN, nt)
    return out


cdef object _backward(int op, str fn, object grad_out, object saved, object out,
                      double alpha):
    grad_out = float_array(grad_out, fn, "grad_out", -1)
    saved = float_array(saved, fn, "saved", -1)
    same_dtype(grad_out, saved, fn, "grad_out", "saved")
    if grad_out.shape != saved.shape:
        raise ValueError(f"{fn}: grad_out and saved must have the same shape, "
                         f"got {grad_out.shape} and {saved.shape}")
    out = out_array(out, grad_out.shape, grad_out.dtype, fn)
    no_overlap(out, "out", grad_out, "grad_out", fn, True)
    no_overlap(out, "out", saved, "saved", fn, True)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>grad_out)
    cdef int nt = threads_for(n, MIN_ELEMENTS)
    cdef _Unary u
    u.op, u.f32, u.alpha = op, is_f32(grad_out), alpha
    u.g = cnp.PyArray_DATA(<cnp.ndarray>grad_out)
    u.x = cnp.PyArray_DATA(<cnp.ndarray>saved)
    u.y = cnp.PyArray_DATA(<cnp.ndarray>out)
    with nogil:
        parallel_for(_bwd_task, &u, n, GRAIN, nt)
    return out


_FWD_DOC = """{title}, elementwise.

Parameters
----------
z : ndarray of float32 or float64, any shape
    Non-contiguous input is copied first.
out : ndarray, optional
    C-contiguous, same shape and dtype as ``z``; may be ``z`` itself.{extra}

Returns
-------
ndarray, same shape and dtype as ``z``.

Raises
------
TypeError
    ``z`` is not a float32/float64 ndarray, or ``out`` has another dtype.
ValueError
    ``out`` has another shape, or is not C-contiguous and writeable.
"""

_BWD_DOC = """Backward of {name}: ``grad_in = grad_out * f'(.)`` in one pass.

Parameters
----------
grad_out : ndarray of float32 or float64, any shape
    Gradient with respect to the activation's output.
saved : ndarray, same shape and dtype as ``grad_out``
    The forward {saves} ({formula}).
out : ndarray, optional
    C-contiguous, same shape and dtype; may be ``grad_out`` itself.{extra}

Returns
-------
ndarray, the gradient with respect to the activation's input.

Raises
------
TypeError, ValueError
    As for the forward; also when ``grad_out`` and ``saved`` differ in shape or dtype.
"""

_SLOPE = "\nnegative_slope : float, default 0.01\n    Slope for z <= 0."


cdef struct _Drop:
    int f32
    const void *x
    void *y
    cnp.uint64_t key, first
    cnp.uint32_t stream, thr
    double scale


cdef void _drop_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef _Drop *u = <_Drop *>ctx
    dropout_rt(u.f32, at(u.x, lo, u.f32), at(u.y, lo, u.f32), hi - lo, u.first + lo, u.key,
               u.stream, u.thr, u.scale)


DROPOUT_MAX_ELEMENTS = 2 ** 32
DROPOUT_MAX_KEY = 2 ** 63 - 1     # keys are int64 values below it


DROPOUT_MAX_STREAM = 2 ** 32


def dropout_params(p, key, fn="dropout", stream=0):
    """(p, key, threshold, scale) of a dropout call, checked: p a number in [0, 1),
    key an integer in [0, 2**63 - 1). The threshold is floor(p * 2**32): an element is
    dropped with probability threshold / 2**32, within 2**-32 of p."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: p must be a number, got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{fn}: p must be in [0, 1), got {p!r}")
    if isinstance(key, np.ndarray) and key.size == 1 and key.dtype.kind in "iu":
        key = key.reshape(()).item()
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise TypeError(f"{fn}: key must be an integer, got {type(key).__name__}")
    key = int(key)
    if not 0 <= key < DROPOUT_MAX_KEY:
        raise ValueError(f"{fn}: key must be in [0, 2**63 - 1), got {key}")
    if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) \
            or not 0 <= stream < DROPOUT_MAX_STREAM:
        raise ValueError(f"{fn}: stream must be an integer in [0, 2**32), got {stream!r}")
    thr = int(p * 4294967296.0)
    return p, key, thr, 1.0 / (1.0 - p)


def dropout(x, p, key, out=None, stream=0, first=0):
    """Inverted dropout: ``x * mask / (1 - p)``, elementwise.

    The mask keeps element i (its flat index in C order) unless a keyed hash of
    (key, i) falls below p * 2**32: it is a function of the key and the index
    alone, so the result is the same for any thread count, and the backward is
    this same call on the gradient with the same key (nothing is stored).

    Parameters
    ----------
    x : ndarray of float32 or float64, any shape, below 2**32 elements
    p : float in [0, 1)
        Probability of dropping an element.
    key : int in [0, 2**63 - 1)
        Pick a new key for every step (e.g. from a seeded generator): the same key
        gives the same mask.
    out : ndarray, optional
        C-contiguous, same shape and dtype as ``x``; may be ``x`` itself.
    stream : int in [0, 2**32), default 0
        Masks of different streams under one key are independent: give each
        dropout of a step its own.
    first : int >= 0, default 0
        The flat index of ``x``'s first element in a larger array whose mask this
        is part of (indices are taken modulo 2**32): ``dropout(x[a:b], ...,
        first=a * row_size)`` is rows a:b of ``dropout(x, ...)``.
    """
    x = float_array(x, "dropout", "x", -1)
    p, key, thr, scale = dropout_params(p, key, stream=stream)
    if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first < 0:
        raise ValueError(f"dropout: first must be an integer >= 0, got {first!r}")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>x)
    if n > DROPOUT_MAX_ELEMENTS:
        raise ValueError(f"dropout: x has {n} elements; at most 2**32 are supported")
    out = out_array(out, x.shape, x.dtype, "dropout")
    no_overlap(out, "out", x, "x", "dropout", True)
    cdef int nt = threads_for(n, MIN_ELEMENTS)
    cdef _Drop u
    u.f32, u.key, u.stream, u.thr, u.scale = is_f32(x), key, stream, thr, scale
    u.first = int(first) % 4294967296
    u.x = cnp.PyArray_DATA(<cnp.ndarray>x)
    u.y = cnp.PyArray_DATA(<cnp.ndarray>out)
    with nogil:
        parallel_for(_drop_task, &u, n, GRAIN, nt)
    return out


def sigmoid(z, out=None):
    return _forward(BP_SIGMOID, "sigmoid", z, out, 0.0)


def sigmoid_backward(grad_out, saved, out=None):
    return _backward(BP_SIGMOID, "sigmoid_backward", grad_out, saved, out, 0.0)


def tanh(z, out=None):
    return _forward(BP_TANH, "tanh", z, out, 0.0)


def tanh_backward(grad_out, saved, out=None):
    return _backward(BP_TANH, "tanh_backward", grad_out, saved, out, 0.0)


def relu(z, out=None):
    return _forward(BP_RELU, "relu", z, out, 0.0)


def relu_backward(grad_out, saved, out=None):
    return _backward(BP_RELU, "relu_backward", grad_out, saved, out, 0.0)


def leaky_relu(z, out=None, negative_slope=0.01):
    return _forward(BP_LEAKY_RELU, "leaky_relu", z, out, negative_slope)


def leaky_relu_backward(grad_out, saved, out=None, negative_slope=0.01):
    return _backward(BP_LEAKY_RELU, "leaky_relu_backward", grad_out, saved, out,
                     negative_slope)


def hardtanh(z, out=None):
    return _forward(BP_HARDTANH, "hardtanh", z, out, 0.0)


def hardtanh_backward(grad_out, saved, out=None):
    return _backward(BP_HARDTANH, "hardtanh_backward", grad_out, saved, out, 0.0)


def gelu(z, out=None):
    return _forward(BP_GELU, "gelu", z, out, 0.0)


def gelu_backward(grad_out, saved, out=None):
    return _backward(BP_GELU, "gelu_backward", grad_out, saved, out, 0.0)


def silu(z, out=None):
    return _forward(BP_SILU, "silu", z, out, 0.0)


def silu_backward(grad_out, saved, out=None):
    return _backward(BP_SILU, "silu_backward", grad_out, saved, out, 0.0)


for _name, _title, _saves, _formula, _extra in [
    ("sigmoid", "Logistic sigmoid 1 / (1 + exp(-z)), stable for large abs(z)", "output",
     "f' = s (1 - s)", ""),
    ("tanh", "Hyperbolic tangent", "output", "f' = 1 - h^2", ""),
    ("relu", "ReLU max(z, 0) (NaN propagates)", "input", "f' = [z > 0]", ""),
    ("leaky_relu", "Leaky ReLU: z if z > 0 else negative_slope * z", "input",
     "f' = 1 if z > 0 else negative_slope", _SLOPE),
    ("hardtanh", "Hard tanh clip(z, -1, 1)", "input", "f' = [-1 < z < 1]", ""),
    ("gelu", "GELU, tanh approximation 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))",
     "input", "recomputed from z", ""),
    ("silu", "SiLU (swish) z * sigmoid(z)", "input", "f' = s (1 + z (1 - s))", ""),
]:
    globals()[_name].__doc__ = _FWD_DOC.format(title=_title, extra=_extra)
    globals()[_name + "_backward"].__doc__ = _BWD_DOC.format(
        name=_name, saves=_saves, formula=_formula, extra=_extra)


cdef struct _Rows:
    int f32
    const void *x
    const void *b
    void *y
    Py_ssize_t rows, cols


cdef void _add_bias_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """Rows [lo, hi) of out = z + b."""
    cdef _Rows *r = <_Rows *>ctx
    add_bias_rt(r.f32, at(r.x, lo * r.cols, r.f32), r.b, at(r.y, lo * r.cols, r.f32), hi - lo,
                r.cols)


cdef void _colsum_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """Columns [lo, hi) of out = the column sums of x."""
    cdef _Rows *r = <_Rows *>ctx
    colsum_rt(r.f32, at(r.x, lo, r.f32), at(r.y, lo, r.f32), r.rows, r.cols, hi - lo)


def add_bias(z, b, out=None):
    """Add a bias row to every row: ``out[i, :] = z[i, :] + b``.

    Parameters
    ----------
    z : ndarray (B, H) of float32 or float64
    b : ndarray (H,), same dtype
    out : ndarray (B, H), optional; may be ``z`` (in place).

    Returns
    -------
    ndarray (B, H)

    Raises
    ------
    TypeError
        Non-float or mixed dtypes.
    ValueError
        Wrong ndim, ``b.shape != (H,)``, or a bad ``out``.
    """
    fn = "add_bias"
    z = float_array(z, fn, "z", 2)
    b = float_array(b, fn, "b", 1)
    same_dtype(z, b, fn, "z", "b")
    if b.shape[0] != z.shape[1]:
        raise ValueError(f"{fn}: b must have shape ({z.shape[1]},) to match z {z.shape}, "
                         f"got {b.shape}")
    out = out_array(out, z.shape, z.dtype, fn)
    no_overlap(out, "out", z, "z", fn, True)
    no_overlap(out, "out", b, "b", fn, False)
    cdef _Rows r
    r.f32 = is_f32(z)
    r.x, r.b = cnp.PyArray_DATA(<cnp.ndarray>z), cnp.PyArray_DATA(<cnp.ndarray>b)
    r.y = cnp.PyArray_DATA(<cnp.ndarray>out)
    r.rows, r.cols = z.shape[0], z.shape[1]
    cdef int nt = threads_for(z.size, MIN_ELEMENTS)
    cdef Py_ssize_t grain = max(1, GRAIN // max(1, r.cols))
    if r.rows == 0 or r.cols == 0:
        return out
    with nogil:
        parallel_for(_add_bias_task, &r, r.rows, grain, nt)
    return out


def bias_grad(dz, out=None):
    """Gradient of a bias added to every row: the column sums of ``dz``.

    Sums run in double, rows in order, so the result is the same for any
    thread count.

    Parameters
    ----------
    dz : ndarray (B, H) of float32 or float64
    out : ndarray (H,), optional

    Returns
    -------
    ndarray (H,), the dtype of ``dz``.

    Raises
    ------
    TypeError, ValueError
        Non-float ``dz``, wrong ndim, or a bad ``out``.
    """
    fn = "bias_grad"
    dz = float_array(dz, fn, "dz", 2)
    out = out_array(out, (dz.shape[1],), dz.dtype, fn)
    no_overlap(out, "out", dz, "dz", fn, False)
    cdef _Rows r
    r.f32 = is_f32(dz)
    r.x, r.y = cnp.PyArray_DATA(<cnp.ndarray>dz), cnp.PyArray_DATA(<cnp.ndarray>out)
    r.rows, r.cols = dz.shape[0], dz.shape[1]
    cdef int nt = threads_for(dz.size, MIN_ELEMENTS)
    if r.cols == 0:
        return out
    if r.rows == 0:
        out[...] = 0
        return out
    with nogil:
        parallel_for(_colsum_task, &r, r.cols, COL_GRAIN, nt)
    return out


# ------------------------------------------------------------ layer normalisation

from cygrad.kernels._nogil cimport layer_norm as _ln_rows, layer_norm_bwd as _ln_bwd_rows


cdef struct _Ln:
    int f32
    const void *x           # forward: the input; backward: the upstream gradient
    const void *w
    const void *b
    const void *h           # backward: xhat
    void *y                 # forward: the output; backward: dx (or NULL)
    void *xhat              # forward: xhat; backward: gx (or NULL)
    void *rstd
    Py_ssize_t d
    double eps


cdef inline void _ln_rows_of(_Ln *c, Py_ssize_t lo, Py_ssize_t hi,
                             floating *dummy) noexcept nogil:
    cdef Py_ssize_t d = c.d
    _ln_rows(<const floating *>c.x + lo * d, d, <const floating *>c.w, <const floating *>c.b,
             <floating *>c.y + lo * d, d, <floating *>c.xhat + lo * d, d,
             <floating *>c.rstd + lo, hi - lo, d, c.eps)


cdef inline void _ln_bwd_rows_of(_Ln *c, Py_ssize_t lo, Py_ssize_t hi,
                                 floating *dummy) noexcept nogil:
    cdef Py_ssize_t d = c.d
    _ln_bwd_rows(<const floating *>c.x + lo * d, d, <const floating *>c.w,
                 <const floating *>c.h + lo * d, d, <const floating *>c.rstd + lo,
                 <floating *>c.y + lo * d if c.y != NULL else NULL, d,
                 <floating *>c.xhat + lo * d if c.xhat != NULL else NULL, d, hi - lo, d)


cdef void _ln_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef _Ln *c = <_Ln *>ctx
    if c.f32:
        _ln_rows_of(c, lo, hi, <float *>NULL)
    else:
        _ln_rows_of(c, lo, hi, <double *>NULL)


cdef void _ln_bwd_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef _Ln *c = <_Ln *>ctx
    if c.f32:
        _ln_bwd_rows_of(c, lo, hi, <float *>NULL)
    else:
        _ln_bwd_rows_of(c, lo, hi, <double *>NULL)


cdef object _ln_vector(object v, object x, str fn, str name):
    v = float_array(v, fn, name, 1)
    same_dtype(x, v, fn, "x", name)
    if v.shape[0] != x.shape[1]:
        raise ValueError(f"{fn}: {name} must have shape ({x.shape[1]},) for x of shape "
                         f"{x.shape}, got {v.shape}")
    return v


def layer_norm(x, weight, bias, eps=1e-5):
    """Layer normalisation of each row of ``x``: ``y = xhat * weight + bias`` with
    ``xhat = (x - mean) * rstd``, ``rstd = 1 / sqrt(var + eps)``, the mean and the
    biased variance of the row (summed in double, in order: the same bits for any
    thread count).

    Parameters
    ----------
    x : ndarray (B, D) of float32 or float64
    weight, bias : ndarray (D,), x's dtype
    eps : float > 0

    Returns
    -------
    (y (B, D), xhat (B, D), rstd (B,)), x's dtype: what the backward reads.
    """
    fn = "layer_norm"
    x = float_array(x, fn, "x", 2)
    weight = _ln_vector(weight, x, fn, "weight")
    bias = _ln_vector(bias, x, fn, "bias")
    eps = float(eps)
    if not (eps > 0 and np.isfinite(eps)):
        raise ValueError(f"{fn}: eps must be a finite number > 0, got {eps!r}")
    cdef Py_ssize_t B = x.shape[0], D = x.shape[1]
    y = np.empty_like(x)
    xhat = np.empty_like(x)
    rstd = np.empty(B, x.dtype)
    cdef _Ln c
    c.f32 = is_f32(x)
    c.x, c.w, c.b = cnp.PyArray_DATA(<cnp.ndarray>x), cnp.PyArray_DATA(<cnp.ndarray>weight), \
        cnp.PyArray_DATA(<cnp.ndarray>bias)
    c.y, c.xhat = cnp.PyArray_DATA(<cnp.ndarray>y), cnp.PyArray_DATA(<cnp.ndarray>xhat)
    c.rstd = cnp.PyArray_DATA(<cnp.ndarray>rstd)
    c.d, c.eps = D, eps
    cdef int nt = threads_for(x.size, MIN_ELEMENTS)
    cdef Py_ssize_t grain = max(1, GRAIN // max(1, D))
    if B and D:
        with nogil:
            parallel_for(_ln_task, &c, B, grain, nt)
    return y, xhat, rstd


def layer_norm_backward(grad, weight, xhat, rstd, need_x=True, need_weight=True):
    """The gradients of :func:`layer_norm` from its saved ``xhat`` and ``rstd``:
    ``dx = rstd * (gy - mean(gy) - xhat * mean(gy * xhat))`` with ``gy = grad *
    weight`` (row means in double), and ``grad * xhat``, the weight's gradient
    before its column sums (:func:`bias_grad` of it; the bias's is ``bias_grad(grad)``).

    Returns
    -------
    (dx or None, grad * xhat or None), grad's dtype.
    """
    fn = "layer_norm_backward"
    grad = float_array(grad, fn, "grad", 2)
    weight = _ln_vector(weight, grad, fn, "weight")
    xhat = float_array(xhat, fn, "xhat", 2)
    same_dtype(grad, xhat, fn, "grad", "xhat")
    rstd = float_array(rstd, fn, "rstd", 1)
    same_dtype(grad, rstd, fn, "grad", "rstd")
    cdef Py_ssize_t B = grad.shape[0], D = grad.shape[1]
    if xhat.shape != grad.shape or rstd.shape != (B,):
        raise ValueError(f"{fn}: xhat {xhat.shape} and rstd {rstd.shape} do not fit grad of "
                         f"shape {grad.shape}")
    dx = np.empty_like(grad) if need_x else None
    gx = np.empty_like(grad) if need_weight else None
    cdef _Ln c
    c.f32 = is_f32(grad)
    c.x, c.w = cnp.PyArray_DATA(<cnp.ndarray>grad), cnp.PyArray_DATA(<cnp.ndarray>weight)
    c.h, c.rstd = cnp.PyArray_DATA(<cnp.ndarray>xhat), cnp.PyArray_DATA(<cnp.ndarray>rstd)
    c.y = cnp.PyArray_DATA(<cnp.ndarray>dx) if dx is not None else NULL
    c.xhat = cnp.PyArray_DATA(<cnp.ndarray>gx) if gx is not None else NULL
    c.d = D
    cdef int nt = threads_for(grad.size, MIN_ELEMENTS)
    cdef Py_ssize_t grain = max(1, GRAIN // max(1, D))
    if B and D and (need_x or need_weight):
        with nogil:
            parallel_for(_ln_bwd_task, &c, B, grain, nt)
    return dx, gx
