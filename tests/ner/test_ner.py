"""The NER window model: reader, windows, evaluator, model files, training,
the command line, and a short run on CoNLL-2003."""

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import cygrad as cg
from cygrad.ner import cli, corpus
from cygrad.ner.data import (
    CASES,
    DataError,
    Sentence,
    Vocab,
    casing,
    encode,
    read_conll,
    to_iob2,
    tokenize,
)
from cygrad.ner.evaluate import chunks, evaluate
from cygrad.ner.model import Config, ModelError, WindowModel
from cygrad.ner.train import TrainConfig, checkpoint_path, score, train

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONLL = pathlib.Path(os.environ.get("CYGRAD_CONLL_DIR", ROOT.parent / "shared" / "data"
                                    / "conll2003"))


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return str(p)


# ---------------------------------------------------------------- reader

def test_reader_skips_docstart_and_empty_sentences(tmp_path):
    path = write(tmp_path, "a.txt", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O"
                 "\n\n\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\n")
    sents = read_conll(path)
    assert [s.tokens for s in sents] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert [s.tags for s in sents] == [["B-ORG", "O"], ["B-PER", "I-PER"]]


def test_reader_unicode(tmp_path):
    path = write(tmp_path, "u.txt", "Zürich B-LOC\nş O\n東京 B-LOC\n")
    (s,) = read_conll(path)
    assert s.tokens == ["Zürich", "ş", "東京"] and s.tags == ["B-LOC", "O", "B-LOC"]


@pytest.mark.parametrize("text,line,what", [
    ("EU B-ORG\nrejects\n", 2, "expected a token and a tag"),
    ("EU B-ORG\n\nrejects X-ORG\n", 3, "tag 'X-ORG' is not O or B-/I-/E-/S-"),
    ("EU B-\n", 1, "tag 'B-' is not"),
])
def test_reader_malformed_lines(tmp_path, text, line, what):
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(DataError, match=rf"bad.txt:{line}: {what}"):
        read_conll(path)


def test_reader_binary_and_undecodable(tmp_path):
    with pytest.raises(DataError, match="not a text file"):
        read_conll(write(tmp_path, "b.bin", b"\x00\x01\x02PK", mode="wb"))
    with pytest.raises(DataError, match=r"u.txt:2: not valid UTF-8"):
        read_conll(write(tmp_path, "u.txt", b"EU B-ORG\nrej\xff O\n", mode="wb"))


def test_tag_schemes_convert_to_iob2():
    # IOB1: I- opens an entity unless it continues one of its type; B- only splits
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]
    # IOBES
    assert to_iob2(["S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "O"]) == \
        ["B-PER", "B-LOC", "I-LOC", "I-LOC", "B-LOC", "O"]
    # IOB2 unchanged
    tags = ["B-PER", "I-PER", "B-PER", "O", "B-MISC"]
    assert to_iob2(tags) == tags


def test_iob1_file(tmp_path):
    path = write(tmp_path, "iob1.txt", "U.N. I-ORG\nofficial O\nEkeus I-PER\nheads O\n"
                 "for O\nBaghdad I-LOC\n. O\n")
    assert read_conll(path)[0].tags == ["B-ORG", "O", "B-PER", "O", "O", "B-LOC", "O"]


# ---------------------------------------------------------------- features and windows

def test_casing_feature():
    assert [CASES[casing(w)] for w in ["word", "EU", "Peter", "iPhone", "1996", ",", "McDonald"]] \
        == ["lower", "upper", "title", "mixed", "digit", "other", "mixed"]


def test_windows_at_sentence_edges():
    sents = [Sentence(["a", "b", "c"], ["O", "B-PER", "O"]), Sentence(["d"], ["B-LOC"])]
    vocab = Vocab.build(sents, min_count=1)
    enc = encode(sents, vocab, k=2)
    w = vocab.words
    as_words = [[w[i] for i in row] for row in enc.words]
    assert as_words == [["<s>", "<s>", "a", "b", "c"],
                        ["<s>", "a", "b", "c", "</s>"],
                        ["a", "b", "c", "</s>", "</s>"],
                        ["<s>", "<s>", "d", "</s>", "</s>"]]   # no leak across sentences
    assert [vocab.tags[i] for i in enc.labels] == ["O", "B-PER", "O", "B-LOC"]
    assert enc.cases[0].tolist() == [0, 0, 1, 1, 1]
    assert enc.offsets.tolist() == [0, 3, 4]
    assert encode(sents, vocab, k=0).words.shape == (4, 1)


def test_unknown_words_and_digits():
    sents = [Sentence(["Apple", "apple", "1996", "x"], ["B-ORG", "O", "O", "O"])]
    vocab = Vocab.build(sents, min_count=2)
    assert "apple" in vocab.words and "x" not in vocab.words
    enc = encode([Sentence(["APPLE", "2004", "zzz"], ["O", "O", "O"])], vocab, k=0)
    assert [vocab.words[i] for i in enc.words[:, 0]] == ["apple", "<unk>", "<unk>"]
    vocab1 = Vocab.build(sents, min_count=1)
    enc = encode([Sentence(["2004"], ["O"])], vocab1, k=0)
    assert vocab1.words[enc.words[0, 0]] == "0000"     # digits normalised


def test_tokenize_raw_text():
    assert tokenize("Paris Hilton wowed in a sequin gown. Then she left!\n\nU.S. officials "
                    "didn't.") == [
        ["Paris", "Hilton", "wowed", "in", "a", "sequin", "gown", "."],
        ["Then", "she", "left", "!"], ["U.S.", "officials", "did", "n't", "."]]


# ---------------------------------------------------------------- evaluator

def test_chunks_follow_conlleval():
    assert chunks(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    # I- after O opens an entity; a type change opens another
    assert chunks(["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"]) == \
        [("PER", 1, 3), ("LOC", 3, 4), ("LOC", 4, 6)]
    assert chunks(["S-PER", "B-ORG", "E-ORG", "I-ORG"]) == \
        [("PER", 0, 1), ("ORG", 1, 3), ("ORG", 3, 4)]


def test_evaluator_hand_counts():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-MISC", "O"]]
    sc = evaluate(gold, pred)
    # gold 4 entities, found 4, correct 2 (PER, ORG)
    assert (sc.gold, sc.found, sc.correct) == (4, 4, 2)
    assert sc.precision == 0.5 and sc.recall == 0.5 and sc.f1 == 0.5
    assert sc.accuracy == 6 / 8
    assert sc.per_type["PER"][:3] == (1.0, 1.0, 1.0)
    assert sc.per_type["LOC"][:3] == (0.0, 0.0, 0.0)
    assert sc.per_type["ORG"][:2] == (0.5, 1.0)
    with pytest.raises(ValueError, match="3 gold tags and 2 predicted"):
        evaluate([["O", "O", "O"]], [["O", "O"]])


# ---------------------------------------------------------------- model files

@pytest.fixture(scope="module")
def toy():
    return read_conll(corpus.path("train")), read_conll(corpus.path("test"))


def _small_model(sents, **kw):
    vocab = Vocab.build(sents, min_count=1)
    return WindowModel(Config(**{"hidden": (16,), "dim": 8, "suffix_dim": 4, "case_dim": 2,
                                 **kw}), vocab, seed=3)


def test_model_round_trip(tmp_path, toy):
    m = _small_model(toy[0][:50])
    m.save(tmp_path / "m")
    m2 = WindowModel.load(tmp_path / "m")
    assert m2.vocab.words == m.vocab.words and m2.config == m.config
    for k in m.params:
        np.testing.assert_array_equal(m.params[k], m2.params[k])
    enc = encode(toy[1][:20], m.vocab, m.config.k)
    np.testing.assert_array_equal(m.predict(enc), m2.predict(enc))
    assert not list(pathlib.Path(tmp_path / "m").glob(".*"))   # no temporary files left


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_model_files_follow_the_umask(tmp_path, toy, umask):
    m = _small_model(toy[0][:20])
    old = os.umask(umask)
    try:
        m.save(tmp_path / "m")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "m").iterdir() if p.is_file()]
    assert files
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, (p.name, oct(p.stat().st_mode))


def test_tag_into_a_closed_pipe_is_quiet(tmp_path, toy):
    m = _small_model(toy[0][:20])
    m.save(tmp_path / "m")
    (tmp_path / "in.txt").write_text("Police in Jordan arrested 12 people .\n" * 20000)
    p = subprocess.Popen([sys.executable, "-m", "cygrad.ner.cli", "tag", "--model",
                          str(tmp_path / "m"), "--input", str(tmp_path / "in.txt")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()          # `cygrad tag ... | head -1`
    p.stdout.close()
    err = p.stderr.read()
    p.wait(timeout=120)
    assert b"Traceback" not in err and b"error" not in err, err
    assert p.returncode in (141, -13), p.returncode    # as a shell reports SIGPIPE


def test_model_saved_as_one_unit_and_older_layout_still_loads(tmp_path, toy):
    m = _small_model(toy[0][:50])
    d = tmp_path / "m"
    m.save(d)
    m.params["c"] = m.params["c"] + 1.0
    m.save(d)                       # a second save leaves one arrays file, the new one
    files = sorted(p.name for p in d.iterdir())
    meta = json.loads((d / "model.json").read_text())
    assert files == ["model.json", meta["params_file"]]
    np.testing.assert_array_equal(WindowModel.load(d).params["c"], m.params["c"])
    # the layout before: a fixed params.npz, model.json without params_file
    (d / meta["params_file"]).rename(d / "params.npz")
    del meta["params_file"]
    (d / "model.json").write_text(json.dumps(meta))
    np.testing.assert_array_equal(WindowModel.load(d).params["c"], m.params["c"])


def test_corrupted_or_foreign_model_rejected(tmp_path, toy):
    m = _small_model(toy[0][:50])
    d = tmp_path / "m"
    m.save(d)
    npz = d / json.loads((d / "model.json").read_text())["params_file"]
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        WindowModel.load(d)
    m.save(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="corrupt model metadata"):
        WindowModel.load(d)
    m.save(d)
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps(dict(meta, format="something-else")))
    with pytest.raises(ModelError, match="not a cygrad NER model"):
        WindowModel.load(d)
    (d / "model.json").write_text(json.dumps(dict(meta, version=99)))
    with pytest.raises(ModelError, match="version 99"):
        WindowModel.load(d)
    with pytest.raises(ModelError, match="no such model directory"):
        WindowModel.load(tmp_path / "nothing")
    m.save(d)
    meta = json.loads((d / "model.json").read_text())
    meta["config"]["dim"] = 9        # arrays no longer fit the configuration
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="model array E has shape"):
        WindowModel.load(d)


def _rewrite_params(d, params=None, data=None):
    """Replace the arrays file of model directory d (by arrays or raw bytes), with
    model.json's digest updated to match: only the content is wrong."""
    import hashlib
    meta = json.loads((d / "model.json").read_text())
    npz = d / meta["params_file"]
    if data is None:
        buf = io.BytesIO()
        np.savez(buf, **params)
        data = buf.getvalue()
    npz.write_bytes(data)
    meta["params_sha256"] = hashlib.sha256(data).hexdigest()
    (d / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,what", [
    ("k_float", "k must be an integer, got 2.0"),
    ("hidden_str", "hidden must be a list of integers"),
    ("no_unk", "vocab words must start with"),
    ("no_tags", "vocab has no tags"),
    ("truncated", "cannot read the model"),
    ("empty", "cannot read the model"),
    ("nan", "array W0 holds NaN or infinity"),
])
def test_damaged_model_files_end_in_an_error_line(tmp_path, toy, capsys, damage, what):
    """A model file whose digest matches but whose content is wrong (issue #13) is
    refused with a ModelError, and the CLI prints one error line (no traceback)."""
    m = _small_model(toy[0][:50])
    d = tmp_path / "m"
    m.save(d)
    meta = json.loads((d / "model.json").read_text())
    if damage == "k_float":
        meta["config"]["k"] = 2.0
    elif damage == "hidden_str":
        meta["config"]["hidden"] = "300"
    elif damage == "no_unk":
        meta["vocab"]["words"] = [w for w in meta["vocab"]["words"] if w != "<unk>"]
    elif damage == "no_tags":
        meta["vocab"]["tags"] = []
    if damage in ("k_float", "hidden_str", "no_unk", "no_tags"):
        (d / "model.json").write_text(json.dumps(meta))
    elif damage == "nan":
        p = dict(m.params)
        p["W0"] = p["W0"].copy()
        p["W0"][0, 0] = np.nan
        _rewrite_params(d, params=p)
    else:
        data = (d / meta["params_file"]).read_bytes()
        _rewrite_params(d, data=data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(ModelError, match=what):
        WindowModel.load(d)
    sys_stdin = sys.stdin
    try:
        sys.stdin = io.StringIO("EU rejects German call .\n")
        assert cli.main(["tag", "--model", str(d)]) == 2
    finally:
        sys.stdin = sys_stdin
    err = capsys.readouterr().err
    assert "cygrad tag: error:" in err and "Traceback" not in err


def test_sparse_and_dense_gradients_add_in_either_order():
    """ndarray + SparseRows and SparseRows + ndarray give the same dense sum (a table
    that receives a sparse and a dense gradient: issue #13)."""
    from cygrad.graph import SparseRows
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((6, 3))
    sp = SparseRows(np.array([1, 4, 1]), rng.standard_normal((3, 3)), (6, 3))
    want = dense.copy()
    np.add.at(want, sp.indices, sp.rows)
    np.testing.assert_allclose(dense + sp, want)
    np.testing.assert_allclose(sp + dense, want)
    E = cg.tensor(rng.standard_normal((6, 3)), requires_grad=True)
    win = np.array([[1, 4], [1, 1]])
    for order in (0, 1):
        E.grad = None
        a = cg.embedding_windows(E, win, sparse=True).sum()
        b = cg.embedding_windows(E, win, sparse=False).sum()
        ((a + b) if order else (b + a)).backward()
        g = E.grad if isinstance(E.grad, np.ndarray) else E.grad.to_dense()
        want = np.zeros((6, 3))
        np.add.at(want, win.reshape(-1), 2.0)
        np.testing.assert_allclose(g, want)


def test_graph_forward_matches_direct_inference(toy):
    m = _small_model(toy[0][:50], activation="relu")
    enc = encode(toy[0][:20], m.vocab, m.config.k)
    t = {k: cg.tensor(v, requires_grad=True) for k, v in m.params.items()}
    g = m.logits_graph(t, enc.words, enc.suffixes, enc.cases).data
    np.testing.assert_allclose(g, m.scores(enc.words, enc.suffixes, enc.cases), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("kw", [dict(), dict(activation="relu", k=1),
                                dict(prefix_dim=4, shape_dim=3, loss="crf"),
                                dict(ngram_dim=5, ngram_buckets=97, prefix_dim=3),
                                dict(hidden=(12, 8)), dict(average=True)],
                         ids=["default", "relu,k=1", "crf,prefix,shape", "ngram", "deep",
                              "average"])
def test_tagger_scores_from_type_projections(toy, kw):
    """predict's pass over the distinct tokens' slot projections gives the graph's
    logits, and the tags of the window-by-window pass (deep and averaged models:
    no projections, the window-by-window pass itself)."""
    m = _small_model(toy[0][:50], **kw)
    sents = toy[1][:40]
    enc = m.encode(sents, with_labels=False)
    assert enc.types.shape == enc.words.shape and enc.type_ids.shape[1] == 5
    # every window position's type carries that position's feature ids
    for col, name in enumerate(["words", "suffixes", "cases", "prefixes", "shapes"]):
        np.testing.assert_array_equal(enc.type_ids[enc.types, col], enc.feature(name))
    typed = m._typed_scores(enc)
    if kw.get("average") or len(kw.get("hidden", (16,))) > 1:
        assert typed is None
    else:
        t = {k: cg.tensor(v) for k, v in m.params.items()}
        bags = (enc.ngrams, enc.ngram_ptr, enc.ngram_items) if m.config.ngram_dim else None
        g = m.logits_graph(t, enc.words, enc.suffixes, enc.cases, prefixes=enc.prefixes,
                           shapes=enc.shapes, ngrams=bags).data
        np.testing.assert_allclose(typed, g, rtol=1e-5, atol=1e-5)
        # a corpus too large for one set of projections goes by parts: the same scores
        m.PROJECTION_BUDGET = 16 * m.config.width * m.config.hidden[0] * typed.itemsize
        try:
            parts = m._typed_scores(enc)
        finally:
            del m.PROJECTION_BUDGET
        np.testing.assert_allclose(parts, typed, rtol=1e-6, atol=1e-6)
    got = m.predict(enc)
    enc.types = None
    np.testing.assert_array_equal(got, m.predict(enc))


def test_window_model_gradcheck(toy):
    vocab = Vocab.build(toy[0][:30], min_count=1)
    m = WindowModel(Config(hidden=(5, 4), dim=3, suffix_dim=2, case_dim=2, k=1,
                           dtype="float64"), vocab, seed=1)
    enc = encode(toy[0][:3], vocab, k=1)
    names = list(m.params)
    t = [cg.tensor(m.params[k], requires_grad=True, name=k) for k in names]

    def loss(*ts):
        logits = m.logits_graph(dict(zip(names, ts)), enc.words, enc.suffixes, enc.cases)
        return cg.softmax_cross_entropy(logits, enc.labels)

    assert cg.gradcheck(loss, t)


# ---------------------------------------------------------------- training

_MODELS = [dict(), dict(activation="relu"), dict(activation="sigmoid"), dict(activation="gelu"),
           dict(hidden=(24, 16)), dict(hidden=(16, 12, 8), activation="leaky_relu"),
           dict(average=True), dict(loss="logistic"), dict(loss="max-margin"),
           dict(suffix_dim=0, case_dim=0), dict(k=1, suffix_dim=0),
           dict(prefix_dim=4, shape_dim=3), dict(prefix_dim=3, loss="max-margin")]


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
@pytest.mark.parametrize("freeze", [False, True])
@pytest.mark.parametrize("model", _MODELS, ids=lambda m: ",".join(
    f"{k}={v}" for k, v in m.items()) or "default")
@pytest.mark.parametrize("reg", [{}, dict(dropout=0.3, hidden_dropout=0.4, word_dropout=0.5)],
                         ids=["plain", "dropout"])
def test_compiled_step_matches_the_graph(toy, optimizer, freeze, model, reg):
    """Every model the command line trains (1-3 hidden layers, any activation, the
    averaged window, logistic, max-margin with corrupt windows, without the feature
    tables, frozen vectors, SGD and Adagrad) trains compiled, and the compiled step
    gives the parameters, optimiser state and losses of the eager graph."""
    import warnings

    from cygrad.ner.train import Trainer
    from cygrad.ner.vectors import Vectors
    vec = None
    cfg = dict(hidden=(40,), dim=8, suffix_dim=4, case_dim=3, dtype="float64")
    if freeze:      # vectors for every other word of the data (the rest train)
        words = sorted({t.lower() for s in toy[0][:200] for t in s.tokens})[::2]
        vec = Vectors("toy", np.random.default_rng(5).normal(size=(len(words), 8))
                      .astype(np.float32), words)
        cfg.update(vectors="toy", vectors_sha256=vec.sha256)
    vocab = Vocab.build(toy[0][:200], min_count=1, vectors=vec)
    cfg.update(model)
    enc = encode(toy[0][:200], vocab, Config(**cfg).k, vectors=vec)
    runs = {}
    for compiled in (True, False):
        m = WindowModel(Config(**cfg), vocab, seed=3, vectors=vec)
        if vec is not None:
            m.init_from_vectors()
        E0 = m.params["E"].copy()
        tr = Trainer(m, TrainConfig(optimizer=optimizer, lr=0.1, compile=compiled,
                                    freeze_vectors=freeze, **reg))
        tr.set_word_counts(enc)
        rng = np.random.default_rng(0)
        losses = []
        with warnings.catch_warnings():
            warnings.simplefilter("error", cg.CompileWarning)   # no eager fallback
            for lo in range(0, 400, 37):       # repeated words within and across batches
                idx = np.arange(lo, min(lo + 37, len(enc)))
                losses.append(tr.step(enc.words[idx], enc.suffixes[idx], enc.cases[idx],
                                      enc.labels[idx], rng, enc.prefixes[idx],
                                      enc.shapes[idx]))
        if compiled:
            assert tr._step.plans >= 1 and tr._step.fallbacks() == []
        runs[compiled] = (m.params, losses, getattr(tr.opt, "state", []))
    (pf, lf, sf), (pg, lg, sg) = runs[True], runs[False]
    np.testing.assert_allclose(lf, lg, rtol=1e-10, atol=1e-14)
    for k in pg:
        np.testing.assert_allclose(pf[k], pg[k], rtol=1e-9, atol=1e-11, err_msg=k)
    for a, b in zip(sf, sg):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    if freeze:      # exactly the rows that came from the vectors are unchanged
        has = WindowModel(Config(**cfg), vocab, vectors=vec).vector_rows >= 0
        assert has.sum() > 10 and (~has).sum() > 10
        np.testing.assert_array_equal(pf["E"][has], E0[has])
        np.testing.assert_array_equal(pf["E"][has], vec.table[m.vector_rows[has]])
        assert (pf["E"][~has] != E0[~has]).any(axis=1).sum() > 5


@pytest.mark.parametrize("reg", [{}, dict(dropout=0.5, hidden_dropout=0.2, word_dropout=1.0),
                                 dict(average_params=True), dict(crf=True, dropout=0.5),
                                 dict(optimizer="sgd", lr=0.1),
                                 dict(crf=True, optimizer="sgd", lr=0.1, dropout=0.3)],
                         ids=["plain", "dropout", "average", "crf", "sgd", "crf-sgd"])
def test_resume_equals_uninterrupted(tmp_path, toy, reg):
    tr, dv = toy[0][:300], toy[1][:100]
    reg = dict(reg)
    crf = reg.pop("crf", False)
    mcfg = Config(hidden=(32,), dim=16, loss="crf" if crf else "softmax",
                  prefix_dim=4 if crf else 0, shape_dim=3 if crf else 0)
    kw = dict(log=lambda *a: None, progress=False)
    with cg.threads(2):
        a, _ = train(tr, dv, str(tmp_path / "a"), mcfg,
                     TrainConfig(epochs=3, patience=9, **reg), **kw)
        train(tr, dv, str(tmp_path / "b"), mcfg, TrainConfig(epochs=1, patience=9, **reg), **kw)
        b, hist = train(tr, dv, str(tmp_path / "b"), mcfg,
                        TrainConfig(epochs=3, patience=9, **reg), resume=True, **kw)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    ckpt_a = WindowModel.load(os.path.join(checkpoint_path(tmp_path / "a" / "checkpoint"), "model"))
    ckpt_b = WindowModel.load(os.path.join(checkpoint_path(tmp_path / "b" / "checkpoint"), "model"))
    for k in ckpt_a.params:
        np.testing.assert_array_equal(ckpt_a.params[k], ckpt_b.params[k])
        np.testing.assert_array_equal(a.params[k], b.params[k])     # the saved best models
    assert (tmp_path / "a" / "training.png").stat().st_size > 1000


def test_average_params_saves_the_mean_of_the_epochs(tmp_path, toy):
    """--average-params: the saved model is the mean of the parameters at the ends
    of epochs 1..3, which separate runs of 1, 2 and 3 epochs give (averaging does
    not change the training itself)."""
    tr = toy[0][:200]
    mcfg = Config(hidden=(16,), dim=8)
    kw = dict(log=lambda *a: None, progress=False)
    ends = []
    for n in (1, 2, 3):
        train(tr, [], str(tmp_path / f"e{n}"), mcfg, TrainConfig(epochs=n), **kw)
        ends.append(WindowModel.load(os.path.join(
            checkpoint_path(tmp_path / f"e{n}" / "checkpoint"), "model")).params)
    avg, _ = train(tr, [], str(tmp_path / "avg"), mcfg,
                   TrainConfig(epochs=3, average_params=True), **kw)
    raw = WindowModel.load(os.path.join(checkpoint_path(tmp_path / "avg" / "checkpoint"),
                                        "model")).params
    for k in avg.params:
        want = np.mean([e[k].astype(np.float64) for e in ends], axis=0)
        np.testing.assert_allclose(avg.params[k], want, rtol=1e-5, atol=1e-7, err_msg=k)
        np.testing.assert_array_equal(raw[k], ends[2][k])          # training went on raw


def test_window_beats_centre_word_baseline(tmp_path, toy):
    tr, te = toy
    kw = dict(log=lambda *a: None, progress=False)
    f1 = {}
    for k in (0, 2):
        m, _ = train(tr, te, str(tmp_path / f"k{k}"), Config(k=k, hidden=(64,), dim=20),
                     TrainConfig(epochs=4, patience=9), **kw)
        f1[k] = score(m, te).f1
    # the corpus's ceiling is ~0.93 (some windows do not decide between a person and
    # a company); the centre word alone cannot resolve the ambiguous names
    assert f1[2] > 0.88, f1
    assert f1[2] - f1[0] > 0.15, f1


def test_cli_train_evaluate_tag(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "model")
    assert cli.main(["train", "--out", out, "--epochs", "3", "--no-progress", "--hidden",
                     "64"]) == 0
    text = capsys.readouterr().out
    assert "held-out scores of the best model" in text and "F1" in text
    pred = str(tmp_path / "pred.txt")
    assert cli.main(["evaluate", "--model", out, "--data", corpus.path("test"),
                     "--output", pred]) == 0
    lines = pathlib.Path(pred).read_text().split("\n")
    first = lines[0].split()
    assert len(first) == 3
    assert sum(1 for ln in lines if not ln) >= 600
    monkeypatch.setattr(sys, "stdin", io.StringIO("Shares of Apple rose 3 percent .\n"))
    assert cli.main(["tag", "--model", out, "--format", "inline"]) == 0
    tagged = capsys.readouterr().out
    assert "[ORG Apple]" in tagged
    monkeypatch.setattr(sys, "stdin", io.StringIO("Heavy\nrain\nfell\nin\nLincoln\n.\n"))
    assert cli.main(["tag", "--model", out, "--tokenized"]) == 0
    assert "Lincoln\tB-LOC" in capsys.readouterr().out
    assert cli.main(["evaluate", "--model", str(tmp_path / "none"), "--data",
                     corpus.path("test")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    # a model trained on the bundled corpus is scored on its held-out part by default,
    # or with --data demo; the same table as with the file's path
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", out, "--data", corpus.path("test")]) == 0
    by_path = capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--data", "demo"]):
        assert cli.main(["evaluate", "--model", out] + extra) == 0
        assert capsys.readouterr().out == by_path
    other = str(tmp_path / "other")     # trained on a file: --data is needed
    assert cli.main(["train", "--out", other, "--train", corpus.path("test"), "--epochs", "1",
                     "--no-progress", "--hidden", "8"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", other]) == 2
    assert "--data FILE is needed" in capsys.readouterr().err


def test_python_dash_m_help():
    r = subprocess.run([sys.executable, "-m", "cygrad", "train", "--help"],
                       capture_output=True, text=True, check=True)
    assert "--train FILE" in r.stdout and "--resume" in r.stdout


def test_bundled_corpus_is_what_the_generator_writes(tmp_path):
    bundled = {split: pathlib.Path(corpus.path(split)).read_bytes() for split in corpus.FILES}
    r = subprocess.run([sys.executable, "-m", "cygrad.ner.corpus", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for split, text in bundled.items():
        assert (tmp_path / corpus.FILES[split]).read_bytes() == text
    # --help helps, and writes nothing (the installed package's files least of all)
    r = subprocess.run([sys.executable, "-m", "cygrad.ner.corpus", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--out DIR" in r.stdout
    r = subprocess.run([sys.executable, "-m", "cygrad.ner.corpus"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "--out" in r.stderr
    for split, text in bundled.items():
        assert pathlib.Path(corpus.path(split)).read_bytes() == text


def test_bundled_corpus_names_are_ambiguous(toy):
    tags = {}
    for s in toy[0]:
        for tok, tag in zip(s.tokens, s.tags):
            if tag != "O":
                tags.setdefault(tok, set()).add(tag[2:])
    assert {"PER", "LOC"} <= tags["Jordan"] and {"PER", "LOC"} <= tags["Victoria"]


# ---------------------------------------------------------------- CoNLL-2003

def test_conll2003_short_training_beats_most_frequent_tag(tmp_path):
    if not (CONLL / "train.txt").is_file():
        if os.environ.get("CYGRAD_REQUIRE_DATA") == "1":
            pytest.fail(f"CoNLL-2003 data not found in {CONLL} and CYGRAD_REQUIRE_DATA=1")
        pytest.skip(f"CoNLL-2003 data not found in {CONLL} (set CYGRAD_CONLL_DIR)")
    tr = read_conll(CONLL / "train.txt")[:4000]
    dv = read_conll(CONLL / "valid.txt")[:1000]
    m, hist = train(tr, dv, str(tmp_path / "m"), Config(), TrainConfig(epochs=2, patience=9),
                    log=lambda *a: None, progress=False)
    f1 = score(m, dv).f1
    assert f1 > 0.75, f"dev F1 {f1:.3f} is not clearly above the 0.654 baseline"


def test_pretrained_vectors_frozen_and_fine_tuned(tmp_path, capsys):
    vec = tmp_path / "vectors.txt"
    words = {"jordan": 0.5, "police": -0.25, "shares": 1.0}
    vec.write_text("3 8\n" + "".join(f"{w} " + " ".join([str(v)] * 8) + "\n"
                                      for w, v in words.items()))
    for frozen in (True, False):
        out = str(tmp_path / f"m{frozen}")
        args = ["train", "--out", out, "--epochs", "1", "--no-progress", "--hidden", "16",
                "--dim", "8", "--vectors", str(vec)] + (["--freeze-vectors"] if frozen else [])
        assert cli.main(args) == 0
        assert "pretrained vectors for 3 of" in capsys.readouterr().out
        m = WindowModel.load(out)
        for w, v in words.items():
            row = m.params["E"][m.vocab.word_index[w]]
            if frozen:
                np.testing.assert_array_equal(row, np.full(8, v, np.float32))
            else:
                assert not np.allclose(row, v)      # fine-tuned away from the start
    bad = tmp_path / "bad.txt"
    bad.write_text("jordan 1 2\n")
    assert cli.main(["train", "--out", str(tmp_path / "x"), "--vectors", str(bad),
                     "--no-progress"]) == 2
    assert "have 2 values a word; the model's word embeddings have 50" in \
        capsys.readouterr().err


def test_training_stops_once_dev_f1_is_100(tmp_path):
    """Nothing can improve on a perfect dev F1: no patience epochs after it."""
    s = Sentence(["Police", "in", "Lagos", "arrested", "Maria", "Okafor", "."],
                 ["O", "O", "B-LOC", "O", "B-PER", "I-PER", "O"])
    logs = []
    _, history = train([s] * 40, [s] * 5, str(tmp_path / "m"), Config(hidden=(16,), dim=8),
                       TrainConfig(epochs=12, patience=4, lr=0.1), log=logs.append,
                       progress=False)
    f1 = [h["dev_f1"] for h in history]
    assert f1[-1] == 1.0 and all(x < 1.0 for x in f1[:-1]), f1
    assert len(f1) < 12 and any("dev F1 is 100.00" in m for m in logs), logs


@pytest.mark.parametrize("loss,floor", [("logistic", 0.9), ("max-margin", 0.5)])
def test_binary_location_task(tmp_path, toy, loss, floor):
    """The lecture's binary task: is the centre word a location?"""
    tr, te = toy
    m, _ = train(tr[:1500], te, str(tmp_path / loss), Config(hidden=(32,), dim=16, loss=loss),
                 TrainConfig(epochs=3, patience=9), log=lambda *a: None, progress=False)
    assert m.params["U"].shape == (1, 32) and m.config.loss == loss
    sc = score(m, te)
    assert set(sc.per_type) == {"LOC"} and sc.f1 > floor, sc.summary()
    m2 = WindowModel.load(tmp_path / loss)
    enc = encode(te, m.vocab, m.config.k)
    np.testing.assert_array_equal(m.predict(enc), m2.predict(enc))


def test_max_margin_objective_gradcheck(toy):
    """s(true window) and s(corrupt window) share every parameter: the graph sums
    both paths' gradients, and central differences agree."""
    vocab = Vocab.build(toy[0][:30], min_count=1)
    m = WindowModel(Config(hidden=(4,), dim=3, suffix_dim=2, case_dim=2, k=1, loss="max-margin",
                           dtype="float64"), vocab, seed=2)
    enc = encode(toy[0][:2], vocab, k=1)
    corrupt = enc.words.copy()
    corrupt[:, 1] = (corrupt[:, 1] + 5) % len(vocab.words)
    names = list(m.params)
    t = [cg.tensor(m.params[k], requires_grad=True, name=k) for k in names]

    def objective(*ts):
        d = dict(zip(names, ts))
        s = m.logits_graph(d, enc.words, enc.suffixes, enc.cases).reshape(len(enc))
        sc = m.logits_graph(d, corrupt, enc.suffixes, enc.cases).reshape(len(enc))
        return cg.max_margin(s, sc, margin=10.0)     # wide margin: every hinge active

    assert cg.gradcheck(objective, t)


def test_cli_refuses_bad_threads_and_empty_data_with_an_error_line(tmp_path, capsys):
    for bad in ("0", "-2", "100000"):
        assert cli.main(["train", "--out", str(tmp_path / "x"), "--threads", bad]) == 2
        err = capsys.readouterr().err
        assert "cygrad train: error: --threads: number of threads must be an int in [1, 256]" \
            in err, err
    for text in ("", "-DOCSTART- -X- -X- O\n\n"):
        empty = tmp_path / "empty.txt"
        empty.write_text(text)
        assert cli.main(["train", "--train", str(empty), "--out", str(tmp_path / "e"),
                         "--no-progress"]) == 2
        assert "error: no training sentences" in capsys.readouterr().err
        assert not (tmp_path / "e" / "model.json").exists()


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option, default in [("--batch-size", "256"), ("--loss", "crf"), ("--dropout", "0.5"),
                            ("--optimizer", "adagrad"),
                            ("--activation", "tanh"), ("--hidden", "300"), ("--dim", "50"),
                            ("--patience", "4"), ("--window", "2")]:
        i = out.index(option + " ", out.index("options:"))
        assert f"(default: {default})" in out[i:i + 700], (option, out[i:i + 700])


def test_resume_takes_settings_not_given_again_from_the_checkpoint(tmp_path, capsys):
    """A checkpoint written with other settings (here: those of an older release,
    whose state.json lacks today's options) resumes under `--resume` alone, with its
    own settings: the same final model as an uninterrupted run with them; a setting
    given again that differs is refused."""
    old = ["--batch-size", "64", "--lr", "0.03", "--dropout", "0", "--word-dropout", "0",
           "--no-average-params"]
    common = ["--no-progress", "--hidden", "16", "--dim", "8", "--loss", "softmax",
              "--prefix-dim", "0", "--shape-dim", "0"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert cli.main(["train", "--out", a, "--epochs", "2"] + common + old) == 0
    assert cli.main(["train", "--out", b, "--epochs", "1"] + common + old) == 0
    state = pathlib.Path(checkpoint_path(tmp_path / "b" / "checkpoint")) / "state.json"
    meta = json.loads(state.read_text())
    for key in ("dropout", "hidden_dropout", "word_dropout", "average_params"):
        del meta["train"][key]          # as an older release wrote it
    state.write_text(json.dumps(meta))
    assert cli.main(["train", "--out", b, "--epochs", "2", "--resume"] + common) == 0
    pa = WindowModel.load(os.path.join(checkpoint_path(tmp_path / "a" / "checkpoint"),
                                       "model")).params
    pb = WindowModel.load(os.path.join(checkpoint_path(tmp_path / "b" / "checkpoint"),
                                       "model")).params
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    capsys.readouterr()
    assert cli.main(["train", "--out", b, "--epochs", "3", "--resume", "--batch-size", "32"]
                    + common) == 2
    assert "trained with batch_size=64, not 32" in capsys.readouterr().err


def test_a_model_without_a_word_table(tmp_path, toy):
    """--dim 0: the other features only (the lecture's "discrete features" row of
    its extrinsic evaluation); trains compiled as eagerly, saves, loads and tags."""
    import warnings

    from cygrad.ner.train import Trainer
    cfg = Config(dim=0, hidden=(16,), suffix_dim=4, case_dim=3, prefix_dim=4, shape_dim=3,
                 loss="crf", dtype="float64")
    vocab = Vocab.build(toy[0][:100], min_count=1)
    m = WindowModel(cfg, vocab, seed=1)
    assert "E" not in m.params and m.tables() == ["S", "Cs", "P", "Sh"]
    enc = m.encode(toy[0][:100])
    params = {}
    for compiled in (True, False):
        mm = WindowModel(cfg, vocab, seed=1)
        tr = Trainer(mm, TrainConfig(lr=0.1, compile=compiled))
        off = enc.offsets
        with warnings.catch_warnings():
            warnings.simplefilter("error", cg.CompileWarning)
            for a in range(0, 60, 20):
                idx = np.arange(off[a], off[a + 20])
                tr.step(enc.words[idx], enc.suffixes[idx], enc.cases[idx], enc.labels[idx],
                        np.random.default_rng(0), enc.prefixes[idx], enc.shapes[idx],
                        np.diff(off[a:a + 21]))
        params[compiled] = mm.params
    for k in params[True]:
        np.testing.assert_allclose(params[True][k], params[False][k], rtol=1e-9, atol=1e-12)
    mm.save(str(tmp_path / "m"))
    again = WindowModel.load(str(tmp_path / "m"))
    assert again.tag("Police in Lagos arrested Maria Okafor .")[0].tokens
    with pytest.raises(ValueError, match="the window has no features"):
        Config(dim=0, suffix_dim=0, case_dim=0)


def test_the_training_plot_marks_the_best_epoch(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from cygrad.ner.train import _plot
    shown = []
    real_close = plt.close

    def close(fig):
        shown.extend(t.get_text() for ax in fig.axes for t in ax.texts)
        real_close(fig)
    monkeypatch.setattr(plt, "close", close)
    hist = [{"epoch": e, "loss": 1.0 / e, "dev_f1": f} for e, f in
            [(1, 0.80), (2, 0.86), (3, 0.84)]]
    assert _plot(hist, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert shown == ["best: epoch 2, F1 86.00"]


def test_train_threads_apply_to_that_call_only(tmp_path):
    """train(threads=n) runs with n threads and leaves the process-wide count (the
    caller's, as the CLI sets it) as it was."""
    tr = read_conll(corpus.path("train"))[:60]
    seen = []
    before = cg.get_num_threads()
    try:
        cg.set_num_threads(2)
        train(tr, None, str(tmp_path / "m"), Config(hidden=(8,), dim=8),
              TrainConfig(epochs=1), threads=1, progress=False,
              log=lambda *a, **k: seen.append(cg.get_num_threads()))
        assert seen and set(seen) == {1}
        assert cg.get_num_threads() == 2
    finally:
        cg.set_num_threads(before)
