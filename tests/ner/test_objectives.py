"""The NER wing's two tables (#32): the features (cygrad.ner.features) and the
objectives (cygrad.ner.objectives), checked against the data they describe and
against independent computations (one process's random draws, a brute-force
threshold, the lecture's definitions)."""

import itertools

import numpy as np
import pytest

import cygrad as cg
from cygrad.ner import corpus
from cygrad.ner.data import CASES, Vocab, casing, normalise, read_conll, shape
from cygrad.ner.features import FEATURES, active
from cygrad.ner.model import Config, WindowModel
from cygrad.ner.objectives import OBJECTIVES, iob2_constraints, objective
from cygrad.ner.train import TrainConfig, Trainer
from helpers import FakeComm


@pytest.fixture(scope="module")
def sents():
    return read_conll(corpus.path("train"))[:200]


ALL = dict(prefix_dim=3, shape_dim=2)


def test_every_feature_row_matches_the_encoded_data(sents):
    m = WindowModel(Config(hidden=(4,), dim=5, **ALL), Vocab.build(sents))
    enc = m.encode(sents)
    shapes = m.expected_shapes()
    for f in FEATURES:
        # the type table's column is the feature's id windows, and the table has a row
        # for every entry the feature can take
        np.testing.assert_array_equal(enc.type_ids[enc.types, f.column], enc.feature(f.field))
        rows = len(getattr(m.vocab, f.entries)) if f.entries else len(CASES)
        assert shapes[f.table] == (rows, getattr(m.config, f.size))
        assert enc.feature(f.field).max() < rows
    assert m.tables() == [f.table for f in FEATURES]
    # each centre id, looked up independently from the token itself
    v, k = m.vocab, m.config.k
    toks = [t for s in sents for t in s.tokens]
    unk = v.word_index["<unk>"]
    want = {"words": [v.word_index.get(normalise(t), unk) for t in toks],
            "suffixes": [v.suffix_index.get(normalise(t)[-3:], v.suffix_index["<unk>"])
                         for t in toks],
            "cases": [casing(t) for t in toks],
            "prefixes": [v.prefix_index.get(normalise(t)[:3], v.prefix_index["<unk>"])
                         for t in toks],
            "shapes": [v.shape_index.get(shape(t), v.shape_index["<unk>"]) for t in toks]}
    for f in FEATURES:
        np.testing.assert_array_equal(enc.feature(f.field)[:, k], want[f.field], err_msg=f.field)
    assert m.config.input_size() == m.config.width * sum(getattr(m.config, f.size)
                                                        for f in FEATURES)


@pytest.mark.parametrize("off", [f.size for f in FEATURES])
def test_a_feature_switched_off_leaves_the_table_and_the_input(off, sents):
    sizes = dict(dim=5, suffix_dim=4, case_dim=3, prefix_dim=3, shape_dim=2)
    sizes[off] = 0
    cfg = Config(hidden=(4,), **sizes)
    m = WindowModel(cfg, Vocab.build(sents))
    assert [f.size for f in active(cfg)] == [n for n in sizes if sizes[n]]
    assert all(f.table not in m.params for f in FEATURES if f.size == off)
    assert cfg.input_size() == cfg.width * sum(sizes.values())
    enc = m.encode(sents[:5])
    g = m.logits_graph({k: cg.tensor(v) for k, v in m.params.items()}, enc.words, enc.suffixes,
                       enc.cases, prefixes=enc.prefixes, shapes=enc.shapes).data
    np.testing.assert_allclose(g, m.scores(enc.words, enc.suffixes, enc.cases, enc.prefixes,
                                           enc.shapes), rtol=1e-5, atol=1e-6)


def test_a_feature_the_model_reads_and_is_not_given_is_refused_by_name(sents):
    m = WindowModel(Config(hidden=(4,), dim=5, **ALL), Vocab.build(sents))
    enc = m.encode(sents[:3])
    with pytest.raises(ValueError, match="shapes feature: pass shapes="):
        m.scores(enc.words, enc.suffixes, enc.cases, enc.prefixes, None)
    with pytest.raises(ValueError, match="prefixes feature: pass prefixes="):
        m.scores(enc.words, enc.suffixes, enc.cases, None, enc.shapes)


def test_the_objectives_table_is_the_command_line_choice_and_the_configs():
    from cygrad.ner.cli import build_parser
    p = build_parser()
    loss = next(a for a in p._subparsers._group_actions[0].choices["train"]._actions
                if a.dest == "loss")
    assert list(loss.choices) == list(OBJECTIVES) == ["softmax", "crf", "logistic",
                                                      "max-margin"]
    with pytest.raises(ValueError, match="loss must be one of 'softmax', 'crf'.*got 'hinge'"):
        Config(loss="hinge")
    with pytest.raises(ValueError, match="n-gram feature does not work with the max-margin"):
        Config(loss="max-margin", ngram_dim=4)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_sizes_the_output_and_its_own_parameters(name, sents):
    m = WindowModel(Config(hidden=(4,), loss=name), Vocab.build(sents))
    C = len(m.vocab.tags)
    want_out = 1 if name in ("logistic", "max-margin") else C
    assert m.params["U"].shape == (want_out, 4) and m.config.binary == (want_out == 1)
    assert ("A" in m.params) == (name == "crf")
    if name == "crf":
        assert m.params["A"].shape == (C + 1, C + 1) and not m.params["A"].any()


def _trainer(loss, sents, comm=None, **kw):
    m = WindowModel(Config(hidden=(4,), dim=5, loss=loss, **ALL), Vocab.build(sents), seed=1)
    return Trainer(m, TrainConfig(**{"batch_size": 16, **kw}), comm), m.encode(sents)


def test_max_margin_corrupts_the_centre_word_of_each_positive_window(sents):
    tr, enc = _trainer("max-margin", sents)
    idx = np.arange(60)
    feats = tuple(enc.feature(f.field)[idx] for f in FEATURES) + (enc.words[idx],)
    labels = enc.labels[idx]
    args = tr.objective.targets(tr, feats, labels, None, np.random.default_rng(3), None)
    pos = np.flatnonzero(tr.positive_tag[labels])
    assert len(pos) > 0
    w, sf, cs, pf, sh, ng, wc, sc, pc = args
    for a, full in zip((w, sf, cs, pf, sh), feats):
        np.testing.assert_array_equal(a, full[pos])     # the positive windows only
    k = tr.model.config.k
    v = tr.model.vocab
    other = np.arange(w.shape[1]) != k
    np.testing.assert_array_equal(wc[:, other], w[:, other])   # only the centre changes
    assert (wc[:, k] >= 3).all() and (wc[:, k] < len(v.words)).all()
    # the corrupt word's suffix and prefix follow it
    assert [v.suffixes[i] for i in sc[:, k]] == [
        v.suffixes[v.suffix_index.get(v.words[j][-3:], v.suffix_index["<unk>"])]
        for j in wc[:, k]]
    assert [v.prefixes[i] for i in pc[:, k]] == [
        v.prefixes[v.prefix_index.get(v.words[j][:3], v.prefix_index["<unk>"])]
        for j in wc[:, k]]
    touched = tr.objective.words_touched(args)
    assert len(touched) == 2 and touched[0] is w and touched[1] is wc
    # no positive window: nothing to learn from
    none = np.flatnonzero(tr.positive_tag[enc.labels] == 0)[:10]
    assert tr.objective.targets(tr, tuple(f[none] for f in (enc.words,) * 6),
                                enc.labels[none], None, np.random.default_rng(0), None) is None


@pytest.mark.parametrize("size", [2, 3])
def test_max_margin_ranks_draw_one_process_corrupt_words(sents, size):
    """Each rank's corrupt words are its share of the draws one process makes for
    the whole global batch (an independent run with one process is the oracle)."""
    one, enc = _trainer("max-margin", sents, batch_size=48)
    idx = np.arange(48)
    labels = enc.labels[idx]
    feats = tuple(enc.feature(f.field)[idx] for f in FEATURES) + (enc.words[idx],)
    want = one.objective.targets(one, feats, labels, None, np.random.default_rng(7), None)[6]
    got = []
    parts = np.array_split(idx, size)
    pos = one.positive_tag[labels]
    for r in range(size):
        tr, _ = _trainer("max-margin", sents, comm=FakeComm(r, size))
        a = sum(len(q) for q in parts[:r])
        share = (len(idx), a, int(pos[:a].sum()), int(pos.sum()))
        part = parts[r]
        args = tr.objective.targets(tr, tuple(f[part - idx[0]] for f in feats), labels[part],
                                    None, np.random.default_rng(7), share)
        if args is not None:
            got.append(args[6])
    np.testing.assert_array_equal(np.concatenate(got), want)


def test_max_margin_calibration_puts_the_threshold_at_the_best_f1(sents):
    """Brute force: the bias shift that calibrate() makes gives the best token F1
    of every threshold between two consecutive scores."""
    tr, enc = _trainer("max-margin", sents)
    m = tr.model
    s0 = m.scores(enc.words, enc.suffixes, enc.cases, enc.prefixes, enc.shapes)[:, 0].copy()
    tr.calibrate(enc)
    s1 = m.scores(enc.words, enc.suffixes, enc.cases, enc.prefixes, enc.shapes)[:, 0]
    y = tr.positive_tag[enc.labels].astype(bool)

    def f1(pred):
        tp = int((pred & y).sum())
        return 2 * tp / (pred.sum() + y.sum())
    best = max(f1(s0 >= t) for t in np.unique(s0))
    assert f1(s1 > 0) == pytest.approx(best, abs=1e-12)


def test_decoders_follow_the_objective(sents):
    """Binary objectives threshold at 0; softmax decodes the best IOB2-consistent
    sequence (checked by brute force on short sentences); greedy takes argmax."""
    rng = np.random.default_rng(0)
    m = WindowModel(Config(hidden=(4,)), Vocab.build(sents))
    tags = m.vocab.tags
    allowed, start = iob2_constraints(tags)
    enc = m.encode(sents[:1])
    for n in (1, 2, 3):
        enc.offsets = np.array([0, n])
        enc.labels = np.zeros(n, np.int64)
        logp = np.log(rng.dirichlet(np.ones(len(tags)), n))
        got = objective("softmax").decode(m, logp.copy(), enc, "viterbi")
        best, best_s = None, -np.inf
        for seq in itertools.product(range(len(tags)), repeat=n):
            if not start[seq[0]] or any(not allowed[a, b] for a, b in zip(seq, seq[1:])):
                continue
            s = logp[np.arange(n), seq].sum()
            if s > best_s:
                best, best_s = seq, s
        assert tuple(got) == best
        np.testing.assert_array_equal(objective("crf").decode(m, logp.copy(), enc, "greedy"),
                                      logp.argmax(axis=1))
    s = np.array([[0.5], [-0.1], [0.0], [2.0]])
    np.testing.assert_array_equal(objective("logistic").decode(m, s, enc, "viterbi"),
                                  [1, 0, 0, 1])


def test_a_rank_without_examples_draws_what_one_process_draws():
    """Distributed max-margin: a rank with no window of the global batch skips the
    global batch's corrupt words, leaving its generator where one process's is after
    drawing them; the dropout masks of a rank's rows start at its first positive
    window (max-margin steps read positive windows only), at its first row otherwise."""
    sents = read_conll(corpus.path("train"))[:200]
    one, enc = _trainer("max-margin", sents)
    idx = np.arange(40)
    labels = enc.labels[idx]
    feats = tuple(enc.feature(f.field)[idx] for f in FEATURES) + (enc.words[idx],)
    rng_one = np.random.default_rng(9)
    one.objective.targets(one, feats, labels, None, rng_one, None)
    total = int(one.positive_tag[labels].sum())
    assert total > 0
    rng_rank = np.random.default_rng(9)
    one.objective.skip_draws(one, rng_rank, (40, 40, total, total))
    assert rng_rank.bit_generator.state == rng_one.bit_generator.state
    share = (40, 25, 3, total)
    assert objective("max-margin").first_row(share) == 3
    assert all(objective(n).first_row(share) == 25 for n in ("softmax", "crf", "logistic"))
    rng = np.random.default_rng(9)
    state = rng.bit_generator.state
    for n in ("softmax", "crf", "logistic"):     # nothing of their own to skip
        objective(n).skip_draws(one, rng, share)
        assert rng.bit_generator.state == state
