# cython: language_level=3
"""Constrained Viterbi decoding of per-token tag scores.

Design: sentences are independent, so they are shared out between threads
in chunks of SENT_GRAIN sentences claimed from the pool (cygrad.kernels._parallel); each sentence's dynamic programme runs
serially in double over its own rows of the preallocated score and
back-pointer tables, which no other thread touches. Ties go to the lowest tag
index, so the result does not depend on the thread count.
"""

import numpy as np
cimport numpy as cnp
from cygrad.kernels._parallel cimport parallel_for
from libc.math cimport INFINITY

from cygrad.kernels._common cimport float_array, index_array, threads_for

cnp.import_array()


cdef enum:
    SENT_GRAIN = 16     # sentences per chunk of a threaded decode


cdef struct _Viterbi:
    const double *sc
    Py_ssize_t C
    const cnp.int64_t *off
    const cnp.uint8_t *allowed
    const cnp.uint8_t *start
    double *delta
    cnp.int32_t *back
    cnp.int64_t *out


cdef void _viterbi_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    """Sentences [lo, hi)."""
    cdef _Viterbi *v = <_Viterbi *>ctx
    cdef Py_ssize_t i
    for i in range(lo, hi):
        _one(v.sc, v.C, v.off[i], v.off[i + 1], v.allowed, v.start, v.delta, v.back, v.out)


cdef void _one(const double *sc, Py_ssize_t C, Py_ssize_t t0, Py_ssize_t t1,
               const cnp.uint8_t *allowed, const cnp.uint8_t *start, double *delta,
               cnp.int32_t *back, cnp.int64_t *out) noexcept nogil:
    cdef Py_ssize_t t, c, p, arg
    cdef double best, v
    if t1 <= t0:
        return
    for c in range(C):
        delta[t0 * C + c] = sc[t0 * C + c] if start[c] else -INFINITY
    for t in range(t0 + 1, t1):
        for c in range(C):
            best = -INFINITY
            arg = 0
            for p in range(C):
                v = delta[(t - 1) * C + p]
                if allowed[p * C + c] and v > best:
                    best = v
                    arg = p
            delta[t * C + c] = best + sc[t * C + c]
            back[t * C + c] = <cnp.int32_t>arg
    arg = 0
    best = delta[(t1 - 1) * C]
    for c in range(1, C):
        if delta[(t1 - 1) * C + c] > best:
            best = delta[(t1 - 1) * C + c]
            arg = c
    t = t1 - 1
    while True:
        out[t] = arg
        if t == t0:
            break
        arg = back[t * C + arg]
        t -= 1


def constrained_viterbi(scores, offsets, allowed, start_allowed):
    """Best tag sequence of each sentence under hard transition constraints.

    Maximises the sum of ``scores[t, tag_t]`` (e.g. log-probabilities) over each
    sentence subject to ``allowed[tag_{t-1}, tag_t]`` and
    ``start_allowed[tag_first]``.

    Parameters
    ----------
    scores : ndarray (N, C) of float32 or float64
    offsets : ndarray (S + 1,) of integers: sentence i is rows offsets[i]:offsets[i+1];
        non-decreasing from 0 to N
    allowed : ndarray (C, C) of bool
    start_allowed : ndarray (C,) of bool

    Returns
    -------
    ndarray (N,) of int64 tag indices

    Raises
    ------
    TypeError, ValueError
        Wrong dtypes or shapes, offsets that do not cover 0..N in order, or a
        constraint set that allows no path (a tag with no allowed predecessor
        and no allowed start is fine; no allowed start at all is not).
    """
    fn = "constrained_viterbi"
    scores = float_array(scores, fn, "scores", 2)
    cdef Py_ssize_t N = scores.shape[0], C = scores.shape[1]
    offsets = index_array(offsets, fn, "offsets", 1, N + 1)
    if offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != N \
            or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{fn}: offsets must rise from 0 to {N} (the number of rows)")
    for name, m in (("allowed", allowed), ("start_allowed", start_allowed)):
        if not isinstance(m, np.ndarray) or m.dtype != np.bool_:
            raise TypeError(f"{fn}: {name} must be a numpy.ndarray of bool (a mask), got "
                            f"{getattr(m, 'dtype', type(m).__name__)}")
    allowed = np.ascontiguousarray(allowed).view(np.uint8)
    start_allowed = np.ascontiguousarray(start_allowed).view(np.uint8)
    if allowed.shape != (C, C) or start_allowed.shape != (C,):
        raise ValueError(f"{fn}: allowed must be ({C}, {C}) and start_allowed ({C},), got "
                         f"{allowed.shape} and {start_allowed.shape}")
    if C and not start_allowed.any():
        raise ValueError(f"{fn}: start_allowed allows no tag")
    sc = np.require(scores, dtype=np.float64, requirements="CA")     # aligned for C
    out = np.zeros(N, dtype=np.int64)
    delta = np.empty((N, C), dtype=np.float64)
    back = np.zeros((N, C), dtype=np.int32)
    cdef Py_ssize_t S = offsets.shape[0] - 1, i
    cdef const double *scp = <const double *>cnp.PyArray_DATA(<cnp.ndarray>sc)
    cdef const cnp.int64_t *op = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>offsets)
    cdef const cnp.uint8_t *ap = <const cnp.uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>allowed)
    cdef const cnp.uint8_t *stp = <const cnp.uint8_t *>cnp.PyArray_DATA(
        <cnp.ndarray>start_allowed)
    cdef double *dp = <double *>cnp.PyArray_DATA(<cnp.ndarray>delta)
    cdef cnp.int32_t *bp = <cnp.int32_t *>cnp.PyArray_DATA(<cnp.ndarray>back)
    cdef cnp.int64_t *outp = <cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef int nt = threads_for(N * C * C, 200000)
    if C == 0:
        return out
    cdef _Viterbi v
    v.sc, v.C, v.off, v.allowed, v.start = scp, C, op, ap, stp
    v.delta, v.back, v.out = dp, bp, outp
    with nogil:
        # sentences in chunks of SENT_GRAIN, each decoded on its own
        parallel_for(_viterbi_task, &v, S, SENT_GRAIN, nt)
    return out
