"""The linear-chain CRF (issue 14): cygrad.kernels.crf_nll / crf_viterbi against
the NumPy reference, against brute force over every tag path of tiny
sentences, against central differences (gradcheck), and on bad input."""

import itertools

import numpy as np
import pytest

import cygrad as cg
from cygrad import kernels as K
from cygrad import reference as R


def _problem(seed, C, lengths, dtype=np.float64):
    rng = np.random.default_rng(seed)
    N = int(np.sum(lengths))
    s = rng.standard_normal((N, C)).astype(dtype)
    T = rng.standard_normal((C + 1, C + 1)).astype(dtype)
    y = rng.integers(0, C, N)
    return s, np.asarray(lengths), y, T


def _iob_mask(C):
    """A mask in the spirit of IOB2 over tags O, B-1, I-1, B-2, I-2, ...: I-k only
    after B-k or I-k, never first."""
    allowed = np.ones((C + 1, C + 1), dtype=bool)
    for c in range(2, C, 2):           # I-tags
        allowed[:, c] = False
        allowed[c - 1, c] = allowed[c, c] = True
    return allowed


def _brute(s, lengths, y, T, allowed=None):
    """NLL per sentence and gradients by enumerating every path."""
    C = s.shape[1]
    Tm = np.where(allowed, T, -np.inf) if allowed is not None else T
    ds, dT, losses, lo = np.zeros_like(s, dtype=np.float64), np.zeros((C + 1, C + 1)), [], 0
    for n in lengths:
        def score(p):
            v = Tm[C, p[0]] + Tm[p[-1], C] + sum(s[lo + t, p[t]] for t in range(n))
            return v + sum(Tm[p[t - 1], p[t]] for t in range(1, n))
        paths = list(itertools.product(range(C), repeat=n))
        sc = np.array([score(p) for p in paths])
        logZ = np.logaddexp.reduce(sc)
        prob = np.exp(sc - logZ)
        for p, w in zip(paths, prob):
            if w == 0:
                continue
            dT[C, p[0]] += w
            dT[p[-1], C] += w
            for t in range(n):
                ds[lo + t, p[t]] += w
                if t:
                    dT[p[t - 1], p[t]] += w
        g = tuple(y[lo:lo + n])
        losses.append(logZ - score(g))
        dT[C, g[0]] -= 1
        dT[g[-1], C] -= 1
        for t in range(n):
            ds[lo + t, g[t]] -= 1
            if t:
                dT[g[t - 1], g[t]] -= 1
        lo += n
    return np.array(losses), ds, dT


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("masked", [False, True])
def test_brute_force_oracle(seed, masked):
    C = 5 if masked else 3
    lengths = [1, 2, 3, 4] if not masked else [1, 2, 3]
    s, L, y, T = _problem(seed, C, lengths)
    allowed = None
    if masked:
        allowed = _iob_mask(C)
        y = K.crf_viterbi(s, L, T, allowed)        # a permitted gold path
    loss, ds, dT = K.crf_nll(s, L, y, T, allowed)
    bl, bds, bdT = _brute(s, L, y, T, allowed)
    np.testing.assert_allclose(loss, bl, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds, bds, atol=1e-12)
    np.testing.assert_allclose(dT, bdT, atol=1e-12)
    if masked:
        assert np.all(dT[~allowed] == 0)
    # Viterbi: the brute-force argmax (ties are measure-zero with random scores)
    best, lo = [], 0
    Tm = np.where(allowed, T, -np.inf) if masked else T
    for n in L:
        paths = list(itertools.product(range(C), repeat=n))
        sc = [Tm[C, p[0]] + Tm[p[-1], C] + sum(s[lo + t, p[t]] for t in range(n))
              + sum(Tm[p[t - 1], p[t]] for t in range(1, n)) for p in paths]
        best.extend(paths[int(np.argmax(sc))])
        lo += n
    np.testing.assert_array_equal(K.crf_viterbi(s, L, T, allowed), best)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_kernel_equals_reference(dtype, masked):
    C = 9
    L = np.random.default_rng(7).integers(1, 30, 40)
    s, L, y, T = _problem(8, C, L, dtype)
    allowed = _iob_mask(C) if masked else None
    if masked:
        y = R.crf_viterbi(s, L, T, allowed)
    loss, ds, dT = K.crf_nll(s, L, y, T, allowed)
    rl, rds, rdT = R.crf_nll(s, L, y, T, allowed)
    assert ds.dtype == dtype and dT.dtype == dtype and loss.dtype == np.float64
    np.testing.assert_allclose(loss, rl, rtol=1e-12)
    tol = 1e-6 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(ds, rds, atol=tol)
    np.testing.assert_allclose(dT, rdT, atol=tol * 50)
    np.testing.assert_array_equal(K.crf_viterbi(s, L, T, allowed),
                                  R.crf_viterbi(s, L, T, allowed))


def test_zero_transitions_decode_like_constrained_viterbi():
    C = 7
    s, L, _, _ = _problem(9, C, [5, 1, 8, 3])
    allowed = _iob_mask(C)
    got = K.crf_viterbi(s, L, np.zeros((C + 1, C + 1)), allowed)
    off = np.r_[0, np.cumsum(L)]
    want = K.constrained_viterbi(s, off, np.ascontiguousarray(allowed[:C, :C]),
                                 np.ascontiguousarray(allowed[C, :C]))
    np.testing.assert_array_equal(got, want)


def test_same_bits_for_any_thread_count():
    C = 9
    L = np.random.default_rng(10).integers(1, 40, 600)
    s, L, y, T = _problem(11, C, L, np.float32)
    outs = []
    for nt in (1, 2):
        with cg.threads(nt):
            outs.append(K.crf_nll(s, L, y, T, None) + (K.crf_viterbi(s, L, T),))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("reduction", ["token_mean", "mean", "sum"])
def test_graph_op_gradcheck_and_reductions(reduction):
    C = 5
    s, L, y, T = _problem(12, C, [3, 1, 4])
    allowed = _iob_mask(C)
    y = K.crf_viterbi(s, L, T, allowed)
    f = lambda a, b: cg.crf_nll(cg.tanh(a), L, y, b, allowed, reduction=reduction)  # noqa
    assert cg.gradcheck(f, [cg.tensor(s, requires_grad=True), cg.tensor(T, requires_grad=True)])
    loss = K.crf_nll(np.tanh(s), L, y, T, allowed)[0].sum()
    div = {"sum": 1, "mean": len(L), "token_mean": len(y)}[reduction]
    assert f(cg.tensor(s), cg.tensor(T)).item() == pytest.approx(loss / div, rel=1e-12)
    with cg.use_backend("numpy"):
        assert f(cg.tensor(s), cg.tensor(T)).item() == pytest.approx(loss / div, rel=1e-12)


@pytest.mark.parametrize("change, err, what", [
    (dict(lengths=[2, 0, 3]), ValueError, r"lengths\[1\] = 0: every sentence needs"),
    (dict(lengths=[2, 2]), ValueError, "lengths sum to 4 but scores has 5 rows"),
    (dict(lengths=[2, 4]), ValueError, "lengths sum to 6 but scores has 5 rows"),
    (dict(lengths=[-1, 6]), IndexError, "lengths"),
    (dict(tags=[0, 1, 2, 3, 0]), IndexError, r"tags\[3\] = 3 is out of range \[0, 3\)"),
    (dict(tags=[0, 1, -1, 0, 0]), IndexError, "tags"),
    (dict(tags=[0, 1, 2]), ValueError, "tags must have 5 entries"),
    (dict(trans=np.zeros((3, 3))), ValueError, r"trans must be \(4, 4\) for 3 tags"),
    (dict(trans=np.zeros((4, 4), np.float32)), TypeError, "trans has dtype float32"),
    (dict(trans=np.full((4, 4), np.nan)), ValueError, "trans holds NaN"),
    (dict(allowed=np.ones((4, 4))), TypeError, "allowed must be a numpy.ndarray of bool"),
    (dict(allowed=np.ones((3, 3), bool)), ValueError, r"allowed must be \(4, 4\)"),
    (dict(tags=[0, 1, 0, 0, 0], allowed=~np.eye(4, dtype=bool)), ValueError,
     "gold tags of sentence 1 use a transition that allowed forbids"),
    (dict(lengths=[[2, 3]]), ValueError, "lengths must be 1-D"),
])
def test_bad_input_is_named(change, err, what):
    kw = dict(scores=np.zeros((5, 3)), lengths=[2, 3], tags=[0, 1, 2, 0, 1],
              trans=np.zeros((4, 4)), allowed=None)
    kw.update(change)
    kw["lengths"] = np.asarray(kw["lengths"])
    kw["tags"] = np.asarray(kw["tags"])
    with pytest.raises(err, match=what):
        K.crf_nll(kw["scores"], kw["lengths"], kw["tags"], kw["trans"], kw["allowed"])


def test_one_token_sentences_and_no_sentences():
    s, L, y, T = _problem(13, 4, [1, 1, 1])
    loss, ds, dT = K.crf_nll(s, L, y, T)
    # one token: log sum_c exp(start_c + s_c + end_c) - (start_y + s_y + end_y)
    v = T[4, :4] + s + T[:4, 4]
    np.testing.assert_allclose(loss, np.logaddexp.reduce(v, axis=1) - v[np.arange(3), y])
    loss, ds, dT = K.crf_nll(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64),
                             np.zeros((5, 5)))
    assert loss.shape == (0,) and ds.shape == (0, 4) and not dT.any()
    with pytest.raises(ValueError, match="reduction must be"):
        cg.crf_nll(cg.tensor(s), L, y, cg.tensor(T), reduction="avg")


def test_extreme_scores_take_the_log_space_path():
    """Scores spread by thousands within a token underflow the scaled recursions;
    the kernel then runs that sentence in log space and still matches the
    reference and brute force."""
    C = 5
    s, L, _, T = _problem(14, C, [3, 2, 4])
    s = s * 2000.0
    allowed = _iob_mask(C)
    y = K.crf_viterbi(s, L, T, allowed)
    y[2] = 0                            # a gold path far from the best one (O is always allowed)
    loss, ds, dT = K.crf_nll(s, L, y, T, allowed)
    rl, rds, rdT = R.crf_nll(s, L, y, T, allowed)
    assert np.isfinite(loss).all() and np.isfinite(ds).all() and np.isfinite(dT).all()
    np.testing.assert_allclose(loss, rl, rtol=1e-12, atol=1e-8)
    # (log Z of size ~1e4 carries ~1e-12 rounding into the marginals)
    np.testing.assert_allclose(ds, rds, atol=1e-9)
    np.testing.assert_allclose(dT, rdT, atol=1e-9)


@pytest.mark.parametrize("seed", range(40))
def test_wide_score_and_transition_spreads_match_the_reference(seed):
    """Spreads of 30-2000 in the scores and 1-200 in the transitions, under IOB2
    masks: where the scaled pass would lose a path that matters (a state's weight
    out of the normal range, found as it goes) the sentence is redone in log
    space, so loss and gradients match the log-space reference."""
    rng = np.random.default_rng(1000 + seed)
    C = int(rng.choice([3, 5, 9]))
    L = rng.integers(1, 30, 4)
    s = rng.standard_normal((L.sum(), C)) * float(rng.choice([30, 100, 300, 700, 2000]))
    T = rng.standard_normal((C + 1, C + 1)) * float(rng.choice([1, 5, 50, 200]))
    allowed = _iob_mask(C)
    y = K.crf_viterbi(s, L, T, allowed) if seed % 2 else np.zeros(L.sum(), np.int64)
    loss, ds, dT = K.crf_nll(s, L, y, T, allowed)
    rl, rds, rdT = R.crf_nll(s, L, y, T, allowed)
    assert (loss >= -1e-9 * (1 + np.abs(rl))).all()
    np.testing.assert_allclose(loss, rl, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(ds, rds, atol=1e-6)
    np.testing.assert_allclose(dT, rdT, atol=1e-5)


def test_a_mask_whose_reachable_tags_alternate():
    """Tags 0 -> 1 -> 2 -> 0 only (so which tags a position can hold cycles with
    period 3), sentences longer than C: brute force agrees."""
    C = 3
    allowed = np.zeros((C + 1, C + 1), dtype=bool)
    allowed[C, 0] = True
    allowed[0, 1] = allowed[1, 2] = allowed[2, 0] = True
    allowed[:C, C] = True
    s, L, _, T = _problem(15, C, [7, 8, 4])
    y = K.crf_viterbi(s, L, T, allowed)
    loss, ds, dT = K.crf_nll(s, L, y, T, allowed)
    bl, bds, bdT = _brute(s, L, y, T, allowed)
    np.testing.assert_allclose(loss, bl, atol=1e-12)     # one path per sentence: loss 0
    np.testing.assert_allclose(ds, bds, atol=1e-12)
    np.testing.assert_allclose(dT, bdT, atol=1e-12)
