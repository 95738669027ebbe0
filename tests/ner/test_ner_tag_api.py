"""WindowModel.tag: raw text or tokens in, tagged sentences and entity spans out
(issue 15's Python API), against the CLI's tagging of the same text."""

import io
import sys

import numpy as np
import pytest

from cygrad.ner import cli, corpus
from cygrad.ner.data import read_conll, tokenize, tokenize_spans
from cygrad.ner.model import Config, Tagged, WindowModel
from cygrad.ner.train import TrainConfig, train


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    m, _ = train(read_conll(corpus.path("train")), [], str(d), Config(hidden=(32,), dim=16),
                 TrainConfig(epochs=3), log=lambda *a: None, progress=False)
    return m, str(d)


def test_spans_point_into_the_text():
    text = "U.S. officials met in Paris.\n\nThen they left!  Bye"
    spans = tokenize_spans(text)
    assert [[t for t, _, _ in s] for s in spans] == tokenize(text)
    for sent in spans:
        for tok, a, b in sent:
            assert text[a:b] == tok
    assert tokenize_spans("") == [] and tokenize_spans("\n\n \n") == []


def test_tag_raw_text_matches_the_cli(model, monkeypatch, capsys):
    m, d = model
    text = "According to Jordan , police in Jordan arrested 12 people .\nParis is big."
    got = m.tag(text)
    assert all(isinstance(s, Tagged) for s in got) and len(got) == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert cli.main(["tag", "--model", d]) == 0
    lines = [ln.split("\t") for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert [tuple(x) for x in lines] == [p for s in got for p in s.tokens]
    for s in got:
        for typ, ent, a, b in s.entities:
            assert text[a:b] == ent
    assert any(e[0] == "LOC" and e[1] == "Jordan" for e in got[0].entities)


def test_tag_tokens_and_bad_input(model):
    m, _ = model
    got = m.tag([["Paris", "Hilton", "wowed"], []])
    assert [t for t, _ in got[0].tokens] == ["Paris", "Hilton", "wowed"]
    assert got[1].tokens == [] and got[1].entities == []
    for typ, ent, a, b in got[0].entities:
        assert ent == " ".join(["Paris", "Hilton", "wowed"][a:b])
    assert m.tag("") == []
    with pytest.raises(TypeError, match="str or a list of token lists"):
        m.tag(["Paris", "Hilton"])
    with pytest.raises(TypeError, match="str or a list of token lists"):
        m.tag(np.array([1]))
    assert WindowModel.load  # the documented entry point
