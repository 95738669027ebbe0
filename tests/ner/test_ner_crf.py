"""The tagger's CRF output layer (issue 14): whole-sentence batches, training on
the bundled corpus, decoding with the learned transitions under IOB2."""

import numpy as np
import pytest

from cygrad import kernels as K
from cygrad.ner import cli, corpus
from cygrad.ner.data import Vocab, encode, read_conll
from cygrad.ner.model import Config, WindowModel, crf_constraints, iob2_constraints
from cygrad.ner.train import TrainConfig, Trainer, score, train


@pytest.fixture(scope="module")
def toy():
    return read_conll(corpus.path("train")), read_conll(corpus.path("test"))


def test_batches_are_whole_sentences_covering_the_epoch(toy):
    sents = toy[0][:120]
    vocab = Vocab.build(sents, min_count=1)
    enc = encode(sents, vocab, 2)
    tr = Trainer(WindowModel(Config(loss="crf", hidden=(8,), dim=4), vocab),
                 TrainConfig(batch_size=50))
    seen = []
    batches = list(tr.batches(enc, np.random.default_rng(0)))
    starts = set(enc.offsets[:-1].tolist())
    for k, (idx, lengths, share) in enumerate(batches):
        assert share is None        # (one process)
        assert lengths.sum() == len(idx) and lengths.min() >= 1
        pos = 0
        for n in lengths:           # each sentence contiguous, from its first token
            assert idx[pos] in starts
            np.testing.assert_array_equal(idx[pos:pos + n], np.arange(idx[pos], idx[pos] + n))
            pos += n
        if k + 1 < len(batches):
            assert len(idx) >= 50 and len(idx) - lengths[-1] < 50    # closed at 50 tokens
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(enc)))


def test_crf_mask_is_iob2():
    tags = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    m = crf_constraints(tags)
    allowed, start = iob2_constraints(tags)
    np.testing.assert_array_equal(m[:5, :5], allowed)
    np.testing.assert_array_equal(m[5, :5], start)
    assert m[:5, 5].all() and not m[5, 5]


def test_crf_tagger_trains_and_decodes_valid_iob2(tmp_path, toy):
    tr, te = toy
    m, hist = train(tr, te, str(tmp_path / "m"), Config(loss="crf", hidden=(64,), dim=20),
                    TrainConfig(epochs=4, patience=9), log=lambda *a: None, progress=False)
    assert m.params["A"].shape == (len(m.vocab.tags) + 1,) * 2
    assert np.abs(m.params["A"]).max() > 0          # the transitions were trained
    sc = score(m, te)
    assert sc.f1 > 0.88, sc.summary()      # the demo corpus's ceiling is ~0.93
    enc = encode(te, m.vocab, m.config.k)
    ids = m.predict(enc)
    for sent in m.tags(ids, enc.offsets):           # the IOB2 constraints hold
        prev = "O"
        for t in sent:
            if t.startswith("I-"):
                assert prev[2:] == t[2:], sent
            prev = t
    # decoding is crf_viterbi over the scores with the learned transitions
    s = m.scores(enc.words, enc.suffixes, enc.cases).astype(np.float64)
    want = K.crf_viterbi(s.astype(m.params["A"].dtype), np.diff(enc.offsets), m.params["A"],
                         crf_constraints(m.vocab.tags))
    np.testing.assert_array_equal(ids, want)
    # saved and loaded with its transitions
    m2 = WindowModel.load(tmp_path / "m")
    np.testing.assert_array_equal(m2.params["A"], m.params["A"])
    np.testing.assert_array_equal(m2.predict(enc), ids)


def test_crf_step_needs_lengths(toy):
    sents = toy[0][:20]
    vocab = Vocab.build(sents, min_count=1)
    enc = encode(sents, vocab, 2)
    tr = Trainer(WindowModel(Config(loss="crf", hidden=(8,), dim=4), vocab), TrainConfig())
    with pytest.raises(ValueError, match="pass lengths="):
        tr.step(enc.words, enc.suffixes, enc.cases, enc.labels)
    with pytest.raises(ValueError, match="lengths sum to"):
        tr.step(enc.words, enc.suffixes, enc.cases, enc.labels, lengths=np.array([1, 2]))


def test_cli_trains_a_crf(tmp_path, capsys):
    out = str(tmp_path / "m")
    assert cli.main(["train", "--out", out, "--epochs", "2", "--no-progress", "--hidden", "32",
                     "--dim", "16", "--loss", "crf"]) == 0
    log = capsys.readouterr().out
    assert "unseen" in log and WindowModel.load(out).config.loss == "crf"
    assert cli.main(["evaluate", "--model", out, "--data", corpus.path("test")]) == 0
    rows = {ln.split()[0]: ln.split()[1:] for ln in capsys.readouterr().out.splitlines()
            if ln.strip()}
    assert float(rows["all"][2]) > 80 and "unseen" in rows


def test_crf_model_tags_empty_sentences(toy):
    from cygrad.ner.data import Sentence
    from cygrad.ner.train import tags_of
    sents = toy[0][:30]
    vocab = Vocab.build(sents, min_count=1)
    m = WindowModel(Config(loss="crf", hidden=(8,), dim=4), vocab)
    batch = [sents[0], Sentence([], []), sents[1]]
    tags = tags_of(m, m.encode(batch))
    assert [len(t) for t in tags] == [len(sents[0].tokens), 0, len(sents[1].tokens)]
    alone = tags_of(m, m.encode([sents[0], sents[1]]))
    assert tags[0] == alone[0] and tags[2] == alone[1]
    assert tags_of(m, m.encode([Sentence([], [])])) == [[]]
