"""constrained_viterbi against the plain-loop reference and brute force."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cygrad import kernels as K
from cygrad import reference as R
from cygrad.ner.model import iob2_constraints
from helpers import run_with_threads

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def brute_force(scores, allowed, start):
    best, arg = -np.inf, None
    for path in itertools.product(range(scores.shape[1]), repeat=scores.shape[0]):
        if not start[path[0]] or any(not allowed[a, b] for a, b in zip(path, path[1:])):
            continue
        v = sum(scores[t, c] for t, c in enumerate(path))
        if v > best:
            best, arg = v, path
    return list(arg)


def test_iob2_constraints():
    allowed, start = iob2_constraints(TAGS)
    assert start.tolist() == [True, True, False, True, False]
    assert allowed[:, 2].tolist() == [False, True, True, False, False]   # I-LOC
    assert allowed[:, 4].tolist() == [False, False, False, True, True]   # I-PER
    assert allowed[:, [0, 1, 3]].all()


@pytest.mark.parametrize("seed", range(5))
def test_viterbi_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    allowed, start = iob2_constraints(TAGS)
    scores = rng.standard_normal((5, 5)) * 3
    got = K.constrained_viterbi(scores, np.array([0, 5]), allowed, start)
    assert got.tolist() == brute_force(scores, allowed, start)


def test_viterbi_fixes_an_invalid_greedy_sequence():
    allowed, start = iob2_constraints(TAGS)
    logp = np.log(np.array([[0.1, 0.2, 0.6, 0.05, 0.05],     # greedy: I-LOC at the start
                            [0.1, 0.1, 0.7, 0.05, 0.05]]))
    assert logp.argmax(axis=1).tolist() == [2, 2]
    assert K.constrained_viterbi(logp, np.array([0, 2]), allowed, start).tolist() == [1, 2]


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=0, max_size=12),
       seed=st.integers(0, 2**32 - 1), f32=st.booleans())
def test_viterbi_matches_reference(lengths, seed, f32):
    rng = np.random.default_rng(seed)
    allowed, start = iob2_constraints(TAGS)
    offsets = np.cumsum([0] + lengths)
    scores = rng.standard_normal((offsets[-1], 5)).astype(np.float32 if f32 else np.float64)
    np.testing.assert_array_equal(K.constrained_viterbi(scores, offsets, allowed, start),
                                  R.constrained_viterbi(scores, offsets, allowed, start))


def test_viterbi_threads_give_the_same_answer():
    rng = np.random.default_rng(0)
    allowed, start = iob2_constraints(TAGS)
    offsets = np.cumsum([0] + list(rng.integers(1, 40, 3000)))
    scores = rng.standard_normal((offsets[-1], 5))
    a = run_with_threads(1, K.constrained_viterbi, scores, offsets, allowed, start)
    b = run_with_threads(2, K.constrained_viterbi, scores, offsets, allowed, start)
    np.testing.assert_array_equal(a, b)


def test_viterbi_bad_input():
    allowed, start = iob2_constraints(TAGS)
    s = np.zeros((4, 5))
    with pytest.raises(ValueError, match="offsets must rise from 0 to 4"):
        K.constrained_viterbi(s, np.array([0, 3]), allowed, start)
    with pytest.raises(ValueError, match="offsets must rise"):
        K.constrained_viterbi(s, np.array([0, 3, 2, 4]), allowed, start)
    with pytest.raises(IndexError, match=r"offsets\[1\] = 5 is out of range \[0, 5\)"):
        K.constrained_viterbi(s, np.array([0, 5]), allowed, start)
    with pytest.raises(ValueError, match=r"allowed must be \(5, 5\)"):
        K.constrained_viterbi(s, np.array([0, 4]), allowed[:3], start)
    with pytest.raises(ValueError, match="allows no tag"):
        K.constrained_viterbi(s, np.array([0, 4]), allowed, np.zeros(5, bool))
    with pytest.raises(TypeError, match="scores must have dtype float32 or float64"):
        K.constrained_viterbi(s.astype(int), np.array([0, 4]), allowed, start)
