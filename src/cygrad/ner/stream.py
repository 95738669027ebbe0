"""Tagging a text of any size in bounded memory (``cygrad tag``).

The input is read a line at a time (split at "\\n" only, as
cygrad.ner.data.text_lines does), turned into sentences a paragraph (raw text)
or a sentence (``--tokenized``) at a time, and tagged in chunks of whole
documents of at most ``max_tokens`` tokens, each written out before the next is
read. A document longer than that (raw text is one document) is spooled to a
temporary file and tagged in two passes: the first adds up each token's scores
over the document (the mean that ``doc_context`` moves scores toward), the
second scores it again chunk by chunk, shares, decodes and writes. Memory then
depends on the chunk size and on the number of distinct tokens of the longest
document, not on the input's length. The tags are those of tagging the whole
input at once (tested).
"""

import contextlib
import io
import json
import os
import sys
import tempfile

import numpy as np

from cygrad.ner.data import Sentence, conll_blocks, tokenize

MAX_TOKENS = 50_000


def lines(f):
    """The lines of a text stream opened with ``newline="\\n"`` (no other line
    break splits a line), without their "\\n" or "\\r\\n"; a leading byte-order
    mark dropped."""
    first = True
    for line in f:
        if first:
            first = False
            if line.startswith("\ufeff"):
                line = line[1:]
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        yield line


def raw_sentences(lines_):
    """Sentences of raw text (one document, 0): the text is tokenised a paragraph
    at a time (paragraphs end at blank lines, where cygrad.ner.data.tokenize
    always ends a sentence), which gives tokenize(whole text)'s sentences."""
    para = []
    for line in lines_:
        if line.strip():
            para.append(line)
        elif para:
            for t in tokenize("\n".join(para)):
                yield Sentence(t, ["O"] * len(t), 0)
            para = []
    if para:
        for t in tokenize("\n".join(para)):
            yield Sentence(t, ["O"] * len(t), 0)


def tokenized_sentences(lines_):
    """Sentences of ``--tokenized`` input (cygrad.ner.cli.read_tokenized's, streamed)."""
    for doc, rows in conll_blocks(lines_):
        yield Sentence([parts[0] for _, parts in rows], ["O"] * len(rows), doc)


def tag_stream(model, sentences, max_tokens=MAX_TOKENS):
    """(sentence, tag strings) for each sentence of an iterable, in order, tagged
    as ``model.predict`` tags them all at once, holding at most about
    ``max_tokens`` tokens of input at a time (see the module docstring)."""
    share = bool(model.config.doc_context)
    chunk, n = [], 0
    if not share:               # no document context: any cut between sentences
        for s in sentences:
            chunk.append(s)
            n += len(s.tokens)
            if n >= max_tokens:
                yield from _tag(model, chunk)
                chunk, n = [], 0
        yield from _tag(model, chunk)
        return
    for _, doc in _DocReader(sentences, max_tokens):
        if isinstance(doc, _Spool):
            yield from _tag(model, chunk)
            chunk, n = [], 0
            yield from _two_pass(model, doc, max_tokens)
            continue
        size = sum(len(s.tokens) for s in doc)
        if chunk and n + size > max_tokens:
            yield from _tag(model, chunk)
            chunk, n = [], 0
        chunk.extend(doc)
        n += size
    yield from _tag(model, chunk)


def _tag(model, sents):
    if not sents:
        return
    enc = model.encode(sents, with_labels=False)
    tags = model.tags(model.predict(enc), enc.offsets)
    yield from zip(sents, tags)


class _Spool:
    """A long document's sentences in a temporary file (one JSON list a line)."""

    def __init__(self, sents):
        self.f = tempfile.TemporaryFile("w+", encoding="utf-8")
        self.doc = getattr(sents[0], "doc", 0) if sents else 0
        for s in sents:
            self.add(s)

    def add(self, s):
        self.f.write(json.dumps(s.tokens) + "\n")

    def chunks(self, max_tokens):
        self.f.seek(0)
        chunk, n = [], 0
        for line in self.f:
            toks = json.loads(line)
            chunk.append(Sentence(toks, ["O"] * len(toks), self.doc))
            n += len(toks)
            if n >= max_tokens:
                yield chunk
                chunk, n = [], 0
        if chunk:
            yield chunk

    def close(self):
        self.f.close()


class _DocReader:
    """Documents of a sentence stream: a list of sentences, or a _Spool once a
    document passes max_tokens."""

    def __init__(self, sentences, max_tokens):
        self.it, self.max = iter(sentences), max_tokens

    def __iter__(self):
        cur, doc, n, spool = [], None, 0, None
        for s in self.it:
            d = getattr(s, "doc", 0)
            if (cur or spool) and d != doc:
                yield doc, (spool if spool is not None else cur)
                cur, n, spool = [], 0, None
            doc = d
            if spool is not None:
                spool.add(s)
                continue
            cur.append(s)
            n += len(s.tokens)
            if n > self.max:
                spool, cur = _Spool(cur), []
        if cur or spool:
            yield doc, (spool if spool is not None else cur)


def _two_pass(model, spool, max_tokens):
    """A document too long to hold: its tokens' summed scores first, then each
    chunk scored again, moved toward those means as predict does, and decoded."""
    a = model.config.doc_context
    try:
        ids, sums, counts = {}, None, None
        for sents in spool.chunks(max_tokens):
            enc = model.encode(sents, with_labels=False)
            logp = model.token_scores(enc)
            g = np.fromiter((ids.setdefault(t, len(ids)) for s in sents for t in s.tokens),
                            dtype=np.int64, count=len(enc))
            if sums is None:
                sums = np.zeros((0, logp.shape[1]))
                counts = np.zeros(0)
            if len(ids) > len(sums):
                grow = max(len(ids), 2 * len(sums))
                sums = np.concatenate([sums, np.zeros((grow - len(sums), sums.shape[1]))])
                counts = np.concatenate([counts, np.zeros(grow - len(counts))])
            # one token after the other, as predict's np.bincount adds them up
            np.add.at(sums, g, logp)
            np.add.at(counts, g, 1.0)
        for sents in spool.chunks(max_tokens):
            enc = model.encode(sents, with_labels=False)
            logp = model.token_scores(enc)
            g = np.fromiter((ids[t] for s in sents for t in s.tokens), dtype=np.int64,
                            count=len(enc))
            if a and len(logp):
                mean = sums[g] / counts[g][:, None]
                logp *= 1.0 - a
                logp += a * mean
            tags = model.tags(model.decode(logp, enc), enc.offsets)
            yield from zip(sents, tags)
    finally:
        spool.close()


@contextlib.contextmanager
def open_text(path):
    """A text stream of ``path`` (standard input for None, not closed after) read
    as UTF-8 with lines split at "\n" only."""
    if path is not None:
        with open(os.fspath(path), encoding="utf-8", newline="\n") as f:
            yield f
        return
    buf = getattr(sys.stdin, "buffer", None)
    if buf is None:                 # a text stream put in its place (tests, notebooks)
        yield sys.stdin
        return
    f = io.TextIOWrapper(buf, encoding="utf-8", newline="\n")
    try:
        yield f
    finally:
        f.detach()                  # leave sys.stdin's buffer open
