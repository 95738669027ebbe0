"""The window model's training objectives: one class per loss.

Each objective says everything that depends on the loss: how many scores a
window gets and which parameters of its own the model holds (the CRF's
transitions), the loss graph over the model's scores, what a training step is
given for a batch (its targets; the max-margin objective's corrupt windows),
how batches are cut (windows, or whole sentences for the CRF), how scores are
decoded into tags, and, for max-margin, the calibration of its threshold. The
model (:mod:`cygrad.ner.model`) and the trainer (:mod:`cygrad.ner.train`) ask
:func:`objective` for the one of their configuration instead of branching on
its name.

- ``softmax``: cross-entropy of the tags' softmax, p - onehot(y) at the scores;
  decoded by the best IOB2-consistent sequence of the tokens' log-probabilities.
- ``crf``: a sentence's negative log-likelihood under a linear-chain CRF
  (scores plus learned transitions, forbidden transitions at -inf); the gradient
  is expected minus observed counts (forward-backward); decoded by Viterbi.
- ``logistic``: the lecture's binary task (is the centre word of the positive
  type?), sigmoid cross-entropy of one score a window.
- ``max-margin``: the lecture's J = max(0, 1 - s + s_c), s_c the score of the
  window with its centre word replaced by a random vocabulary word.
"""

import numpy as np

import cygrad as cg
from cygrad import kernels as K

__all__ = ["Objective", "Softmax", "CRF", "Logistic", "MaxMargin", "OBJECTIVES", "objective",
           "iob2_constraints", "crf_constraints"]


def iob2_constraints(tags):
    """(allowed, start): I-X may follow only B-X or I-X, and may not open a sentence."""
    C = len(tags)
    allowed = np.ones((C, C), dtype=bool)
    start = np.ones(C, dtype=bool)
    for j, tag in enumerate(tags):
        if tag.startswith("I-"):
            start[j] = False
            allowed[:, j] = [p in ("B-" + tag[2:], tag) for p in tags]
    return allowed, start


def crf_constraints(tags):
    """The IOB2 constraints as a CRF mask (C + 1, C + 1), index C the sentence
    boundary: I-X only after B-X or I-X, never first; any tag may end."""
    allowed, start = iob2_constraints(tags)
    C = len(tags)
    out = np.ones((C + 1, C + 1), dtype=bool)
    out[:C, :C] = allowed
    out[C, :C] = start
    out[C, C] = False           # no empty sentence
    return out


class Objective:
    """What a loss decides. A training step's arguments are the batch's feature
    windows (``feats``: words, suffixes, cases, prefixes, shapes, n-gram bags, in
    that order), then what :meth:`targets` adds; the loss function built by
    :meth:`loss_fn` takes the same, then the dropout key."""

    name = ""
    binary = False          # one score a window: the lecture's binary task
    sentences = False       # trains on whole sentences (batches of sentences, lengths)
    draws = False           # draws random numbers of its own in every step
    corrupts_words = False  # replaces words by vocabulary entries (no n-gram bags then)

    def outputs(self, n_tags):
        """Scores a window gets."""
        return 1 if self.binary else n_tags

    def shapes(self, n_out):
        """{name: shape} of the objective's own parameters (they start at zero)."""
        return {}

    def loss_fn(self, trainer, logits):
        """The loss as a function of the step's arguments; ``logits(*feats, key)``
        builds the model's scores."""
        raise NotImplementedError

    def targets(self, trainer, feats, labels, lengths, rng, share):
        """The step's arguments for a batch, or None when it has nothing to learn
        from (max-margin without a positive window)."""
        raise NotImplementedError

    def examples(self, trainer, labels):
        """The batch's examples: the weight of this rank's gradient (distributed)."""
        return len(labels)

    def first_row(self, share):
        """This rank's first row of the global batch's dropout masks (distributed)."""
        return share[1]

    def skip_draws(self, trainer, rng, share):
        """A rank without examples draws what the others draw (distributed)."""

    def words_touched(self, args):
        """The word id arrays among a step's arguments (the rows of E it updates)."""
        return (args[0],)

    def calibrate(self, trainer, enc, n=20000):
        """After an epoch: nothing to do, but for max-margin (its threshold, on the
        first ``n`` training windows)."""

    def decode(self, model, logp, enc, decode):
        """Tag ids from scores (N, C) (changed in place): the best IOB2-consistent
        sequence of each sentence's log-probabilities, or each token's best tag
        (``decode="greedy"``)."""
        if decode == "greedy":
            return logp.argmax(axis=1)
        logp -= logp.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        allowed, start = iob2_constraints(model.vocab.tags)
        return K.constrained_viterbi(logp, enc.offsets, allowed, start)


class Softmax(Objective):
    name = "softmax"

    def loss_fn(self, trainer, logits):
        def loss_fn(words, suffixes, cases, prefixes, shapes, ngrams, labels, key=None):
            return cg.softmax_cross_entropy(
                logits(words, suffixes, cases, prefixes, shapes, ngrams, key), labels)
        return loss_fn

    def targets(self, trainer, feats, labels, lengths, rng, share):
        return (*feats, labels)


class CRF(Objective):
    name = "crf"
    sentences = True

    def shapes(self, n_out):
        return {"A": (n_out + 1, n_out + 1)}    # transitions; index C is the boundary

    def loss_fn(self, trainer, logits):
        allowed = crf_constraints(trainer.model.vocab.tags)
        A = trainer.t["A"]

        def loss_fn(words, suffixes, cases, prefixes, shapes, ngrams, labels, lengths,
                    key=None):
            return cg.crf_nll(logits(words, suffixes, cases, prefixes, shapes, ngrams, key),
                              lengths, labels, A, allowed)
        return loss_fn

    def targets(self, trainer, feats, labels, lengths, rng, share):
        if lengths is None:
            raise ValueError("the crf loss trains on whole sentences: pass lengths=")
        return (*feats, labels, np.asarray(lengths, dtype=np.int64))

    def decode(self, model, logp, enc, decode):
        if decode == "greedy":
            return logp.argmax(axis=1)
        if len(enc) == 0:
            return np.zeros(0, dtype=np.int64)
        lengths = np.diff(enc.offsets)
        A = model.params["A"]
        return K.crf_viterbi(logp.astype(A.dtype), lengths[lengths > 0],  # empty: no rows
                             A, crf_constraints(model.vocab.tags))


class Binary(Objective):
    binary = True

    def decode(self, model, logp, enc, decode):
        return (logp[:, 0] > 0).astype(np.int64)     # 1 where the window's score is positive


class Logistic(Binary):
    name = "logistic"

    def loss_fn(self, trainer, logits):
        def loss_fn(words, suffixes, cases, prefixes, shapes, ngrams, targets, key=None):
            s = logits(words, suffixes, cases, prefixes, shapes, ngrams, key)
            return cg.sigmoid_binary_cross_entropy(s.reshape(len(targets)), targets)
        return loss_fn

    def targets(self, trainer, feats, labels, lengths, rng, share):
        y = trainer.positive_tag[labels]
        return (*feats, y.astype(trainer.model.config.dtype))


class MaxMargin(Binary):
    """Each window whose centre is a positive should outscore, by 1, the same
    window with its centre word replaced by a random vocabulary word (the corrupt
    window; its suffix and prefix follow the word, casing and shape stay), both
    under the same dropout masks."""

    name = "max-margin"
    draws = True
    corrupts_words = True

    def loss_fn(self, trainer, logits):
        def loss_fn(words, suffixes, cases, prefixes, shapes, ngrams, c_words, c_suffixes,
                    c_prefixes, key=None):
            n = len(words)
            s_true = logits(words, suffixes, cases, prefixes, shapes, ngrams, key).reshape(n)
            s_corrupt = logits(c_words, c_suffixes, cases, c_prefixes, shapes, ngrams,
                               key).reshape(n)
            return cg.max_margin(s_true, s_corrupt)
        return loss_fn

    def examples(self, trainer, labels):
        return int(np.count_nonzero(trainer.positive_tag[labels]))

    def first_row(self, share):
        return share[2]             # the masks are the positive windows'

    def skip_draws(self, trainer, rng, share):
        if share[3]:
            rng.integers(3, len(trainer.model.vocab.words), share[3])

    def words_touched(self, args):
        return (args[0], args[6])

    def targets(self, trainer, feats, labels, lengths, rng, share):
        V = len(trainer.model.vocab.words)
        pos = np.flatnonzero(trainer.positive_tag[labels])
        corrupt = None
        if share is not None:       # the global batch's corrupt words, this rank's share
            before, total = share[2], share[3]
            if total:
                corrupt = rng.integers(3, V, total)[before:before + len(pos)]
        if len(pos) == 0:
            return None
        w, sf, cs, pf, sh, ng = (f[pos] for f in feats)
        wc, sc, pc = w.copy(), sf.copy(), pf.copy()
        k = trainer.model.config.k
        wc[:, k] = corrupt if corrupt is not None else rng.integers(3, V, len(pos))
        sc[:, k] = trainer.suffix_of_word[wc[:, k]]
        if trainer.model.config.prefix_dim:
            pc[:, k] = trainer.prefix_of_word[wc[:, k]]
        return (w, sf, cs, pf, sh, ng, wc, sc, pc)

    def calibrate(self, trainer, enc, n=20000):
        """Max-margin scores have no natural zero: move the output bias so that
        score > 0 is the threshold with the best token F1 on (the first n of) the
        training windows. The loss depends on score differences only, so this does
        not change training."""
        model = trainer.model
        m = min(n, len(enc))
        bags = None if enc.ngrams is None else (enc.ngrams[:m], enc.ngram_ptr,
                                                enc.ngram_items)
        s = model.scores(enc.words[:m], enc.suffixes[:m], enc.cases[:m],
                         enc.prefixes[:m], enc.shapes[:m], bags)[:, 0]
        y = trainer.positive_tag[enc.labels[:m]]
        order = np.argsort(-s, kind="stable")
        tp = np.cumsum(y[order])
        f1 = 2 * tp / (np.arange(1, m + 1) + y.sum())
        best = int(np.argmax(f1))
        cut = (s[order[best]] + s[order[best + 1]]) / 2 if best + 1 < m else s[order[best]] - 1
        model.params["c"][0] -= cut


OBJECTIVES = {o.name: o for o in (Softmax(), CRF(), Logistic(), MaxMargin())}


def objective(name):
    """The objective of a loss name (Config.loss)."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"loss must be one of {', '.join(repr(k) for k in OBJECTIVES)}, "
                         f"got {name!r}") from None
