# cython: language_level=3
"""A linear-chain CRF over tag scores: its negative log-likelihood with
gradients by forward-backward, and the one Viterbi decoder of cygrad: with learned
transitions (crf_viterbi), or with hard constraints alone (constrained_viterbi: a
transition table of 0 where allowed and -inf where forbidden).

Model (Collobert et al. 2011's sentence-level log-likelihood): a sentence of n
tokens with per-token scores s[t, c] and transition scores T (C + 1, C + 1),
where index C is the sentence boundary (row C: start -> tag, column C: tag ->
end), scores the tag path y as

    score(y) = T[C, y_1] + sum_t s[t, y_t] + sum_{t>1} T[y_{t-1}, y_t] + T[y_n, C]

and NLL = log Z - score(gold), Z the sum of exp(score) over all paths. An
optional bool mask ``allowed`` (C + 1, C + 1) forbids transitions (IOB2: I-X
only after B-X or I-X): forbidden ones take no part in Z and get no gradient.

Gradients: d s[t, c] = P(y_t = c) - [gold_t = c], d T[p, c] = expected minus
observed count of the transition p -> c, from the forward (alpha) and backward
(beta) recursions, scaled (each step normalised, log Z from the normalisers) in
double precision; cygrad.kernels.reference.crf_nll runs them in log space.

Design: sentences are independent, so threads take chunks of SENT_GRAIN
sentences from the pool (cygrad.kernels._parallel). Each sentence writes its own rows of
the alpha/beta tables and of d s, and its own (C + 1)^2 block of transition
counts; the blocks are summed afterwards in sentence order. So the result is
the same for any thread count. Scratch memory is allocated once per call, at
the Python boundary, before the GIL is released.
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport INFINITY, exp, fabs, log
from cygrad.kernels._parallel cimport parallel_for

from cygrad.kernels._common cimport float_array, index_array, threads_for

cnp.import_array()


cdef enum:
    SENT_GRAIN = 8      # sentences per chunk of a threaded loop


# the _Crf struct: cygrad/kernels/_crf.pxd (compiled plans run the same sentences)


cdef double _gold(_Crf *k, Py_ssize_t t0, Py_ssize_t t1, double *dT) noexcept nogil:
    """The gold path's score; its token and transition counts come off d s and dT."""
    cdef Py_ssize_t C = k.C, W = C + 1, t
    cdef const cnp.int64_t *y = k.y
    cdef const double *T = k.T
    cdef double gold = T[C * W + y[t0]] + T[y[t1 - 1] * W + C]
    dT[C * W + y[t0]] -= 1.0
    dT[y[t1 - 1] * W + C] -= 1.0
    for t in range(t0, t1):
        gold += k.s[t * C + y[t]]
        k.ds[t * C + y[t]] -= 1.0
        if t > t0:
            gold += T[y[t - 1] * W + y[t]]
            dT[y[t - 1] * W + y[t]] -= 1.0
    return gold


cdef bint nll_one(_Crf *k, Py_ssize_t i) noexcept nogil:
    """One sentence by the scaled forward-backward recursions (Rabiner): in linear
    space on exp(s - max_c s) and exp(T - max T), each step normalised to sum 1,
    log Z gathered from the normalisers; C^2 multiply-adds per token and step, no
    exp in the inner loops. Forbidden transitions are exact zeros.

    Exact to rounding when no quantity leaves the normal range, which is checked
    as it goes: every exp(s - max) and allowed exp(T - max T) at least 1e-280
    (a spread of at most 600), every scaled alpha of a reachable state at least
    1e-280, every scaled beta of a state that can reach the end within
    [1e-280, 1e280]; then a dropped term is below 1e-300 of what it joins.
    Returns False (the log-space pass takes the sentence) when a check fails."""
    cdef Py_ssize_t C = k.C, W = C + 1, t, c, p
    cdef Py_ssize_t t0 = k.off[i], t1 = k.off[i + 1]
    cdef const double *s = k.s
    cdef const double *E = k.E
    cdef double *al = k.alpha
    cdef double *be = k.beta
    cdef double *e = k.e
    cdef double *z = k.z
    cdef double *ds = k.ds
    cdef double *dT = k.dT + i * W * W
    cdef const cnp.int64_t *y = k.y
    cdef const double *T = k.T
    cdef const cnp.uint8_t *rf
    cdef const cnp.uint8_t *rb
    cdef double m, lo, v, logZ, gold, zend, a
    if not k.fast:
        return False
    for c in range(W * W):
        dT[c] = 0.0
    logZ = (t1 - t0 + 1) * k.tmax
    for t in range(t0, t1):         # e = exp(s - max), the max into log Z
        m = s[t * C]
        lo = m
        for c in range(1, C):
            if s[t * C + c] > m:
                m = s[t * C + c]
            if s[t * C + c] < lo:
                lo = s[t * C + c]
        if not m - lo <= 600.0:     # (NaN fails too)
            return False
        for c in range(C):
            e[t * C + c] = exp(s[t * C + c] - m)
        logZ += m
    # forward
    v = 0.0
    for c in range(C):
        al[t0 * C + c] = E[C * W + c] * e[t0 * C + c]
        v += al[t0 * C + c]
    if not v > 1e-280:
        return False
    z[t0] = v
    for c in range(C):
        al[t0 * C + c] /= v
        if k.reach[c] and not al[t0 * C + c] >= 1e-280:
            return False
    for t in range(t0 + 1, t1):
        for c in range(C):
            al[t * C + c] = 0.0
        for p in range(C):
            a = al[(t - 1) * C + p]
            if a != 0.0:
                for c in range(C):
                    al[t * C + c] += a * E[p * W + c]
        v = 0.0
        for c in range(C):
            al[t * C + c] *= e[t * C + c]
            v += al[t * C + c]
        if not v > 1e-280:      # underflow (or NaN): the log-space pass instead
            return False
        z[t] = v
        rf = k.reach + min(t - t0, C) * C
        for c in range(C):
            al[t * C + c] /= v
            if rf[c] and not al[t * C + c] >= 1e-280:
                return False
    zend = 0.0
    for c in range(C):
        zend += al[(t1 - 1) * C + c] * E[c * W + C]
    if not zend > 1e-280:
        return False
    for t in range(t0, t1):
        logZ += log(z[t])
    logZ += log(zend)
    # backward, with the forward's normalisers
    for c in range(C):
        be[(t1 - 1) * C + c] = E[c * W + C] / zend
        if k.coreach[c] and not 1e-280 <= be[(t1 - 1) * C + c] <= 1e280:
            return False
    t = t1 - 2
    while t >= t0:
        rb = k.coreach + min(t1 - 1 - t, C) * C
        for p in range(C):
            v = 0.0
            for c in range(C):
                v += E[p * W + c] * e[(t + 1) * C + c] * be[(t + 1) * C + c]
            be[t * C + p] = v / z[t + 1]
            if rb[p] and not 1e-280 <= be[t * C + p] <= 1e280:
                return False
        t -= 1
    # marginals: tokens (d s) and transitions (dT)
    for t in range(t0, t1):
        for c in range(C):
            ds[t * C + c] = al[t * C + c] * be[t * C + c]
    for c in range(C):
        dT[C * W + c] += ds[t0 * C + c]
        dT[c * W + C] += ds[(t1 - 1) * C + c]
    for t in range(t0 + 1, t1):
        for p in range(C):
            a = al[(t - 1) * C + p] / z[t]
            if a == 0.0:
                continue
            for c in range(C):
                dT[p * W + c] += a * E[p * W + c] * e[t * C + c] * be[t * C + c]
    gold = _gold(k, t0, t1, dT)
    if not logZ - gold >= -1e-9 * (1.0 + fabs(logZ)):     # an NLL is never negative
        return False
    k.loss[i] = logZ - gold
    return True


cdef void nll_one_log(_Crf *k, Py_ssize_t i) noexcept nogil:
    """The same in log space: the fallback for a sentence on which a range check
    of the scaled pass failed."""
    cdef Py_ssize_t C = k.C, W = C + 1, t, c, p
    cdef Py_ssize_t t0 = k.off[i], t1 = k.off[i + 1]
    cdef const double *s = k.s
    cdef const double *T = k.T
    cdef double *al = k.alpha
    cdef double *be = k.beta
    cdef double *ds = k.ds
    cdef double *dT = k.dT + i * W * W
    cdef const cnp.int64_t *y = k.y
    cdef double m, v, logZ, gold, pr
    for c in range(W * W):
        dT[c] = 0.0
    # forward
    for c in range(C):
        al[t0 * C + c] = T[C * W + c] + s[t0 * C + c]
    for t in range(t0 + 1, t1):
        for c in range(C):
            m = -INFINITY
            for p in range(C):
                v = al[(t - 1) * C + p] + T[p * W + c]
                if v > m:
                    m = v
            if m == -INFINITY:
                al[t * C + c] = -INFINITY
                continue
            v = 0.0
            for p in range(C):
                v += exp(al[(t - 1) * C + p] + T[p * W + c] - m)
            al[t * C + c] = m + log(v) + s[t * C + c]
    m = -INFINITY
    for c in range(C):
        v = al[(t1 - 1) * C + c] + T[c * W + C]
        if v > m:
            m = v
    v = 0.0
    for c in range(C):
        v += exp(al[(t1 - 1) * C + c] + T[c * W + C] - m)
    logZ = m + log(v)
    # backward
    for c in range(C):
        be[(t1 - 1) * C + c] = T[c * W + C]
    t = t1 - 2
    while t >= t0:
        for p in range(C):
            m = -INFINITY
            for c in range(C):
                v = T[p * W + c] + s[(t + 1) * C + c] + be[(t + 1) * C + c]
                if v > m:
                    m = v
            if m == -INFINITY:
                be[t * C + p] = -INFINITY
                continue
            v = 0.0
            for c in range(C):
                v += exp(T[p * W + c] + s[(t + 1) * C + c] + be[(t + 1) * C + c] - m)
            be[t * C + p] = m + log(v)
        t -= 1
    # marginals: token (d s) and transition (dT) expectations
    for t in range(t0, t1):
        for c in range(C):
            ds[t * C + c] = exp(al[t * C + c] + be[t * C + c] - logZ)
    for c in range(C):
        dT[C * W + c] += ds[t0 * C + c]
        dT[c * W + C] += ds[(t1 - 1) * C + c]
    for t in range(t0 + 1, t1):
        for p in range(C):
            if al[(t - 1) * C + p] == -INFINITY:
                continue
            for c in range(C):
                v = T[p * W + c]
                if v == -INFINITY:
                    continue
                pr = exp(al[(t - 1) * C + p] + v + s[t * C + c] + be[t * C + c] - logZ)
                dT[p * W + c] += pr
    gold = _gold(k, t0, t1, dT)
    k.loss[i] = logZ - gold


cdef void _nll_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(lo, hi):
        if not nll_one(<_Crf *>ctx, i):
            nll_one_log(<_Crf *>ctx, i)


cdef void _viterbi_one(_Crf *k, Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t C = k.C, W = C + 1, t, c, p, arg
    cdef Py_ssize_t t0 = k.off[i], t1 = k.off[i + 1]
    cdef const double *s = k.s
    cdef const double *T = k.T
    cdef double *d = k.alpha
    cdef double best, v
    if t1 <= t0:        # (an empty sentence: constrained_viterbi's offsets allow one)
        return
    for c in range(C):
        d[t0 * C + c] = T[C * W + c] + s[t0 * C + c]
    for t in range(t0 + 1, t1):
        for c in range(C):
            best = -INFINITY
            arg = 0
            for p in range(C):
                v = d[(t - 1) * C + p] + T[p * W + c]
                if v > best:            # ties: the lowest tag index
                    best = v
                    arg = p
            d[t * C + c] = best + s[t * C + c]
            k.back[t * C + c] = <cnp.int32_t>arg
    arg = 0
    best = -INFINITY
    for c in range(C):
        v = d[(t1 - 1) * C + c] + T[c * W + C]
        if v > best:
            best = v
            arg = c
    t = t1 - 1
    while True:
        k.out[t] = arg
        if t == t0:
            break
        arg = k.back[t * C + arg]
        t -= 1


cdef void _viterbi_task(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int worker) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(lo, hi):
        _viterbi_one(<_Crf *>ctx, i)


cdef object _setup(str fn, object scores, object lengths, object trans, object allowed):
    """Checked float64 copies: scores (N, C), offsets (S + 1,), transitions with
    -inf where forbidden; and the mask."""
    scores = float_array(scores, fn, "scores", 2)
    cdef Py_ssize_t N = scores.shape[0], C = scores.shape[1]
    if C < 1:
        raise ValueError(f"{fn}: scores must have at least one tag column, got shape "
                         f"{scores.shape}")
    lengths = index_array(lengths, fn, "lengths", 1, N + 1)
    if lengths.shape[0] and lengths.min() < 1:
        bad = int(np.flatnonzero(lengths < 1)[0])
        raise ValueError(f"{fn}: lengths[{bad}] = {lengths[bad]}: every sentence needs at "
                         f"least one token")
    if int(lengths.sum()) != N:
        raise ValueError(f"{fn}: lengths sum to {int(lengths.sum())} but scores has {N} rows")
    trans = float_array(trans, fn, "trans", 2)
    if trans.shape != (C + 1, C + 1):
        raise ValueError(f"{fn}: trans must be ({C + 1}, {C + 1}) for {C} tags (index {C} is "
                         f"the sentence boundary), got {trans.shape}")
    if trans.dtype != scores.dtype:
        raise TypeError(f"{fn}: trans has dtype {trans.dtype}, scores {scores.dtype}")
    T = np.array(trans, dtype=np.float64, order="C", copy=True)
    if not np.isfinite(T).all():
        raise ValueError(f"{fn}: trans holds NaN or infinity (forbid transitions with "
                         f"allowed= instead)")
    if allowed is not None:
        if not isinstance(allowed, np.ndarray) or allowed.dtype != np.bool_:
            raise TypeError(f"{fn}: allowed must be a numpy.ndarray of bool (a mask), got "
                            f"{getattr(allowed, 'dtype', type(allowed).__name__)}")
        if allowed.shape != (C + 1, C + 1):
            raise ValueError(f"{fn}: allowed must be ({C + 1}, {C + 1}), got {allowed.shape}")
        if not allowed[C, :C].any() or not allowed[:C, C].any():
            raise ValueError(f"{fn}: allowed permits no first tag or no last tag")
        T[~allowed] = -np.inf
    off = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    s = np.array(scores, dtype=np.float64, order="C", copy=True)
    return scores, s, off, T


def check_gold(fn, allowed, y, off, suffix=""):
    """ValueError naming the first sentence whose gold tags ``y`` (sentences at
    offsets ``off``) use a transition that ``allowed`` forbids (None: no mask)."""
    cdef Py_ssize_t N = y.shape[0]
    if allowed is None or not N:
        return
    C = allowed.shape[0] - 1
    starts, ends = off[:-1], off[1:] - 1
    inner = np.ones(N, dtype=bool)
    inner[starts] = False
    bad = (~allowed[C, y[starts]]) | (~allowed[y[ends], C])
    badt = np.zeros(N, dtype=bool)
    badt[inner] = ~allowed[y[np.flatnonzero(inner) - 1], y[inner]]
    if bad.any() or badt.any():
        i = int(np.flatnonzero(bad)[0]) if bad.any() else \
            int(np.searchsorted(off, np.flatnonzero(badt)[0], side="right") - 1)
        raise ValueError(f"{fn}: the gold tags of sentence {i} use a transition that allowed "
                         f"forbids{suffix}")


def transition_tables(T, E):
    """For transitions T (float64, -inf where forbidden): E = exp(T - max) written in
    place (0 where forbidden); returns (max, whether the scaled pass may be tried:
    the permitted transitions spread at most 600)."""
    fin = T[np.isfinite(T)]
    tmax = float(fin.max()) if fin.size else 0.0
    np.exp(T - tmax, out=E)
    return tmax, bool(fin.size == 0 or tmax - float(fin.min()) <= 600.0)


def reachability(ok):
    """(reach, coreach), uint8 (C + 1, C), from the permitted transitions ``ok`` (bool
    (C + 1, C + 1)): row j < C, the states reachable at token j from the start, and
    those able to end j tokens before the end; row C, the states on any path at all (a
    superset of each later position's, whose sets may cycle: checking too many states
    only sends a sentence to the log-space pass, never skips a needed check)."""
    C = ok.shape[0] - 1
    reach = np.zeros((C + 1, C), dtype=np.uint8)
    coreach = np.zeros((C + 1, C), dtype=np.uint8)
    reach[0], coreach[0] = ok[C, :C], ok[:C, C]
    for j in range(1, C):
        reach[j] = (reach[j - 1].astype(bool)[:, None] & ok[:C, :C]).any(axis=0)
        coreach[j] = (ok[:C, :C] & coreach[j - 1].astype(bool)[None, :]).any(axis=1)
    rc, cc = reach[0].astype(bool), coreach[0].astype(bool)
    for _ in range(C):
        rc = rc | (rc[:, None] & ok[:C, :C]).any(axis=0)
        cc = cc | (ok[:C, :C] & cc[None, :]).any(axis=1)
    reach[C], coreach[C] = rc, cc
    return reach, coreach


def crf_nll(scores, lengths, tags, trans, allowed=None):
    """Negative log-likelihood of gold tag paths under a linear-chain CRF, and its
    gradients (see the module docstring for the model).

    Parameters
    ----------
    scores : ndarray (N, C) of float32 or float64
        Per-token tag scores of S sentences laid end to end.
    lengths : ndarray (S,) of integers, each >= 1, summing to N
    tags : ndarray (N,) of integers in [0, C): the gold path
    trans : ndarray (C + 1, C + 1), the scores' dtype
        Transition scores; row C holds start -> tag, column C tag -> end.
    allowed : ndarray (C + 1, C + 1) of bool, optional
        Permitted transitions; the gold path must use permitted ones only.

    Returns
    -------
    (loss, d_scores, d_trans): loss an ndarray (S,) of float64, each sentence's
    NLL; d_scores (N, C) and d_trans (C + 1, C + 1) in the scores' dtype, the
    gradients of the sum of the losses.
    """
    fn = "crf_nll"
    scores, s, off, T = _setup(fn, scores, lengths, trans, allowed)
    cdef Py_ssize_t N = s.shape[0], C = s.shape[1], S = off.shape[0] - 1, W = C + 1
    y = index_array(tags, fn, "tags", 1, C)
    if y.shape[0] != N:
        raise ValueError(f"{fn}: tags must have {N} entries (one per row of scores), got "
                         f"{y.shape[0]}")
    check_gold(fn, allowed, y, off)
    alpha = np.empty((N, C))
    beta = np.empty((N, C))
    e = np.empty((N, C))
    z = np.empty(N)
    ds = np.empty((N, C))
    E = np.empty_like(T)
    tmax, fast = transition_tables(T, E)
    reach, coreach = reachability(np.isfinite(T))
    dTs = np.empty((S, W * W))
    loss = np.empty(S)
    cdef _Crf k
    k.s = <const double *>cnp.PyArray_DATA(<cnp.ndarray>s)
    k.T = <const double *>cnp.PyArray_DATA(<cnp.ndarray>T)
    k.E = <const double *>cnp.PyArray_DATA(<cnp.ndarray>E)
    k.tmax = tmax
    k.fast = fast
    k.reach = <cnp.uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>reach)
    k.coreach = <cnp.uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>coreach)
    k.e = <double *>cnp.PyArray_DATA(<cnp.ndarray>e)
    k.z = <double *>cnp.PyArray_DATA(<cnp.ndarray>z)
    k.off = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>off)
    k.y = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>y)
    k.C = C
    k.alpha = <double *>cnp.PyArray_DATA(<cnp.ndarray>alpha)
    k.beta = <double *>cnp.PyArray_DATA(<cnp.ndarray>beta)
    k.ds = <double *>cnp.PyArray_DATA(<cnp.ndarray>ds)
    k.dT = <double *>cnp.PyArray_DATA(<cnp.ndarray>dTs)
    k.loss = <double *>cnp.PyArray_DATA(<cnp.ndarray>loss)
    cdef int nt = threads_for(N * C * C, 100000)
    with nogil:
        parallel_for(_nll_task, &k, S, SENT_GRAIN, nt)
    # the transition counts, summed in sentence order (np.add.reduce on axis 0 of a
    # C-contiguous array adds row by row: the same bits for any thread count)
    dT = dTs.sum(axis=0) if S else np.zeros(W * W)
    dt = scores.dtype
    return loss, ds.astype(dt, copy=False), dT.reshape(W, W).astype(dt, copy=False)


def crf_viterbi(scores, lengths, trans, allowed=None):
    """The best tag path of each sentence under the CRF's scores and transitions
    (ties to the lowest tag index); ``allowed`` forbids transitions. Returns an
    ndarray (N,) of int64. Arguments as for :func:`crf_nll`."""
    fn = "crf_viterbi"
    scores, s, off, T = _setup(fn, scores, lengths, trans, allowed)
    return _viterbi(s, off, T)


cdef object _viterbi(object s, object off, object T):
    """The best paths (N,) int64 of the sentences at offsets ``off`` (int64) of the
    float64 C-contiguous scores ``s`` (N, C) under transitions ``T`` (C + 1, C + 1),
    float64, -inf where forbidden: both decoders' one run."""
    cdef Py_ssize_t N = s.shape[0], C = s.shape[1], S = off.shape[0] - 1
    d = np.empty((N, C))
    back = np.zeros((N, C), dtype=np.int32)
    out = np.zeros(N, dtype=np.int64)
    cdef _Crf k
    k.s = <const double *>cnp.PyArray_DATA(<cnp.ndarray>s)
    k.T = <const double *>cnp.PyArray_DATA(<cnp.ndarray>T)
    k.off = <const cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>off)
    k.C = C
    k.alpha = <double *>cnp.PyArray_DATA(<cnp.ndarray>d)
    k.back = <cnp.int32_t *>cnp.PyArray_DATA(<cnp.ndarray>back)
    k.out = <cnp.int64_t *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef int nt = threads_for(N * C * C, 200000)
    with nogil:
        parallel_for(_viterbi_task, &k, S, SENT_GRAIN, nt)
    return out


def constrained_viterbi(scores, offsets, allowed, start_allowed):
    """Best tag sequence of each sentence under hard transition constraints.

    Maximises the sum of ``scores[t, tag_t]`` (e.g. log-probabilities) over each
    sentence subject to ``allowed[tag_{t-1}, tag_t]`` and
    ``start_allowed[tag_first]``: the CRF's Viterbi (ties to the lowest tag index)
    over a transition table of 0 where allowed and -inf where forbidden.

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
    if allowed.shape != (C, C) or start_allowed.shape != (C,):
        raise ValueError(f"{fn}: allowed must be ({C}, {C}) and start_allowed ({C},), got "
                         f"{allowed.shape} and {start_allowed.shape}")
    if C and not start_allowed.any():
        raise ValueError(f"{fn}: start_allowed allows no tag")
    out = np.zeros(N, dtype=np.int64)
    if C == 0:
        return out
    T = np.zeros((C + 1, C + 1))        # row C: start -> tag; column C: tag -> end (any)
    T[:C, :C][~allowed] = -np.inf
    T[C, :C][~start_allowed] = -np.inf
    T[C, C] = -np.inf
    return _viterbi(np.require(scores, dtype=np.float64, requirements="CA"), offsets, T)
