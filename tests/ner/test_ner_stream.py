"""`cygrad tag` in bounded memory (#31): the input read a line at a time, tagged
in chunks of whole documents, a document too long to hold in two passes; the
tags are those of tagging everything at once."""

import io
import sys

import numpy as np
import pytest

from cygrad.ner import cli, corpus, stream
from cygrad.ner.data import Sentence, read_conll, tokenize
from cygrad.ner.model import Config
from cygrad.ner.train import TrainConfig, train


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    sents = read_conll(corpus.path("train"))[:600]
    m, _ = train(sents, [], str(tmp_path_factory.mktemp("m")),
                 Config(hidden=(24,), dim=16, suffix_dim=4, case_dim=3, loss="crf",
                        doc_context=0.5),
                 TrainConfig(epochs=2, lr=0.1, batch_size=64), log=lambda *a: None,
                 progress=False)
    return m


def _all_at_once(model, sents):
    enc = model.encode(sents, with_labels=False)
    return model.tags(model.predict(enc), enc.offsets)


def _held_out(ndocs=None):
    sents = read_conll(corpus.path("test"))
    return sents if ndocs is None else [s for s in sents if s.doc < ndocs]


@pytest.mark.parametrize("max_tokens", [1, 7, 60, 10 ** 6])
@pytest.mark.parametrize("doc_context", [0.5, 0.0])
def test_chunks_and_two_passes_give_the_tags_of_one_pass(model, max_tokens, doc_context):
    import dataclasses
    m = model
    m.config = dataclasses.replace(model.config, doc_context=doc_context)
    try:
        # documents of the held-out part (small ones, chunked), and the same
        # sentences as one long document (two passes past max_tokens)
        for sents in (_held_out(80),
                      [Sentence(s.tokens, s.tags, 0) for s in _held_out(80)]):
            want = _all_at_once(m, sents)
            got = list(stream.tag_stream(m, iter(sents), max_tokens=max_tokens))
            assert [s.tokens for s, _ in got] == [s.tokens for s in sents]
            assert [t for _, t in got] == want
    finally:
        m.config = dataclasses.replace(model.config, doc_context=0.5)


def test_the_two_pass_scores_are_those_of_one_pass(model):
    """The summed scores of a long document, added a token at a time over the
    chunks, are bitwise the one-pass sharing's."""
    sents = [Sentence(s.tokens, s.tags, 0) for s in _held_out(40)]
    enc = model.encode(sents, with_labels=False)
    one = model.token_scores(enc)
    model._share_in_documents(one, enc)
    spool = stream._Spool(sents)
    seen = []
    orig = model.decode

    def grab(logp, e, decode=None):
        seen.append(logp.copy())
        return orig(logp, e, decode)
    model.decode = grab
    try:
        list(stream._two_pass(model, spool, 37))
    finally:
        del model.decode
    np.testing.assert_array_equal(np.concatenate(seen), one)


def test_raw_text_read_a_paragraph_at_a_time_is_tokenised_as_a_whole():
    from test_tokenize import CASES
    text = ("\n \t\n".join(t for t, _ in CASES[:30]) + "\n\n\n" +
            "\n".join(t for t, _ in CASES[30:]) + "\n")
    want = tokenize(text)
    got = [s.tokens for s in stream.raw_sentences(stream.lines(io.StringIO(text)))]
    assert got == want and len(got) > 40


def test_lines_split_at_newline_only_and_drop_a_byte_order_mark():
    text = "\ufeffA\u2028B C\r\nD\x0cE\x85F\n\nG\n"
    assert list(stream.lines(io.StringIO(text, newline="\n"))) == \
        ["A\u2028B C", "D\x0cE\x85F", "", "G"]


def test_cygrad_tag_streams_stdin_and_files(model, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "m")
    model.save(out)
    text = "\n\n".join(" ".join(s.tokens) for s in _held_out(5))
    p = tmp_path / "in.txt"
    p.write_text("\ufeff" + text + "\n", encoding="utf-8")
    assert cli.main(["tag", "--model", out, "--input", str(p)]) == 0
    from_file = capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO(text + "\n"))
    assert cli.main(["tag", "--model", out]) == 0
    assert capsys.readouterr().out == from_file
    sents = [Sentence(t, ["O"] * len(t), 0) for t in tokenize(text)]
    want = "".join("".join(f"{tok}\t{tag}\n" for tok, tag in zip(s.tokens, t)) + "\n"
                   for s, t in zip(sents, _all_at_once(model, sents)))
    assert from_file == want
