# cython: language_level=3
"""Activations (forward and backward), bias add and bias gradient.

Design: the array is split into one contiguous range per thread (static
schedule), each range handed to a vectorised C loop (csrc/bp_elementwise.c,
cloned per ISA level). Every output element is written by exactly one thread,
and the value does not depend on the split: results are identical for any
thread count. All arithmetic is done in double, for float32 and float64 alike;
exp is a branch-free polynomial (no overflow: only exp of non-positive numbers
is ever taken), sigmoid and tanh are evaluated in their stable forms.
Bias gradients are split by columns and summed in double, rows in order.
"""

import numpy as np
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

from cygrad._common cimport float_array, same_dtype, out_array, threads_for, is_f32

cnp.import_array()

from cygrad._csrc cimport (BP_SIGMOID, BP_TANH, BP_RELU, BP_LEAKY_RELU, BP_HARDTANH, BP_GELU,
                           BP_SILU, bp_unary_fwd_f32, bp_unary_fwd_f64, bp_unary_bwd_f32,
                           bp_unary_bwd_f64, bp_add_bias_f32, bp_add_bias_f64, bp_colsum_f32,
                           bp_colsum_f64)

# Below these sizes a kernel runs on one thread (a parallel region costs a few µs).
cdef enum:
    MIN_ELEMENTS = 32768
    ALIGN = 64          # split points on multiples of 64 elements (whole cache lines)


cdef inline Py_ssize_t _split(Py_ssize_t n, int nt) noexcept nogil:
    cdef Py_ssize_t c = (n + nt - 1) // nt
    return (c + ALIGN - 1) // ALIGN * ALIGN


# The elementwise kernels see any-shape C-contiguous arrays as flat buffers, so
# they take the arrays' data pointers (a memoryview would need a reshape and a
# buffer acquisition per call: microseconds that small inputs cannot afford).
cdef void _fwd(int op, const floating *x, floating *y, Py_ssize_t n, double alpha,
               int nt) noexcept nogil:
    cdef Py_ssize_t chunk = _split(n, nt), lo, hi
    cdef int t
    if nt == 1:
        if floating is float:
            bp_unary_fwd_f32(op, x, y, n, alpha)
        else:
            bp_unary_fwd_f64(op, x, y, n, alpha)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        lo = t * chunk
        hi = min(n, lo + chunk)
        if lo < hi:
            if floating is float:
                bp_unary_fwd_f32(op, x + lo, y + lo, hi - lo, alpha)
            else:
                bp_unary_fwd_f64(op, x + lo, y + lo, hi - lo, alpha)


cdef void _bwd(int op, const floating *g, const floating *s, floating *o, Py_ssize_t n,
               double alpha, int nt) noexcept nogil:
    cdef Py_ssize_t chunk = _split(n, nt), lo, hi
    cdef int t
    if nt == 1:
        if floating is float:
            bp_unary_bwd_f32(op, g, s, o, n, alpha)
        else:
            bp_unary_bwd_f64(op, g, s, o, n, alpha)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        lo = t * chunk
        hi = min(n, lo + chunk)
        if lo < hi:
            if floating is float:
                bp_unary_bwd_f32(op, g + lo, s + lo, o + lo, hi - lo, alpha)
            else:
                bp_unary_bwd_f64(op, g + lo, s + lo, o + lo, hi - lo, alpha)


cdef object _forward(int op, str fn, object z, object out, double alpha):
    z = float_array(z, fn, "z", -1)
    out = out_array(out, z.shape, z.dtype, fn)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>z)
    cdef int nt = threads_for(n, MIN_ELEMENTS)
    cdef void *x = cnp.PyArray_DATA(<cnp.ndarray>z)
    cdef void *y = cnp.PyArray_DATA(<cnp.ndarray>out)
    with nogil:
        if cnp.PyArray_TYPE(<cnp.ndarray>z) == cnp.NPY_FLOAT32:
            _fwd[float](op, <const float *>x, <float *>y, n, alpha, nt)
        else:
            _fwd[double](op, <const double *>x, <double *>y, n, alpha, nt)
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
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>grad_out)
    cdef int nt = threads_for(n, MIN_ELEMENTS)
    cdef void *g = cnp.PyArray_DATA(<cnp.ndarray>grad_out)
    cdef void *s = cnp.PyArray_DATA(<cnp.ndarray>saved)
    cdef void *o = cnp.PyArray_DATA(<cnp.ndarray>out)
    with nogil:
        if cnp.PyArray_TYPE(<cnp.ndarray>grad_out) == cnp.NPY_FLOAT32:
            _bwd[float](op, <const float *>g, <const float *>s, <float *>o, n, alpha, nt)
        else:
            _bwd[double](op, <const double *>g, <const double *>s, <double *>o, n, alpha, nt)
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
    ("sigmoid", "Logistic sigmoid 1 / (1 + exp(-z)), stable for large |z|", "output",
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


cdef void _add_bias(const floating[:, ::1] z, const floating[::1] b, floating[:, ::1] out,
                    int nt) noexcept nogil:
    cdef Py_ssize_t rows = z.shape[0], cols = z.shape[1], chunk = (rows + nt - 1) // nt
    cdef Py_ssize_t lo, hi
    cdef int t
    if cols == 0:
        return
    if nt == 1:
        if rows > 0:
            if floating is float:
                bp_add_bias_f32(&z[0, 0], &b[0], &out[0, 0], rows, cols)
            else:
                bp_add_bias_f64(&z[0, 0], &b[0], &out[0, 0], rows, cols)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        lo = t * chunk
        hi = min(rows, lo + chunk)
        if lo < hi:
            if floating is float:
                bp_add_bias_f32(&z[lo, 0], &b[0], &out[lo, 0], hi - lo, cols)
            else:
                bp_add_bias_f64(&z[lo, 0], &b[0], &out[lo, 0], hi - lo, cols)


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
    cdef int nt = threads_for(z.size, MIN_ELEMENTS)
    if is_f32(z):
        _add_bias[float](z, b, out, nt)
    else:
        _add_bias[double](z, b, out, nt)
    return out


cdef void _colsum(const floating[:, ::1] x, floating[::1] out, int nt) noexcept nogil:
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], lo, hi
    cdef Py_ssize_t chunk = (cols + nt - 1) // nt
    cdef int t
    if cols == 0:
        return
    if rows == 0:
        for lo in range(cols):
            out[lo] = 0
        return
    chunk = (chunk + 15) // 16 * 16
    if nt == 1:
        if floating is float:
            bp_colsum_f32(&x[0, 0], &out[0], rows, cols, cols)
        else:
            bp_colsum_f64(&x[0, 0], &out[0], rows, cols, cols)
        return
    for t in prange(nt, num_threads=nt, schedule="static"):
        lo = t * chunk
        hi = min(cols, lo + chunk)
        if lo < hi:
            if floating is float:
                bp_colsum_f32(&x[0, lo], &out[lo], rows, cols, hi - lo)
            else:
                bp_colsum_f64(&x[0, lo], &out[lo], rows, cols, hi - lo)


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
    cdef int nt = threads_for(dz.size, MIN_ELEMENTS)
    if dz.shape[1] < 32:
        nt = 1
    if is_f32(dz):
        _colsum[float](dz, out, nt)
    else:
        _colsum[double](dz, out, nt)
    return out
