# cython: language_level=3
"""Argument validation and build facts shared by the kernel modules."""

import numpy as np
cimport numpy as cnp
from libc.string cimport memcpy
from cygrad.kernels._parallel cimport pool_threaded
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


cdef inline bint _plain(object x):
    """C-contiguous, in native byte order and aligned to its itemsize: what the
    kernels' raw-pointer loops may read."""
    return (cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>x)
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>x))


cdef object float_array(object x, str fn, str name, int ndim):
    """A float32/float64 ndarray of the given ndim (-1: any), C-contiguous, native
    byte order and aligned (any other input is copied into such an array)."""
    _check_float(x, fn, name, ndim)
    if not _plain(x):
        x = np.array(x, dtype=x.dtype.newbyteorder("="), order="C", copy=True)
    return x


cdef object _check_writable(object x, str fn, str what):
    if not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x):
        raise ValueError(f"{fn}: {what} must be C-contiguous "
                         f"(got strides {x.strides} for shape {x.shape})")
    if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>x):
        raise ValueError(f"{fn}: {what} must be writeable")
    if not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>x):
        raise ValueError(f"{fn}: {what} must be in native byte order, got dtype "
                         f"{x.dtype.str!r} (convert with .astype({x.dtype.name!r}))")
    if not cnp.PyArray_ISALIGNED(<cnp.ndarray>x):
        raise ValueError(f"{fn}: {what} must be aligned to its itemsize "
                         f"({x.dtype.itemsize} bytes); its data starts at an unaligned "
                         f"address (an offset view of a byte buffer?)")
    return x


cdef object inplace_array(object x, str fn, str name, int ndim):
    """An array the kernel writes into: C-contiguous, writeable, native byte order
    and aligned; never copied."""
    _check_float(x, fn, name, ndim)
    return _check_writable(x, fn, f"{name} is updated in place and")


cdef object no_overlap(object out, str oname, object x, str xname, str fn, bint same_ok):
    """Refuse an output whose memory range intersects an input's: results would
    depend on the order the loops read and write. With same_ok, an exact alias
    (same data pointer, shape and strides: an in-place call) is allowed."""
    cdef char *po = <char *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef char *px = <char *>cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef Py_ssize_t no = cnp.PyArray_NBYTES(<cnp.ndarray>out)
    cdef Py_ssize_t nx = cnp.PyArray_NBYTES(<cnp.ndarray>x)
    if no == 0 or nx == 0 or not (po < px + nx and px < po + no):
        return None
    if same_ok and po == px and out.shape == x.shape and out.strides == x.strides:
        return None
    raise ValueError(f"{fn}: {oname} overlaps {xname} in memory"
                     + (" (only the very same array is allowed, for an in-place call)"
                        if same_ok else ""))


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
    return _check_writable(out, fn, "out")


cdef object index_array(object x, str fn, str name, int ndim, Py_ssize_t upper):
    """A private int64 C-contiguous copy of an integer array whose every value lies
    in [0, upper); IndexError names the first offending value and where. The copy
    is checked, and is what the kernel reads: another Python thread writing into
    the caller's array after the check, or an index array that is a view of a
    table being updated, cannot make the kernel read or write out of bounds."""
    if not isinstance(x, cnp.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray of integers, "
                        f"got {type(x).__name__}")
    if not cnp.PyArray_ISINTEGER(<cnp.ndarray>x):
        raise TypeError(f"{fn}: {name} must have an integer dtype, got {x.dtype}")
    if cnp.PyArray_NDIM(<cnp.ndarray>x) != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {x.shape}")
    _check_u64(x, fn, name, upper)
    if cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_INT64 and _plain(x):
        x = cnp.PyArray_NewCopy(<cnp.ndarray>x, cnp.NPY_CORDER)     # the C-API copy: fast
    else:
        x = np.array(x, dtype=np.int64, order="C", copy=True)
    check_ids(x, fn, name, upper)
    return x


cdef inline object _check_u64(object x, str fn, str name, Py_ssize_t upper):
    if x.dtype.kind == "u" and x.dtype.itemsize == 8 and x.size \
            and x.max() > np.iinfo(np.int64).max:
        raise IndexError(f"{fn}: {name} holds {x.max()}, out of range [0, {upper})")


cdef Py_ssize_t first_out_of_range(const cnp.int64_t *ids, Py_ssize_t n,
                                   Py_ssize_t upper) noexcept nogil:
    """The first i with ids[i] outside [0, upper), or -1."""
    cdef Py_ssize_t i
    for i in range(n):
        if ids[i] < 0 or ids[i] >= upper:
            return i
    return -1


cdef object check_ids(object ids, str fn, str name, Py_ssize_t upper):
    """IndexError naming the first value of the int64 C-contiguous array ids that
    lies outside [0, upper), and where."""
    cdef const cnp.int64_t *flat = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>ids)
    cdef Py_ssize_t bad, n = cnp.PyArray_SIZE(<cnp.ndarray>ids)
    with nogil:
        bad = first_out_of_range(flat, n, upper)
    if bad >= 0:
        where = ", ".join(str(int(j)) for j in np.unravel_index(bad, ids.shape))
        raise IndexError(f"{fn}: {name}[{where}] = {flat[bad]} is out of range [0, {upper})")


cdef object index_into(object x, object out, str fn, str name, Py_ssize_t upper):
    """index_array into a given int64 C-contiguous array of x's shape (a compiled
    plan's workspace): copy, then check the copy. Allocates nothing for int64
    C-contiguous native input."""
    _check_u64(x, fn, name, upper)
    if cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_INT64 and _plain(x):
        memcpy(cnp.PyArray_DATA(<cnp.ndarray>out), cnp.PyArray_DATA(<cnp.ndarray>x),
               cnp.PyArray_SIZE(<cnp.ndarray>x) * sizeof(cnp.int64_t))
    else:
        np.copyto(out, x, casting="unsafe")
    check_ids(out, fn, name, upper)


cdef int threads_for(Py_ssize_t work, Py_ssize_t min_work) except -1:
    """Threads for a kernel with `work` units: 1 below `min_work` (threads make
    small work slower), else the configured count."""
    if not pool_threaded():
        return 1
    return _config.resolve(None, work, min_work)


cdef object check_lr_eps(str fn, object lr, object eps):
    """(lr, eps) as floats, each positive and finite; ValueError naming it otherwise."""
    lr, eps = float(lr), float(eps)
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"{fn}: lr must be a positive number, got {lr}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"{fn}: eps must be a positive number, got {eps}")
    return lr, eps


cdef tuple sparse_update_args(str fn, object table, tuple states, object windows, object dX):
    """The checks of a sparse (row-wise) optimiser step: ``table`` (V, d) and its
    state arrays ``states`` ((name, array), ...) C-contiguous, writeable, of one
    float dtype and one shape; ``windows`` (B, w) ids in [0, V), copied; ``dX``
    (B, w*d) of that dtype; no two of them overlapping. Returns (table, [states],
    windows, dX) as the kernel may use them."""
    table = inplace_array(table, fn, "table", 2)
    out = []
    for name, a in states:
        a = inplace_array(a, fn, name, 2)
        same_dtype(table, a, fn, "table", name)
        if a.shape != table.shape:
            raise ValueError(f"{fn}: {name} must have the shape of table {table.shape}, "
                             f"got {a.shape}")
        out.append(a)
    windows = index_array(windows, fn, "windows", 2, table.shape[0])
    dX = float_array(dX, fn, "dX", 2)
    same_dtype(table, dX, fn, "table", "dX")
    cdef Py_ssize_t B = windows.shape[0], w = windows.shape[1], d = table.shape[1]
    if dX.shape != (B, w * d):
        raise ValueError(f"{fn}: dX must have shape {(B, w * d)} for windows {windows.shape} "
                         f"and table {table.shape}, got {dX.shape}")
    arrays = [("table", table)] + [(n, a) for (n, _), a in zip(states, out)] + [("dX", dX)]
    cdef Py_ssize_t i, j
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            no_overlap(arrays[i][1], arrays[i][0], arrays[j][1], arrays[j][0], fn, False)
    return table, out, windows, dX
