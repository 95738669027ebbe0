# Validation shared by every kernel wrapper: run once at the Python boundary,
# so the nogil loops behind it need no checks.
cimport numpy as cnp

cdef object float_array(object x, str fn, str name, int ndim)
cdef object inplace_array(object x, str fn, str name, int ndim)
cdef object same_dtype(object a, object b, str fn, str na, str nb)
cdef object out_array(object out, tuple shape, object dtype, str fn)
cdef object no_overlap(object out, str oname, object x, str xname, str fn, bint same_ok)
cdef object index_array(object x, str fn, str name, int ndim, Py_ssize_t upper)
cdef int threads_for(Py_ssize_t work, Py_ssize_t min_work) except -1
cdef bint is_f32(object x)
cdef object check_lr_eps(str fn, object lr, object eps)
cdef Py_ssize_t first_out_of_range(const cnp.int64_t *ids, Py_ssize_t n,
                                   Py_ssize_t upper) noexcept nogil
cdef object check_ids(object ids, str fn, str name, Py_ssize_t upper)
cdef tuple sparse_update_args(str fn, object table, tuple states, object windows, object dX)
cdef object index_into(object x, object out, str fn, str name, Py_ssize_t upper)
