"""CoNLL-format data: reading, tag schemes, vocabulary, features, windows.

A CoNLL file has one token a line, the token in the first column and its tag in
the last, a blank line between sentences and ``-DOCSTART-`` lines between
documents. Tags may be IOB1, IOB2 or IOBES; every file is converted to IOB2 on
reading (``B-`` opens every entity, ``I-`` continues it), the scheme used inside
cygrad.

Words are lower-cased and their digits replaced by 0 for the vocabulary; what
lower-casing throws away comes back as a small casing feature (all lower, all
caps, initial capital, mixed, has digit, ...), and the word's last three
letters as a suffix feature. Windows of 2k+1 positions are padded with
``<s>`` before and ``</s>`` after each sentence.
"""

import collections
import dataclasses
import re
import zlib

import numpy as np

from cygrad.ner.features import FEATURES

PAD_L, PAD_R, UNK = "<s>", "</s>", "<unk>"
PREFIXES = {"B", "I", "E", "S", "L", "U"}   # L/U: the BILOU spelling of E/S

#: casing categories: index 0 is padding
CASES = ["<pad>", "lower", "upper", "title", "mixed", "digit", "other"]


class DataError(ValueError):
    """A malformed data file; the message names the file and the line."""


@dataclasses.dataclass
class Sentence:
    tokens: list
    tags: list
    doc: int = 0        # the document it belongs to (read_conll: -DOCSTART- lines part them)


def read_conll(path, require_tags=True):
    """Read a CoNLL file into a list of :class:`Sentence` with IOB2 tags, each
    with the number of its document (``Sentence.doc``: -DOCSTART- lines part the
    file into documents 0, 1, ...; a file without them is document 0).

    Raises :class:`DataError` naming the file and line for a binary or
    undecodable file, a line with a token but no tag column, or a tag whose
    prefix is not one of B, I, E, S (or O).
    """
    with open(path, "rb") as f:
        raw = f.read()
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path}: not a text file (NUL bytes): expected CoNLL text")
    if raw.startswith(b"\xef\xbb\xbf"):     # a UTF-8 byte-order mark is not part of a token
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 text ({e.reason})") from None
    sentences = []
    for doc, rows in conll_blocks(text_lines(text)):
        tokens, tags = [], []
        for lineno, parts in rows:
            if len(parts) < 2:
                if require_tags:
                    raise DataError(f"{path}:{lineno}: expected a token and a tag, got one "
                                    f"column {parts[0]!r}")
                parts = parts + ["O"]
            tag = parts[-1]
            if tag != "O":
                prefix, _, typ = tag.partition("-")
                if prefix not in PREFIXES or not typ:
                    raise DataError(f"{path}:{lineno}: tag {tag!r} is not O or B-/I-/E-/S- "
                                    f"followed by a type")
            tokens.append(parts[0])
            tags.append(tag)
        sentences.append(Sentence(tokens, to_iob2(tags), doc))
    return sentences


_COLUMNS = re.compile(r"[ \t]+")


def text_lines(text):
    """The lines of a text file: split at "\n" (a "\r" before it dropped) and nowhere
    else: str.splitlines also splits at U+2028, U+0085, form feeds..., which may sit
    inside a token, and the lines would no longer be the file's."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def conll_columns(line):
    """A CoNLL line's columns: separated by spaces and tabs only (a no-break or an
    ideographic space belongs to its token)."""
    return [p for p in _COLUMNS.split(line) if p]


def conll_blocks(lines):
    """The sentences of CoNLL lines, as (document, rows), rows the (line number,
    columns) of the sentence's token lines. A blank line ends a sentence; a
    -DOCSTART- line ends it too and starts a new document (documents are numbered
    0, 1, ... in order; one without sentences takes no number)."""
    rows, doc, used = [], 0, False
    for lineno, line in enumerate(lines, 1):
        parts = conll_columns(line)
        if not parts or parts[0] == "-DOCSTART-":
            if rows:
                yield doc, rows
                rows, used = [], True
            if parts and used:
                doc, used = doc + 1, False
            continue
        rows.append((lineno, parts))
    if rows:
        yield doc, rows


def to_iob2(tags):
    """Convert one sentence's tags from IOB1, IOB2 or IOBES (or BILOU) to IOB2.

    A token opens an entity when its prefix is B or S, or when it is I/E but the
    previous token is O, of another type, or closed its entity (E/S).
    """
    out, prev_type, prev_closed = [], None, True
    for tag in tags:
        if tag == "O":
            out.append("O")
            prev_type, prev_closed = None, True
            continue
        prefix, typ = tag.split("-", 1)
        opens = prefix in ("B", "S", "U") or prev_closed or typ != prev_type
        out.append(("B-" if opens else "I-") + typ)
        prev_type, prev_closed = typ, prefix in ("E", "S", "L", "U")
    return out


_DIGITS = re.compile(r"\d")


def normalise(token):
    """The vocabulary form: lower case, every digit replaced by 0."""
    low = token.lower()
    if low.isalpha():       # most tokens: no digit to replace
        return low
    # \d (Unicode Nd) implies str.isdigit, so a token without isdigit needs no sub
    return _DIGITS.sub("0", low) if any(map(str.isdigit, low)) else low


def word_key(token, vectors=None):
    """A token's vocabulary form: :func:`normalise`, or with pretrained vectors the
    form their table holds where it holds one (``vectors.key``: as written, lower
    case, then digits as 0), so that "1996" and "2008" keep their own vectors."""
    if vectors is not None:
        k = vectors.key(token)
        if k is not None:
            return k
    return normalise(token)


def casing(token):
    """Index into :data:`CASES` for a raw token."""
    if not token.isalpha() and any(map(str.isdigit, token)):
        return 5
    if not any(map(str.isalpha, token)):
        return 6
    if token.islower():
        return 1
    if token.isupper():
        return 2
    if token[0].isupper() and (len(token) == 1 or token[1:].islower()):
        return 3
    return 4


def suffix(token, n=3):
    return normalise(token)[-n:]


def prefix(token, n=3):
    return normalise(token)[:n]


NGRAM_SIZES = (3, 4, 5)


def char_ngrams(token, sizes=NGRAM_SIZES):
    """The character n-grams of a word (normalised, between the boundary marks
    < and >), as fastText takes them: "EU" -> "<eu", "eu>", "<eu>"."""
    w = "<" + normalise(token) + ">"
    return [w[i:i + n] for n in sizes for i in range(len(w) - n + 1)]


def ngram_bucket(gram, buckets):
    """The hashed bucket of an n-gram: CRC-32 of its UTF-8 bytes, mod buckets
    (a fixed function: the same bucket on every machine and run)."""
    return zlib.crc32(gram.encode("utf-8")) % buckets


def _char_class(c):
    if c.isupper():
        return "X"
    if c.islower() or (c.isalpha() and not c.isupper()):
        return "x"
    if c.isdigit():
        return "d"
    return c


_ASCII_SHAPE = str.maketrans(
    {**{chr(c): "X" for c in range(65, 91)}, **{chr(c): "x" for c in range(97, 123)},
     **{chr(c): "d" for c in range(48, 58)}})
_RUNS = re.compile(r"(.)\1{2,}")
# the common runs, with literal replacements (no template to expand per match)
_CLASS_RUNS = [(re.compile(c + "{3,}"), c + c) for c in "xXd"]


def shape(token):
    """The word's shape: upper case letters X, other letters x, digits d, other
    characters as they are, runs longer than two cut to two ("Washington" -> "Xxx",
    "EU" -> "XX", "U.S." -> "X.X.", "1996-08-22" -> "dd-dd-dd", "McDonald" -> "XxXxx")."""
    if token.isascii() and token.isalpha():     # most tokens: x, xx, X, XX, Xx, Xxx
        if token.islower():
            return "xx" if len(token) > 1 else "x"
        if token.isupper():
            return "XX" if len(token) > 1 else "X"
        if token[1:].islower():
            return "Xxx"[:len(token)]
    if token.isascii():         # one translate, literal substitutions
        s = token.translate(_ASCII_SHAPE)
        for run, two in _CLASS_RUNS:
            s = run.sub(two, s)
        return _RUNS.sub(r"\1\1", s) if _RUNS.search(s) else s   # "...", "---"
    return shape_by_classes(token)


def shape_by_classes(token):
    """:func:`shape` by its definition, character by character (each character's class,
    runs cut to two): the path of non-ASCII tokens, and the fast paths' oracle."""
    out, prev, run = [], None, 0
    for c in map(_char_class, token):
        run = run + 1 if c == prev else 1
        prev = c
        if run <= 2:
            out.append(c)
    return "".join(out)


@dataclasses.dataclass
class Vocab:
    """String <-> index maps for words, suffixes, prefixes, word shapes and tags."""

    words: list
    suffixes: list
    tags: list
    # surface forms ("New York") of the training data's entities, for the seen /
    # unseen report of cygrad.ner.evaluate; empty for models saved before it
    entities: list = dataclasses.field(default_factory=list)
    # the prefix and word-shape features' entries (padding and <unk> first); empty
    # for models saved before them (which do not use them)
    prefixes: list = dataclasses.field(default_factory=list)
    shapes: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.word_index = {w: i for i, w in enumerate(self.words)}
        self.suffix_index = {s: i for i, s in enumerate(self.suffixes)}
        self.prefix_index = {s: i for i, s in enumerate(self.prefixes)}
        self.shape_index = {s: i for i, s in enumerate(self.shapes)}
        self.tag_index = {t: i for i, t in enumerate(self.tags)}

    @classmethod
    def build(cls, sentences, min_count=2, min_suffix_count=2, vectors=None):
        """Words seen at least ``min_count`` times (rarer ones map to <unk>, so that
        <unk> gets trained), suffixes likewise, and every tag of the data. With
        pretrained ``vectors`` (cygrad.ner.vectors.Vectors), a word is keyed by the
        form the table holds (:func:`word_key`), and every word of the data that
        has a vector is in, however rare."""
        wc = collections.Counter(word_key(t, vectors) for s in sentences for t in s.tokens)
        if vectors is not None:
            for w in wc:
                if w in vectors.index:
                    wc[w] = max(wc[w], min_count)
        sc = collections.Counter(suffix(t) for s in sentences for t in s.tokens)
        tags = sorted({t for s in sentences for t in s.tags}, key=_tag_order)
        words = [PAD_L, PAD_R, UNK] + sorted(w for w, c in wc.items() if c >= min_count)
        sufs = [PAD_L, PAD_R, UNK] + sorted(x for x, c in sc.items() if c >= min_suffix_count)
        pc = collections.Counter(prefix(t) for s in sentences for t in s.tokens)
        hc = collections.Counter(shape(t) for s in sentences for t in s.tokens)
        pres = [PAD_L, PAD_R, UNK] + sorted(x for x, c in pc.items() if c >= min_suffix_count)
        shps = [PAD_L, PAD_R, UNK] + sorted(x for x, c in hc.items() if c >= min_suffix_count)
        return cls(words, sufs, tags, sorted(entity_forms(sentences)), pres, shps)

    def to_json(self):
        return {"words": self.words, "suffixes": self.suffixes, "tags": self.tags,
                "entities": self.entities, "prefixes": self.prefixes, "shapes": self.shapes}

    @classmethod
    def from_json(cls, d):
        """The vocabulary of a model file; ValueError says what is malformed."""
        if not isinstance(d, dict):
            raise ValueError(f"vocab must be an object, got {type(d).__name__}")
        out = {}
        for key in ("words", "suffixes", "tags"):
            v = d.get(key)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"vocab {key} must be a list of strings")
            if len(set(v)) != len(v):
                raise ValueError(f"vocab {key} has repeated entries")
            out[key] = v
        for key in ("words", "suffixes"):
            if out[key][:3] != [PAD_L, PAD_R, UNK]:
                raise ValueError(f"vocab {key} must start with {[PAD_L, PAD_R, UNK]} "
                                 f"(padding and the unknown-word entry), got {out[key][:3]}")
        if not out["tags"]:
            raise ValueError("vocab has no tags")
        ents = d.get("entities", [])
        if not isinstance(ents, list) or not all(isinstance(x, str) for x in ents):
            raise ValueError("vocab entities must be a list of strings")
        for key in ("prefixes", "shapes"):      # optional: older models have none
            v = d.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"vocab {key} must be a list of strings")
            if len(set(v)) != len(v):
                raise ValueError(f"vocab {key} has repeated entries")
            if v and v[:3] != [PAD_L, PAD_R, UNK]:
                raise ValueError(f"vocab {key} must start with {[PAD_L, PAD_R, UNK]}, "
                                 f"got {v[:3]}")
            out[key] = v
        return cls(out["words"], out["suffixes"], out["tags"], ents, out["prefixes"],
                   out["shapes"])


def entity_forms(sentences):
    """The set of entity surface forms of tagged sentences: each entity's tokens
    joined by single spaces, exactly as written (case and all)."""
    from cygrad.ner.evaluate import chunks

    return {" ".join(s.tokens[a:b]) for s in sentences for _, a, b in chunks(s.tags)}


def _tag_order(tag):
    return (tag != "O", tag[2:], tag[:1])


@dataclasses.dataclass
class Encoded:
    """A corpus as arrays: every token's window of word, suffix, casing, prefix
    and shape ids (N x (2k+1) each), its tag id (N,), and sentence boundaries."""

    words: np.ndarray
    suffixes: np.ndarray
    cases: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray      # sentence i is tokens offsets[i]:offsets[i+1]
    prefixes: np.ndarray = None
    shapes: np.ndarray = None
    # hashed character n-grams (encode(..., ngram_buckets=H)): token windows of bag
    # ids (N x (2k+1); 0 and 1 are the pads' empty bags) and the bags as CSR rows,
    # bag b = ngram_items[ngram_ptr[b]:ngram_ptr[b + 1]], one bag per distinct token
    ngrams: np.ndarray = None
    ngram_ptr: np.ndarray = None
    ngram_items: np.ndarray = None
    # token types: each window position's type (N x (2k+1); 0 and 1 the pads, 2 + u
    # the corpus's u-th distinct token) and each type's (word, suffix, casing, prefix,
    # shape) ids (T x 5): what the tagger's per-type projections read
    types: np.ndarray = None
    type_ids: np.ndarray = None
    docs: np.ndarray = None     # each token's document (Sentence.doc), N
    # with pretrained vectors: word id len(vocab.words) + j is the vectors' row extra[j]
    # (a word outside the training vocabulary that has a vector)
    extra: np.ndarray = None

    def feature(self, name):
        """The id windows of a feature: "words", "suffixes", "cases", "prefixes", "shapes"."""
        return getattr(self, name)

    def __len__(self):
        return len(self.labels)


def encode(sentences, vocab, k=2, with_labels=True, ngram_buckets=0, vectors=None):
    """Turn sentences into window arrays for a window of 2k+1 tokens.

    Unknown tags (not in the training data) raise DataError; unknown words and
    suffixes map to <unk>. With ``ngram_buckets`` > 0, also the bags of hashed
    character n-grams of every token (no vocabulary: any word has them).

    With pretrained ``vectors`` (those the vocabulary was built with), words are
    keyed as :func:`word_key` says, and a word outside the vocabulary that has a
    vector gets an id past the vocabulary: ``len(vocab.words) + j`` for the
    vectors' row ``Encoded.extra[j]`` (the model maps those rows into its table).
    """
    wi, si = vocab.word_index, vocab.suffix_index
    pi, hi = vocab.prefix_index, vocab.shape_index
    unk_w, unk_s = wi[UNK], si[UNK]
    unk_p, unk_h = pi.get(UNK, 0), hi.get(UNK, 0)   # 0: a vocabulary without the feature
    width = 2 * k + 1
    lens = np.fromiter((len(s.tokens) for s in sentences), dtype=np.int64,
                       count=len(sentences))
    n, S = int(lens.sum()), len(sentences)
    # tokens repeat (Zipf): number the distinct ones, look each up once
    uniq = {}
    rows = np.fromiter((uniq.setdefault(tok, len(uniq)) for s in sentences for tok in s.tokens),
                       dtype=np.int64, count=n)

    extra = {}      # vectors' row -> its id past the vocabulary

    vidx = None if vectors is None else vectors.index

    def lookup(tok):
        norm = normalise(tok)
        if vectors is None:
            w = wi.get(norm, unk_w)
        else:
            # word_key, inlined: as written, lower case, else norm (the digits-as-0 form,
            # which is also the key of a word without a vector)
            key = tok if tok in vidx else (tok.lower() if tok.lower() in vidx else norm)
            w = wi.get(key, -1)
            if w < 0:
                r = vectors.index.get(key, -1)
                w = unk_w if r < 0 else extra.setdefault(r, len(wi) + len(extra))
        return (w, si.get(norm[-3:], unk_s), casing(tok), pi.get(norm[:3], unk_p),
                hi.get(shape(tok), unk_h))      # in the order of `looked_up`

    looked_up = ("words", "suffixes", "cases", "prefixes", "shapes")
    F = len(FEATURES)
    table = np.array([lookup(tok) for tok in uniq], dtype=np.int64).reshape(len(uniq), F)
    # the type table's columns in FEATURES' order (keyed by field: a reordered feature
    # table cannot swap features)
    table = table[:, [looked_up.index(f.field) for f in FEATURES]]
    # type 0 and 1: the left and right pads; type 2 + u: distinct token u
    pad_of = {"words": (wi[PAD_L], wi[PAD_R]), "suffixes": (si[PAD_L], si[PAD_R]),
              "cases": (0, 0), "prefixes": (pi.get(PAD_L, 0), pi.get(PAD_R, 0)),
              "shapes": (hi.get(PAD_L, 0), hi.get(PAD_R, 0))}
    pads = [pad_of[f.field] for f in FEATURES]
    type_ids = np.concatenate([np.array(pads, dtype=np.int64).T, table])
    # one padded stream of types: k left pads, the sentence, k right pads, per sentence
    sent = np.repeat(np.arange(S, dtype=np.int64), lens)
    pos = np.arange(n, dtype=np.int64) + k * (2 * sent + 1)
    right = ((np.cumsum(lens) + 2 * k * np.arange(S) + k)[:, None]
             + np.arange(k)[None, :]).reshape(-1)
    stream = np.zeros(n + 2 * k * S, dtype=np.int64)
    stream[right] = 1
    stream[pos] = rows + 2
    types = stream[pos[:, None] + np.arange(-k, k + 1)[None, :]] if n \
        else np.zeros((0, width), np.int64)
    # each feature's id windows: its column of the types' ids
    ids = {f.field: np.ascontiguousarray(type_ids[:, f.column])[types] for f in FEATURES}
    if with_labels:
        try:
            labels = np.asarray([vocab.tag_index[t] for s in sentences for t in s.tags],
                                dtype=np.int64)
        except KeyError as e:
            raise DataError(f"tag {e.args[0]!r} does not occur in the training data; known "
                            f"tags: {vocab.tags}") from None
    else:
        labels = np.zeros(n, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    enc = Encoded(labels=labels, offsets=offsets, types=types, type_ids=type_ids, **ids)
    if vectors is not None:
        enc.extra = np.fromiter(extra, dtype=np.int64, count=len(extra))
    enc.docs = np.repeat(np.fromiter((getattr(s, "doc", 0) for s in sentences),
                                     dtype=np.int64, count=S), lens)
    if ngram_buckets:
        # bag 0 and 1: the pads (empty); bag 2 + u: distinct token u
        bags = [[], []] + [sorted({ngram_bucket(g, ngram_buckets) for g in char_ngrams(tok)})
                           for tok in uniq]
        sizes = np.fromiter(map(len, bags), dtype=np.int64, count=len(bags))
        enc.ngram_ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        enc.ngram_items = np.fromiter((b for bag in bags for b in bag), dtype=np.int64,
                                      count=int(sizes.sum()))
        enc.ngrams = enc.types.copy()       # bag b is type b's
    return enc


# the tokenizer lives in cygrad.ner.tokenize (these names stay importable from here)
from cygrad.ner.tokenize import tokenize, tokenize_spans  # noqa: E402,F401
