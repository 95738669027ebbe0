"""The prefix and word-shape features (issue 14): hand-made examples, model
files with and without them, and the graph equal to direct inference."""

import json

import numpy as np
import pytest

import cygrad as cg
from cygrad.ner import corpus
from cygrad.ner.data import Sentence, Vocab, encode, prefix, read_conll, shape
from cygrad.ner.model import Config, ModelError, WindowModel


@pytest.mark.parametrize("token, want", [
    ("Washington", "Xxx"), ("EU", "XX"), ("U.S.", "X.X."), ("1996-08-22", "dd-dd-dd"),
    ("McDonald", "XxXxx"), ("a", "x"), ("--", "--"), ("Müller", "Xxx"), ("3.5", "d.d"),
    ("iPhone", "xXxx"), ("AAAA", "XX"), ("...", ".."), ("1,000,000", "d,dd,dd"), ("xxxx", "xx"),
])
def test_shape(token, want):
    assert shape(token) == want


def test_prefix_is_normalised():
    assert prefix("Washington") == "was" and prefix("1996") == "000" and prefix("EU") == "eu"


def test_encoded_ids_follow_the_vocabulary():
    sents = [Sentence(["Peter", "visited", "U.S.", "in", "1996"], ["B-PER", "O", "B-LOC", "O",
                                                                  "O"])] * 2
    v = Vocab.build(sents, min_count=1)
    enc = encode(sents, v, k=1)
    centre = enc.prefixes[:5, 1]
    assert [v.prefixes[i] for i in centre] == ["pet", "vis", "u.s", "in", "000"]
    assert [v.shapes[i] for i in enc.shapes[:5, 1]] == ["Xxx", "xx", "X.X.", "xx", "dd"]
    # the window's pads are the padding entries, unknown forms <unk>
    assert v.prefixes[enc.prefixes[0, 0]] == "<s>" and v.shapes[enc.shapes[4, 2]] == "</s>"
    unseen = encode([Sentence(["Zürich", "ab-12"], ["O", "O"])], v, k=0)
    assert v.prefixes[unseen.prefixes[0, 0]] == "<unk>"
    assert v.shapes[unseen.shapes[0, 0]] == "Xxx"           # a known shape
    assert v.shapes[unseen.shapes[1, 0]] == "<unk>"         # xx-dd is not


def _model(sents, **kw):
    v = Vocab.build(sents, min_count=1)
    cfg = dict(hidden=(12,), dim=6, suffix_dim=3, case_dim=2, prefix_dim=4, shape_dim=3,
               dtype="float64")
    cfg.update(kw)
    return WindowModel(Config(**cfg), v, seed=1)


def test_model_files_and_inference(tmp_path):
    train = read_conll(corpus.path("train"))[:80]
    test = read_conll(corpus.path("test"))[:20]
    m = _model(train)
    assert m.params["P"].shape == (len(m.vocab.prefixes), 4)
    assert m.params["Sh"].shape == (len(m.vocab.shapes), 3)
    assert m.params["W0"].shape[1] == 5 * (6 + 3 + 2 + 4 + 3)
    m.save(tmp_path / "m")
    m2 = WindowModel.load(tmp_path / "m")
    assert m2.vocab.prefixes == m.vocab.prefixes and m2.vocab.shapes == m.vocab.shapes
    enc = encode(test, m.vocab, m.config.k)
    np.testing.assert_array_equal(m.predict(enc), m2.predict(enc))
    # the graph (training's description) equals direct inference, for one and two layers
    for mm in (m, _model(train, hidden=(12, 7))):
        t = {k: cg.tensor(v) for k, v in mm.params.items()}
        g = mm.logits_graph(t, enc.words, enc.suffixes, enc.cases, prefixes=enc.prefixes,
                            shapes=enc.shapes).data
        np.testing.assert_allclose(g, mm.scores(enc.words, enc.suffixes, enc.cases,
                                                enc.prefixes, enc.shapes), rtol=1e-12)
    with pytest.raises(ValueError, match="reads the prefixes feature"):
        m.scores(enc.words, enc.suffixes, enc.cases)
    # a model.json whose vocabulary lacks the prefixes its configuration needs
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["vocab"]["prefixes"] = []
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="prefixes feature but the vocabulary lists no"):
        WindowModel.load(tmp_path / "m")
    meta["vocab"]["prefixes"] = ["a", "b", "c"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="vocab prefixes must start with"):
        WindowModel.load(tmp_path / "m")


def test_models_without_the_features_are_unchanged(tmp_path):
    """A model saved before the features existed (no prefixes/shapes in its
    vocabulary, no *_dim in its configuration) loads and tags as before."""
    train = read_conll(corpus.path("train"))[:60]
    m = _model(train, prefix_dim=0, shape_dim=0)
    m.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    for k in ("prefixes", "shapes"):
        del meta["vocab"][k]
    for k in ("prefix_dim", "shape_dim"):
        del meta["config"][k]
    meta_path.write_text(json.dumps(meta))
    old = WindowModel.load(tmp_path / "m")
    assert old.tables() == ["E", "S", "Cs"]
    enc_new = encode(train, m.vocab, 2)
    enc_old = encode(train, old.vocab, 2)
    np.testing.assert_array_equal(enc_new.words, enc_old.words)
    np.testing.assert_array_equal(m.predict(enc_new), old.predict(enc_old))


def test_shape_fast_path_equals_the_character_classes():
    """ASCII tokens take a translate + regex path; it must equal the per-character
    definition (classes, runs cut to two) that other tokens use."""
    from cygrad.ner.data import shape_by_classes as by_classes
    rng = np.random.default_rng(0)
    alphabet = list("aZ9.-_xX()'/&")
    for _ in range(3000):
        t = "".join(rng.choice(alphabet, int(rng.integers(1, 10))))
        assert shape(t) == by_classes(t), t
