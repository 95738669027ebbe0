"""Seen / unseen entity scores (issue 14's diagnostics): each part checked
against an independent oracle, the evaluation of tag sequences from which the
other part's entities were erased."""

import json

import numpy as np
import pytest

from cygrad.ner import cli, corpus
from cygrad.ner.data import Sentence, Vocab, entity_forms, read_conll
from cygrad.ner.evaluate import chunks, evaluate
from cygrad.ner.model import Config, ModelError, WindowModel

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"]
WORDS = ["Ann", "Bo", "Rome", "EU", "the", "in"]


def _random_corpus(rng, n):
    toks, tags = [], []
    for _ in range(n):
        m = int(rng.integers(1, 8))
        toks.append([WORDS[i] for i in rng.integers(0, len(WORDS), m)])
        tags.append([TAGS[i] for i in rng.integers(0, len(TAGS), m)])
    return toks, tags


def _keep_only(tags, toks, keep):
    """The tags with every entity whose surface form fails keep() turned into O."""
    out = ["O"] * len(tags)
    for typ, a, b in chunks(tags):
        if keep(" ".join(toks[a:b])):
            out[a:b] = [f"B-{typ}"] + [f"I-{typ}"] * (b - a - 1)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_seen_and_unseen_parts_equal_restricted_evaluations(seed):
    rng = np.random.default_rng(seed)
    toks, gold = _random_corpus(rng, 30)
    pred = [[TAGS[i] for i in rng.integers(0, len(TAGS), len(t))] for t in toks]
    forms = sorted({" ".join(t[a:b]) for t, g in zip(toks, gold) for _, a, b in chunks(g)})
    seen = set(forms[::2])
    sc = evaluate(gold, pred, tokens=toks, seen=seen)
    for part, keep in ((sc.seen, lambda f: f in seen), (sc.unseen, lambda f: f not in seen)):
        ref = evaluate([_keep_only(g, t, keep) for g, t in zip(gold, toks)],
                       [_keep_only(p, t, keep) for p, t in zip(pred, toks)])
        assert (part.gold, part.found, part.correct) == (ref.gold, ref.found, ref.correct)
        assert part.f1 == pytest.approx(ref.f1)
    assert sc.seen.gold + sc.unseen.gold == sc.gold
    assert sc.seen.found + sc.unseen.found == sc.found
    assert sc.seen.correct + sc.unseen.correct == sc.correct


def test_hand_counted_example():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    toks = [["John", "Smith", "in", "Paris"], ["EU", "Rome"]]
    sc = evaluate(gold, pred, tokens=toks, seen={"John Smith", "Rome"})
    # seen: gold {John Smith}, predicted {John Smith, Rome}; unseen: gold {Paris, EU},
    # predicted {EU}
    assert (sc.seen.precision, sc.seen.recall) == (0.5, 1.0)
    assert (sc.unseen.precision, sc.unseen.recall) == (1.0, 0.5)
    assert "unseen" in sc.table() and "F1 seen 66.67, unseen 66.67" in sc.summary()
    sents = [Sentence(t, g) for t, g in zip(toks, gold)]
    assert entity_forms(sents) == {"John Smith", "Paris", "EU"}
    with pytest.raises(ValueError, match="needs the sentences' tokens"):
        evaluate(gold, pred, seen={"EU"})
    with pytest.raises(ValueError, match="sentence 1 has 1 tokens and 2 tags"):
        evaluate(gold, pred, tokens=[toks[0], ["EU"]], seen={"EU"})
    plain = evaluate(gold, pred)
    assert plain.seen is None and "unseen" not in plain.table()


def test_model_stores_training_entities(tmp_path):
    train = read_conll(corpus.path("train"))[:40]
    vocab = Vocab.build(train, min_count=1)
    assert set(vocab.entities) == entity_forms(train) and vocab.entities
    m = WindowModel(Config(hidden=(8,), dim=4, suffix_dim=2, case_dim=2), vocab)
    m.save(tmp_path / "m")
    assert WindowModel.load(tmp_path / "m").vocab.entities == vocab.entities
    # a model written before entities were stored loads with none
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["vocab"]["entities"]
    meta_path.write_text(json.dumps(meta))
    assert WindowModel.load(tmp_path / "m").vocab.entities == []
    meta["vocab"]["entities"] = [1, 2]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="entities must be a list of strings"):
        WindowModel.load(tmp_path / "m")


def test_cli_reports_seen_and_unseen(tmp_path, capsys):
    out = str(tmp_path / "m")
    assert cli.main(["train", "--out", out, "--epochs", "2", "--no-progress", "--hidden",
                     "16", "--dim", "8"]) == 0
    log = capsys.readouterr().out
    assert "unseen" in log                           # the per-epoch dev line
    hist = json.loads((tmp_path / "m" / "model.json").read_text())["extra"]["history"]
    assert 0 <= hist[-1]["dev_f1_unseen"] <= 1 and 0 <= hist[-1]["dev_f1_seen"] <= 1
    assert cli.main(["evaluate", "--model", out, "--data", corpus.path("test")]) == 0
    table = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1:] for ln in table.splitlines() if ln.strip()}
    assert "seen" in rows and "unseen" in rows
    # --train: the forms of that file instead; the whole test file as "training" data
    # makes every gold entity seen
    assert cli.main(["evaluate", "--model", out, "--data", corpus.path("test"),
                     "--train", corpus.path("test")]) == 0
    rows = {ln.split()[0]: ln.split()[1:] for ln in capsys.readouterr().out.splitlines()
            if ln.strip()}
    assert rows["unseen"][3] == "0" and rows["seen"][3] == rows["all"][3]
