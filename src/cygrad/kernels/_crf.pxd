# The linear-chain CRF's per-sentence forward-backward (cygrad/kernels/_crf.pyx), for the
# compiled plans (cygrad.compiler._plan) to run the same sentences as the kernel.
cimport numpy as cnp

cdef struct _Crf:
    const double *s         # (N, C) scores
    const double *T         # (C + 1, C + 1) transitions, -inf where forbidden
    const double *E         # exp(T - tmax): 0 where forbidden
    double tmax
    double *e               # (N, C) exp(s - row max)
    double *z               # (N,) forward normalisers
    const cnp.uint8_t *reach    # (C + 1, C): state reachable at token j < C from the
    const cnp.uint8_t *coreach  # start; able to end j tokens before the end; row C: on
                                # any path (the mask's structure only)
    bint fast               # the scaled pass may be tried (transitions spread <= 600)
    const cnp.int64_t *off
    const cnp.int64_t *y    # gold tags (N,), or NULL (decoding)
    Py_ssize_t C
    double *alpha           # (N, C)
    double *beta            # (N, C)
    double *ds              # (N, C) gradient wrt s
    double *dT              # (S, (C + 1)^2) per-sentence expected - observed counts
    double *loss            # (S,)
    cnp.int32_t *back       # (N, C) Viterbi back-pointers
    cnp.int64_t *out        # (N,) Viterbi path


cdef bint nll_one(_Crf *k, Py_ssize_t i) noexcept nogil
cdef void nll_one_log(_Crf *k, Py_ssize_t i) noexcept nogil
