# cython: language_level=3
"""Argument validation and build facts shared by the kernel modules."""

import numpy as np
cimport numpy as cnp
from cygrad._parallel cimport pool_threaded
from cygrad import _config

cnp.import_array()

cdef extern from "bp_cpu.h":
    const char *bp_simd_path()

cdef extern from *:
    """
    #if defined(__clang__)
    #define BP_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define BP_COMPILER "gcc " __VERSION__
    #else
    #define BP_COMPILER "unknown"
    #endif
    """
    const char *BP_COMPILER
    const char *BP_BUILD_FLAGS
    const char *BP_CYTHON_VERSION
    int BP_DEBUG


def _build_facts():
    """Facts compiled into the extension: read by cygrad.build_info()."""
    return {
        "threaded": bool(pool_threaded()),
        "compiler": BP_COMPILER.decode(),
        "flags": BP_BUILD_FLAGS.decode(),
        "cython_version": BP_CYTHON_VERSION.decode(),
        "debug": bool(BP_DEBUG),
        "simd": bp_simd_path().decode(),
    }


cdef bint is_f32(object x):
    return cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32


cdef inline object _check_float(object x, str fn, str name, int ndim):
    if not isinstance(x, cnp.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray of float32 or float64, "
                        f"got {type(x).__name__}")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"{fn}: {name} must have dtype float32 or float64, got {x.dtype}")
    if ndim >= 0 and cnp.PyArray_NDIM(<cnp.ndarray>x) != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {x.shape}")
    return x


cdef object float_array(object x, str fn, str name, int ndim):
    """A float32/float64 ndarray of the given ndim (-1: any), C-contiguous
    (a non-contiguous input is copied)."""
    _check_float(x, fn, name, ndim)
    if not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x):
        x = np.ascontiguousarray(x)
    return x


cdef object inplace_array(object x, str fn, str name, int ndim):
    """An array the kernel writes into: C-contiguous and writeable, never copied."""
    _check_float(x, fn, name, ndim)
    if not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x):
        raise ValueError(f"{fn}: {name} is updated in place and must be C-contiguous "
                         f"(got strides {x.strides} for shape {x.shape})")
    if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>x):
        raise ValueError(f"{fn}: {name} is updated in place and must be writeable")
    return x


cdef object same_dtype(object a, object b, str fn, str na, str nb):
    if cnp.PyArray_TYPE(<cnp.ndarray>a) != cnp.PyArray_TYPE(<cnp.ndarray>b):
        raise TypeError(f"{fn}: {na} and {nb} must have the same dtype, "
                        f"got {a.dtype} and {b.dtype} (no implicit casting)")
    return None


cdef object out_array(object out, tuple shape, object dtype, str fn):
    cdef cnp.npy_intp dims[4]
    cdef int nd = len(shape), i
    cdef int typenum = (<cnp.dtype>dtype).type_num if isinstance(dtype, cnp.dtype) \
        else np.dtype(dtype).num
    if out is None:
        if nd > 4:      # rare: let NumPy size it (dims holds the common ndim <= 4)
            return np.empty(shape, dtype=dtype)
        for i in range(nd):
            dims[i] = shape[i]
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    if not isinstance(out, cnp.ndarray):
        raise TypeError(f"{fn}: out must be a numpy.ndarray or None, got {type(out).__name__}")
    if cnp.PyArray_TYPE(<cnp.ndarray>out) != typenum:
        raise TypeError(f"{fn}: out must have dtype {np.dtype(dtype)}, got {out.dtype}")
    cdef bint same = cnp.PyArray_NDIM(<cnp.ndarray>out) == nd
    cdef cnp.npy_intp *od = cnp.PyArray_DIMS(<cnp.ndarray>out)
    i = 0
    while same and i < nd:
        same = od[i] == <cnp.npy_intp>shape[i]
        i += 1
    if not same:
        raise ValueError(f"{fn}: out must have shape {shape}, got {out.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out):
        raise ValueError(f"{fn}: out must be C-contiguous")
    if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out):
        raise ValueError(f"{fn}: out must be writeable")
    return out


cdef object index_array(object x, str fn, str name, int ndim, Py_ssize_t upper):
    """An int64 C-contiguous copy or view of an integer array whose every value
    lies in [0, upper); IndexError names the first offending value and where."""
    if not isinstance(x, cnp.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray of integers, "
                        f"got {type(x).__name__}")
    if not cnp.PyArray_ISINTEGER(<cnp.ndarray>x):
        raise TypeError(f"{fn}: {name} must have an integer dtype, got {x.dtype}")
    if cnp.PyArray_NDIM(<cnp.ndarray>x) != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {x.shape}")
    if cnp.PyArray_TYPE(<cnp.ndarray>x) != cnp.NPY_INT64 \
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x):
        if x.dtype.kind == "u" and x.size and x.max() > np.iinfo(np.int64).max:
            raise IndexError(f"{fn}: {name} holds {x.max()}, out of range [0, {upper})")
        x = np.ascontiguousarray(x, dtype=np.int64)
    cdef const cnp.int64_t *flat = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef Py_ssize_t i, n = cnp.PyArray_SIZE(<cnp.ndarray>x), bad = -1
    with nogil:
        for i in range(n):
            if flat[i] < 0 or flat[i] >= upper:
                bad = i
                break
    if bad >= 0:
        where = ", ".join(str(int(j)) for j in np.unravel_index(bad, x.shape))
        raise IndexError(f"{fn}: {name}[{where}] = {flat[bad]} is out of range [0, {upper})")
    return x


cdef int threads_for(Py_ssize_t work, Py_ssize_t min_work) except -1:
    """Threads for a kernel with `work` units: 1 below `min_work` (threads make
    small work slower), else the configured count."""
    if work < min_work or not pool_threaded():
        return 1
    return _config.get_num_threads()
