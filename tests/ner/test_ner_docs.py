"""Documents (issue 14): read_conll's document ids, and the decoder's sharing of
scores between the occurrences of a word in its document, against a brute-force
oracle written with Python loops."""

import io
import sys

import numpy as np
import pytest

from cygrad.ner import cli, corpus
from cygrad.ner.data import Sentence, Vocab, read_conll
from cygrad.ner.model import Config, WindowModel


def test_read_conll_numbers_the_documents(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("-DOCSTART- O\n\nA B-PER\n.\tO\n\nb O\n\n-DOCSTART- O\n\n-DOCSTART- O\n\n"
                 "C B-LOC\n-DOCSTART- O\nD O\n")
    sents = read_conll(str(p))
    assert [s.tokens for s in sents] == [["A", "."], ["b"], ["C"], ["D"]]
    assert [s.doc for s in sents] == [0, 0, 1, 2]      # empty documents take no number
    p.write_text("A B-PER\n\nb O\n")                     # no -DOCSTART-: one document
    assert [s.doc for s in read_conll(str(p))] == [0, 0]


def _shared_oracle(scores, sents, a):
    """Each token's scores: (1 - a) its own + a the mean over the tokens with the
    same string in the same document, by loops."""
    flat = [(s.doc, t) for s in sents for t in s.tokens]
    out = np.empty_like(scores)
    for i, key in enumerate(flat):
        same = [j for j, other in enumerate(flat) if other == key]
        out[i] = (1 - a) * scores[i] + a * scores[same].mean(axis=0)
    return out


@pytest.fixture(scope="module")
def model():
    sents = read_conll(corpus.path("train"))[:80]
    return WindowModel(Config(hidden=(12,), dim=6, suffix_dim=3, case_dim=2, loss="crf"),
                       Vocab.build(sents, min_count=1), seed=1), sents


@pytest.mark.parametrize("a", [0.0, 0.3, 1.0])
def test_scores_shared_within_documents_equal_the_oracle(model, a):
    m, sents = model
    rng = np.random.default_rng(0)
    # repeated words within and across documents; a word unknown to the model too
    words = ["Jordan", "police", "in", "Jordan", "Zqx", "the", "jordan"]
    docs = [Sentence(list(rng.choice(words, int(rng.integers(1, 9)))), [], int(d))
            for d in rng.integers(0, 3, 25)]
    enc = m.encode(docs, with_labels=False)
    scores = rng.standard_normal((len(enc), 9))
    want = _shared_oracle(scores, docs, a)
    m.config.doc_context = a
    try:
        got = scores.copy()
        m._share_in_documents(got, enc)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        # decoding uses the shared scores: tags from the model's scores, shared by hand
        typed = m._typed_scores(enc).astype(np.float64)
        shared = _shared_oracle(typed, docs, a)
        m.config.doc_context = 0.0
        plain = m.predict(enc)
        m.config.doc_context = a
        pred = m.predict(enc)
        from cygrad import kernels as K
        from cygrad.ner.model import crf_constraints
        lengths = np.diff(enc.offsets)
        want_ids = K.crf_viterbi(shared.astype(m.params["A"].dtype), lengths, m.params["A"],
                                 crf_constraints(m.vocab.tags))
        np.testing.assert_array_equal(pred, want_ids)
        if a == 0:
            np.testing.assert_array_equal(pred, plain)
    finally:
        m.config.doc_context = 0.0


def test_documents_do_not_share(model):
    """The same word in two documents keeps its own scores; one document's words mix."""
    m, _ = model
    m.config.doc_context = 1.0
    try:
        sents = [Sentence(["Jordan", "said"], [], 0), Sentence(["in", "Jordan"], [], 1)]
        enc = m.encode(sents, with_labels=False)
        s = np.arange(4 * 9, dtype=np.float64).reshape(4, 9)
        got = s.copy()
        m._share_in_documents(got, enc)
        np.testing.assert_array_equal(got, s)
        for x in sents:
            x.doc = 0
        enc = m.encode(sents, with_labels=False)
        got = s.copy()
        m._share_in_documents(got, enc)
        np.testing.assert_array_equal(got[0], got[3])
        np.testing.assert_array_equal(got[0], (s[0] + s[3]) / 2)
        np.testing.assert_array_equal(got[1:3], s[1:3])
    finally:
        m.config.doc_context = 0.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, float("nan")])
def test_doc_context_must_be_in_0_1(bad):
    with pytest.raises(ValueError, match="doc_context must be a number in \\[0, 1\\]"):
        Config(doc_context=bad)


def test_tokenized_input_documents():
    text = ("-DOCSTART- -X- O\n\nA\nb\n\nc\n-DOCSTART-\nd\n\n\n-DOCSTART-\n\n"
            "-DOCSTART-\n\ne x\r\nf\n")
    sents = cli.read_tokenized(text)
    assert [(s.tokens, s.doc) for s in sents] == [(["A", "b"], 0), (["c"], 0), (["d"], 1),
                                                  (["e", "f"], 2)]
    assert cli.read_tokenized("") == [] and cli.read_tokenized("-DOCSTART-\n") == []


def _train(tmp_path, capsys, doc_context):
    """A one-epoch demo model trained by the CLI with --doc-context; (dir, model)."""
    out = str(tmp_path / "m")
    assert cli.main(["train", "--out", out, "--epochs", "1", "--no-progress", "--hidden",
                     "16", "--doc-context", str(doc_context)]) == 0
    capsys.readouterr()
    return out, WindowModel.load(out)


def test_cli_stores_doc_context_and_tag_reads_docstart(tmp_path, capsys, monkeypatch):
    out, m = _train(tmp_path, capsys, 0.25)
    assert m.config.doc_context == 0.25
    monkeypatch.setattr(sys, "stdin", io.StringIO(
        "-DOCSTART-\n\nHeavy\nrain\n\nin\nLincoln\n-DOCSTART-\nLincoln\nwon\n"))
    assert cli.main(["tag", "--model", out, "--tokenized"]) == 0
    lines = capsys.readouterr().out.split("\n")
    toks = [ln.split("\t")[0] for ln in lines if ln]
    assert toks == ["Heavy", "rain", "in", "Lincoln", "Lincoln", "won"]
    assert lines.count("") == 4        # three sentences, each closed by a blank line, + end


def test_evaluate_and_tag_override_the_doc_context(tmp_path, capsys, monkeypatch):
    out, m = _train(tmp_path, capsys, 1.0)
    sents = read_conll(corpus.path("test"))[:60]
    for x in sents:
        x.doc = 0           # one document: the context matters
    data = tmp_path / "one-doc.conll"
    data.write_text("\n\n".join("\n".join(f"{t} {g}" for t, g in zip(x.tokens, x.tags))
                                for x in sents) + "\n")
    from cygrad.ner.train import tags_of
    rows = {}
    for a in (None, 0.0):
        args = ["evaluate", "--model", out, "--data", str(data), "--output",
                str(tmp_path / "p.txt")] + ([] if a is None else ["--doc-context", str(a)])
        assert cli.main(args) == 0
        capsys.readouterr()
        rows[a] = [ln.split()[2] for ln in (tmp_path / "p.txt").read_text().splitlines() if ln]
        m.config.doc_context = 1.0 if a is None else a
        assert rows[a] == [t for s in tags_of(m, m.encode(sents)) for t in s]
    assert rows[None] != rows[0.0]      # (a model whose tags do not move would not test it)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Lincoln won .\n"))
    assert cli.main(["tag", "--model", out, "--doc-context", "2"]) == 2
    assert "--doc-context: doc_context must be a number in [0, 1], got 2.0" in \
        capsys.readouterr().err


def _sweep_module():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benches", "sweep_generalise.py")
    spec = importlib.util.spec_from_file_location("sweep_generalise", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    return sweep


def test_cli_defaults_are_the_sweeps_choice(tmp_path, monkeypatch):
    """README and the sweep's results name `b256.avg.doc5` as `cygrad train`'s
    defaults on a data file: the settings the command hands to train() are those."""
    from cygrad.ner import train as train_mod
    from cygrad.ner.train import TrainConfig

    sweep = _sweep_module()
    mk, tk = sweep.CONFIGS["b256.avg.doc5"]
    seen = {}

    def fake_train(train_sents, dev_sents, out, mcfg, tcfg, **kw):
        seen.update(mcfg=mcfg, tcfg=tcfg)
        raise SystemExit(0)
    monkeypatch.setattr(train_mod, "train", fake_train)
    with pytest.raises(SystemExit):
        cli.main(["train", "--train", corpus.path("train"), "--out", str(tmp_path / "m")])
    assert seen["mcfg"] == Config(**mk)
    assert seen["tcfg"] == TrainConfig(**tk)


def test_sweep_ensemble_groups():
    """--ensemble K: runs of K consecutive seeds; K = 0 (the default) none."""
    groups = _sweep_module().groups
    assert groups(9, 3) == [(0, 3), (3, 6), (6, 9)]
    assert groups(7, 3) == [(0, 3), (3, 6)]
    assert groups(3, 0) == [] and groups(2, 3) == []
    assert groups(2, 1) == [(0, 1), (1, 2)]


def test_sweep_main_scores_each_group_once(monkeypatch, capsys):
    """main() with --ensemble K: each run of K seeds scored together once, with its
    own models and its members' dev F1; a shorter last run is not; K beyond the
    seeds is refused."""
    sweep = _sweep_module()
    calls = []

    def fake_run(name, seed, train_s, dev_s, keep=None):
        if keep is not None:
            keep.append(f"model{seed}")
        return {"config": name, "seed": seed, "f1": seed / 10, "seen": 0.0, "unseen": 0.0,
                "best_epoch": 1, "epochs": 1, "epoch_s": 0.0, "total_s": 0.0}

    def fake_ensemble(name, seeds, models, dev_s, members=None):
        calls.append((list(seeds), list(models), list(members)))
        return {"config": f"{name} x{len(models)}", "seeds": list(seeds), "f1": 0.5,
                "seen": 0.5, "unseen": 0.5, "members": list(members)}
    monkeypatch.setattr(sweep, "run", fake_run)
    monkeypatch.setattr(sweep, "ensemble", fake_ensemble)
    monkeypatch.setattr(sweep, "read_conll", lambda path: [])
    monkeypatch.setattr(sys, "argv", ["sweep", "--configs", "base", "--seeds", "0", "1", "2",
                                      "3", "4", "--ensemble", "2"])
    assert sweep.main() == 0
    assert calls == [([0, 1], ["model0", "model1"], [0.0, 0.1]),
                     ([2, 3], ["model2", "model3"], [0.2, 0.3])]
    assert "| base x2 | 0 1 |" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["sweep", "--configs", "base", "--seeds", "0",
                                      "--ensemble", "2"])
    with pytest.raises(SystemExit):
        sweep.main()
    assert "--ensemble: K must be between 0 and the number of seeds (1), got 2" in \
        capsys.readouterr().err


@pytest.mark.parametrize("loss", ["crf", "softmax"])
def test_sweep_ensemble_decodes_the_averaged_scores(tmp_path, monkeypatch, loss):
    """The sweep's --ensemble (token scores averaged over the models, a CRF's
    transitions too, then shared within documents): a model taken twice tags as
    itself; two models decode exactly their averaged, shared scores with their
    averaged transitions; the first model is left as it was, on an error too;
    models of other settings are refused."""
    from cygrad.ner.evaluate import evaluate, gold_tags, tags_of
    from cygrad.ner.train import TrainConfig, score, train

    sweep = _sweep_module()
    tr = read_conll(corpus.path("train"))
    dev = read_conll(corpus.path("test"))
    models = []
    for seed in (0, 1):
        m, _ = train(tr, dev, str(tmp_path / f"m{seed}"), Config(loss=loss, doc_context=0.5),
                     TrainConfig(epochs=2, seed=seed), log=lambda *a: None, progress=False)
        models.append(m)
    a, b = models
    if loss == "crf":       # transitions far from a's: decoding with a's alone would differ
        b.params["A"] = b.params["A"] + 3 * np.random.default_rng(0).standard_normal(
            b.params["A"].shape).astype(b.params["A"].dtype)
    before = {k: v.copy() for k, v in a.params.items()}
    enc = a.encode(dev)
    assert sweep.ensemble_tags([a, a], dev) == tags_of(a, enc)
    # what the first model is asked to decode: the averaged scores, shared within
    # documents, under the averaged transitions
    seen = {}
    decode = a.decode

    def spy(logp, e, *args):
        seen["logp"], seen["A"] = logp.copy(), a.params.get("A")
        return decode(logp, e, *args)
    monkeypatch.setattr(a, "decode", spy)
    got = sweep.ensemble_tags([a, b], dev)
    monkeypatch.setattr(a, "decode", decode)
    assert all(np.array_equal(before[k], a.params[k]) for k in before)
    s = (a.token_scores(enc) + b.token_scores(enc)) / 2
    shared = s.copy()
    a._share_in_documents(shared, enc)
    assert not np.allclose(shared, s)       # the sharing moves these scores
    np.testing.assert_allclose(seen["logp"], shared, rtol=1e-12, atol=1e-12)
    c = WindowModel(a.config, a.vocab, params={k: v.copy() for k, v in a.params.items()})
    if loss == "crf":
        want_A = (a.params["A"] + b.params["A"]) / 2
        np.testing.assert_allclose(seen["A"], want_A, rtol=1e-6)
        c.params["A"] = want_A
        assert got != a.tags(a.decode(shared.copy(), enc), enc.offsets)  # A matters here
    assert got == c.tags(c.decode(shared.copy(), enc), enc.offsets)
    e = sweep.ensemble("x", [0, 1], [a, b], dev)
    assert e["f1"] == evaluate(gold_tags(a, dev), got).f1
    assert e["members"] == [score(a, dev).f1, score(b, dev).f1]
    # an error while decoding leaves the first model's parameters as they were

    def boom(*args):
        raise RuntimeError("boom")
    monkeypatch.setattr(a, "decode", boom)
    with pytest.raises(RuntimeError, match="boom"):
        sweep.ensemble_tags([a, b], dev)
    monkeypatch.setattr(a, "decode", decode)
    assert all(np.array_equal(before[k], a.params[k]) for k in before)
    # models of other settings (or another vocabulary) are not averaged
    other = WindowModel(Config(loss=loss, doc_context=0.3), a.vocab,
                        params={k: v.copy() for k, v in a.params.items()})
    with pytest.raises(ValueError, match="model 1 has another vocabulary or other settings"):
        sweep.ensemble_tags([a, other], dev)
