"""The window model of CS224N lecture 3 (Collobert et al. 2011's window approach).

For the word at position t, x is the concatenation of the 2k+1 embedding rows
of the words around it, plus small feature embeddings (the word's suffix and
its casing, at every position of the window); then one or more hidden layers
h = f(W x + b), and scores s = U h + c over the tags. Trained with softmax
cross-entropy, the embedding rows of each window are fine-tuned along with the
weights (only the rows in a batch change).

The lecture's "average the window" variant replaces the concatenation by the
mean of the window's rows (position information is lost: it is there to show
that it loses).

The model is described once, here: the tables in order (:meth:`WindowModel.tables`),
the layers (:meth:`WindowModel.layers`) and :func:`window_logits`, which builds the
scores as graph ops. Training compiles that graph (cygrad.compile, in
cygrad.ner.train), :class:`cygrad.ner.WindowTrainer` compiles it for one table,
and inference runs it directly on the kernels (or, for one hidden layer over
concatenated windows, in the one compiled pass of cygrad.ner._scores).

Model files are a directory: ``model.json`` (format, version, vocabulary, tags,
hyperparameters, array shapes, the name and SHA-256 of the arrays file) and
``params-<digest>.npz`` (the arrays; loaded with ``allow_pickle=False``). Each is
written to a temporary name, fsynced and renamed into place; the arrays file
first, under a name of its own, and ``model.json`` last: that one rename is the
commit, so a crash at any point leaves the old model or the new one, whole.
"""

import dataclasses
import hashlib
import io
import json
import os
import zipfile

import numpy as np

import cygrad as cg
from cygrad import kernels as K
from cygrad import serialize as _ser
from cygrad.ner._scores import window_scores, window_scores_typed
from cygrad.ner.data import CASES, Vocab, encode
from cygrad.ner.features import BY_TABLE, FEATURES, active, feature_ids
from cygrad.ner.objectives import (  # noqa: F401  (the constraints: importable from here)
    crf_constraints,
    iob2_constraints,
    objective,
)

FORMAT = "cygrad-ner-window-model"
# embedding table -> the Encoded feature whose ids index it, in concatenation order
# (cygrad.ner.features.FEATURES, the one table of the features)
TABLES = {f.table: f.field for f in FEATURES}
VERSION = 1


class ModelError(ValueError):
    """A model directory that is missing, corrupt, foreign or inconsistent."""


@dataclasses.dataclass
class Config:
    k: int = 2                       # window = 2k + 1 words
    dim: int = 50                    # word embedding size d
    suffix_dim: int = 20             # 0: no suffix feature
    case_dim: int = 5                # 0: no casing feature
    prefix_dim: int = 0              # 0: no prefix feature (first 3 letters)
    shape_dim: int = 0               # 0: no word-shape feature (Xxxx, XX, dd-dd, X.X.)
    ngram_dim: int = 0               # 0: no character n-gram feature (mean of hashed
    ngram_buckets: int = 2 ** 17     # 3-5-gram vectors, fastText-style, in this many rows)
    hidden: tuple = (300,)           # hidden layer sizes
    activation: str = "tanh"
    average: bool = False            # the lecture's "average the window" variant
    dtype: str = "float32"
    decode: str = "viterbi"          # or "greedy": per-token argmax
    loss: str = "softmax"            # "crf": sentence-level log-likelihood with transitions;
                                     # the lecture's binary task: "logistic", "max-margin"
    positive: str = "LOC"            # the binary task: is the centre word of this type?
    doc_context: float = 0.0         # decoding: a token's scores move this far toward the
                                     # mean scores of its word's occurrences in the document
    vectors: str = ""                # pretrained word vectors (cygrad.ner.vectors): a name
    vectors_sha256: str = ""         # or a path, and the digest of the table trained with

    def __post_init__(self):
        for name in ("k", "dim", "suffix_dim", "case_dim", "prefix_dim", "shape_dim",
                     "ngram_dim", "ngram_buckets"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if not isinstance(self.hidden, (tuple, list)) or any(
                isinstance(h, bool) or not isinstance(h, (int, np.integer)) for h in self.hidden):
            raise ValueError(f"hidden must be a list of integers, got {self.hidden!r}")
        if isinstance(self.doc_context, bool) or not isinstance(
                self.doc_context, (int, float, np.integer, np.floating)) \
                or not 0 <= self.doc_context <= 1:
            raise ValueError(f"doc_context must be a number in [0, 1], got {self.doc_context!r}")
        self.doc_context = float(self.doc_context)
        if not isinstance(self.average, bool):
            raise ValueError(f"average must be true or false, got {self.average!r}")
        self.hidden = tuple(int(h) for h in self.hidden)
        sizes = [f.size for f in FEATURES] + ["ngram_dim"]
        if self.k < 0 or self.ngram_buckets < 1 or min(getattr(self, n) for n in sizes) < 0:
            raise ValueError(f"bad model sizes: {self}")
        if self.input_size() == 0:
            raise ValueError(f"the window has no features: {', '.join(sizes[:-1])} and "
                             f"{sizes[-1]} are all 0")
        if self.dim == 0 and self.vectors:
            raise ValueError("pretrained vectors need a word table (dim > 0)")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden layer sizes must be positive, got {self.hidden}")
        if self.activation not in K.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(K.ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.decode not in ("viterbi", "greedy"):
            raise ValueError(f"decode must be 'viterbi' or 'greedy', got {self.decode!r}")
        obj = objective(self.loss)      # (refuses an unknown loss by name)
        if not isinstance(self.vectors, str) or not isinstance(self.vectors_sha256, str):
            raise ValueError("vectors and vectors_sha256 must be strings")
        if self.ngram_dim and obj.corrupts_words:
            raise ValueError(f"the character n-gram feature does not work with the "
                             f"{self.loss} loss (its corrupt windows replace words by "
                             f"vocabulary entries)")

    @property
    def objective(self):
        """The loss's :class:`cygrad.ner.objectives.Objective`."""
        return objective(self.loss)

    @property
    def binary(self):
        return self.objective.binary

    @property
    def width(self):
        return 2 * self.k + 1

    def input_size(self):
        per_slot = sum(getattr(self, f.size) for f in FEATURES) + self.ngram_dim
        return per_slot if self.average else self.width * per_slot


@dataclasses.dataclass
class Tagged:
    """One tagged sentence (WindowModel.tag): (token, tag) pairs, and entities as
    (type, text, start, end)."""

    tokens: list
    entities: list


class WindowModel:
    """Parameters (NumPy arrays) of the window model, its graph and its tagger.

    With pretrained vectors (``config.vectors``; ``vectors``: the
    cygrad.ner.vectors.Vectors they name), the word table E holds the training
    vocabulary (its rows start from the vectors), and a word outside it that has
    a vector is looked up in the vectors' own read-only table, mapped by VM, Vb
    (x -> x VM + Vb, fitted to the trained rows by least squares:
    :meth:`fit_vector_map`): every word with a vector is usable when tagging, and a
    model file holds none of the table."""

    # arrays no optimiser trains (the vectors' map is fitted, not learned)
    FIXED = ("VM", "Vb")

    def __init__(self, config, vocab, params=None, seed=0, vectors=None):
        self.config = config
        self.vocab = vocab
        self.vectors = None
        if config.vectors:
            if vectors is None:
                raise ModelError(f"this model needs the word vectors {config.vectors!r}: pass "
                                 f"vectors=cygrad.ner.vectors.load({config.vectors!r})")
            if config.vectors_sha256 and vectors.sha256 != config.vectors_sha256:
                raise ModelError(
                    f"the word vectors {vectors.source!r} are not the ones this model was "
                    f"trained with (their SHA-256 is {vectors.sha256[:16]}..., the model "
                    f"needs {config.vectors_sha256[:16]}...)")
            if vectors.dim != config.dim:
                raise ModelError(f"the word vectors {vectors.source!r} have {vectors.dim} "
                                 f"values a word; the model's word embeddings have "
                                 f"{config.dim} (--dim)")
            self.vectors = vectors
            # each vocabulary word's row in the vectors' table, -1 where it has none
            self.vector_rows = np.array([vectors.index.get(w, -1) for w in vocab.words],
                                        dtype=np.int64)
        elif vectors is not None:
            raise ModelError("vectors given to a model whose configuration names none "
                             "(config.vectors)")
        if params is None:
            params = self._init_params(np.random.default_rng(seed))
        self.params = params
        self._check_shapes()

    # ------------------------------------------------------------ parameters
    def expected_shapes(self):
        cfg, v = self.config, self.vocab
        # each table's rows: its entries (dim 0: no word table, the lecture's "discrete
        # features" row)
        shapes = {}
        for f in active(cfg):
            entries = getattr(v, f.entries) if f.entries else CASES
            if not entries:     # (older vocabularies list no prefixes or shapes)
                raise ModelError(f"the configuration has a {f.field} feature but the "
                                 f"vocabulary lists no {f.field}")
            shapes[f.table] = (len(entries), getattr(cfg, f.size))
        if cfg.ngram_dim:
            shapes["N"] = (cfg.ngram_buckets, cfg.ngram_dim)
        fan_in = cfg.input_size()
        for i, h in enumerate(cfg.hidden):
            shapes[f"W{i}"] = (h, fan_in)
            shapes[f"b{i}"] = (h,)
            fan_in = h
        n_out = cfg.objective.outputs(len(v.tags))     # binary: one score s = u·h + c
        shapes["U"] = (n_out, fan_in)
        shapes["c"] = (n_out,)
        shapes.update(cfg.objective.shapes(n_out))     # the CRF's transitions
        if cfg.vectors:             # the pretrained table's map into E's space
            shapes["VM"] = (cfg.dim, cfg.dim)
            shapes["Vb"] = (cfg.dim,)
        return shapes

    def _init_params(self, rng):
        dt = np.dtype(self.config.dtype)
        params = {}
        own = self.config.objective.shapes(1)       # the objective's own: zero at the start
        for name, shape in self.expected_shapes().items():
            if name == "VM":
                p = np.eye(shape[0])
            elif name in TABLES or name == "N":
                p = rng.uniform(-0.1, 0.1, shape)
            elif len(shape) == 1 or name in own:    # biases, CRF transitions
                p = np.zeros(shape)
            else:   # Glorot uniform: keeps tanh units out of saturation at the start
                lim = np.sqrt(6.0 / (shape[0] + shape[1]))
                p = rng.uniform(-lim, lim, shape)
            params[name] = np.ascontiguousarray(p, dtype=dt)
        return params

    def _check_shapes(self):
        expected = self.expected_shapes()
        if set(expected) != set(self.params):
            raise ModelError(f"model arrays {sorted(self.params)} do not match the "
                             f"configuration, which needs {sorted(expected)}")
        for name, shape in expected.items():
            p = self.params[name]
            if p.shape != shape or p.dtype != np.dtype(self.config.dtype):
                raise ModelError(f"model array {name} has shape {p.shape} and dtype {p.dtype}; "
                                 f"the configuration needs {shape} {self.config.dtype}")

    def init_from_vectors(self):
        """Copy the pretrained vectors into the rows of E of the words that have one;
        returns how many."""
        has = self.vector_rows >= 0
        E = self.params["E"]
        E[has] = self.vectors.table[self.vector_rows[has]]
        self.params["VM"][...] = np.eye(self.config.dim)
        self.params["Vb"][...] = 0
        return int(has.sum())

    def fit_vector_map(self):
        """VM, Vb by least squares: the pretrained vectors of the vocabulary's words
        (x VM + Vb) against their trained rows of E, so that a word outside the
        vocabulary, looked up in the pretrained table, lands where training moved
        its neighbours. Rows that did not move (frozen vectors) give the identity."""
        rows = np.flatnonzero(self.vector_rows >= 0)
        if len(rows) <= self.config.dim:
            return
        X = self.vectors.table[self.vector_rows[rows]].astype(np.float64)
        Y = self.params["E"][rows].astype(np.float64)
        if np.array_equal(X, Y):
            M, b = np.eye(self.config.dim), np.zeros(self.config.dim)
        else:
            A = np.concatenate([X, np.ones((len(rows), 1))], axis=1)
            sol = np.linalg.lstsq(A, Y, rcond=None)[0]
            M, b = sol[:-1], sol[-1]
        self.params["VM"][...] = M
        self.params["Vb"][...] = b

    def table(self, name, enc=None):
        """Embedding table ``name``; for E and an Encoded ``enc`` with words outside
        the vocabulary that have vectors, E with their mapped vectors appended
        (rows len(E) + j for enc.extra[j])."""
        t = self.params[name]
        if name != "E" or enc is None or enc.extra is None or not len(enc.extra):
            return t
        p = self.params
        # (cygrad's matmul, not NumPy's: OpenBLAS's threads would spin on the cores the
        # scoring pass runs on next)
        rows = np.ascontiguousarray(self.vectors.table[enc.extra], dtype=t.dtype)
        more = K.add_bias(K.matmul(rows, np.ascontiguousarray(p["VM"])), p["Vb"])
        return np.concatenate([t, more])

    def set_pretrained(self, vectors):
        """Copy pretrained word vectors ({word: vector}) into E; returns how many rows."""
        E, n = self.params["E"], 0
        for w, i in self.vocab.word_index.items():
            vec = vectors.get(w)
            if vec is not None:
                if len(vec) != E.shape[1]:
                    raise ValueError(f"pretrained vector for {w!r} has {len(vec)} values; "
                                     f"the model's word embeddings have {E.shape[1]}")
                E[i] = vec
                n += 1
        return n

    # ------------------------------------------------------------ the description
    def tables(self):
        """Names of the embedding tables, in the order their vectors are concatenated."""
        return [f.table for f in active(self.config)]

    def encode(self, sentences, with_labels=True):
        """cygrad.ner.data.encode with this model's window and features."""
        cfg = self.config
        return encode(sentences, self.vocab, cfg.k, with_labels,
                      ngram_buckets=cfg.ngram_buckets if cfg.ngram_dim else 0,
                      vectors=self.vectors)

    def feature_names(self):
        """The Encoded features the model reads, in the order of :meth:`tables`."""
        return [TABLES[k] for k in self.tables()]

    def layers(self):
        """(weight, bias) names of the hidden layers, then of the output layer."""
        return [(f"W{i}", f"b{i}") for i in range(len(self.config.hidden))] + [("U", "c")]

    def logits_graph(self, t, words, suffixes, cases, sparse=True, dropout=(0.0, 0.0),
                     key=None, prefixes=None, shapes=None, ngrams=None):
        """Scores (B, C) as a graph over the parameter tensors ``t`` (name -> Tensor);
        ``dropout`` (on the window input, on the hidden layers) with ``key`` in
        training; ``ngrams`` = (bag windows, ptr, items) for the n-gram feature."""
        ids = self._ids(words, suffixes, cases, prefixes, shapes)
        names = self.tables()
        bags = None
        if self.config.ngram_dim:
            if ngrams is None:
                raise ValueError("this model reads the character n-gram feature: pass "
                                 "ngrams=(windows, ptr, items)")
            bags = (t["N"],) + tuple(ngrams)
        return window_logits([t[k] for k in names], [ids[k] for k in names],
                             [(t[a], t[b]) for a, b in self.layers()],
                             self.config.activation, self.config.average, sparse=sparse,
                             dropout=dropout, key=key, bags=bags)

    def _ids(self, words, suffixes, cases, prefixes, shapes):
        """{table: id windows} of the features the model reads (refused by name when
        one of them is not given)."""
        return feature_ids(self.config, {"words": words, "suffixes": suffixes, "cases": cases,
                                         "prefixes": prefixes, "shapes": shapes})

    # ------------------------------------------------------------ inference
    def features(self, words, suffixes, cases, prefixes=None, shapes=None, ngrams=None,
                 enc=None):
        """The input matrix X (B, input_size) for a batch of windows (``enc``: the
        Encoded they come from, for words past the vocabulary: :meth:`table`)."""
        cfg, p = self.config, self.params
        ids = self._ids(words, suffixes, cases, prefixes, shapes)
        blocks = [K.embedding_gather(self.table(k, enc), ids[k]) for k in self.tables()]
        if cfg.ngram_dim:
            if ngrams is None:
                raise ValueError("this model reads the character n-gram feature: pass "
                                 "ngrams=(windows, ptr, items)")
            blocks.append(K.embedding_bag_windows(p["N"], *ngrams))
        if cfg.average:
            blocks = [b.reshape(b.shape[0], cfg.width, -1).mean(axis=1) for b in blocks]
        return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]

    def scores(self, words, suffixes, cases, prefixes=None, shapes=None, ngrams=None,
               enc=None):
        """Tag scores (B, C) computed directly with the kernels (no graph): one
        compiled pass (gather, hidden layer, scores) for one hidden layer and
        concatenated windows, else kernel by kernel, layer by layer (``enc``: the
        Encoded the windows come from, for words past the vocabulary)."""
        p, cfg = self.params, self.config
        layers = self.layers()
        if len(layers) == 2 and not cfg.average and not cfg.ngram_dim:
            names = self.tables()
            ids = self._ids(words, suffixes, cases, prefixes, shapes)
            (W, b), (U, c) = layers
            return window_scores([self.table(k, enc) for k in names], [ids[k] for k in names],
                                 p[W], p[b], p[U], p[c], activation=cfg.activation)
        f = K.ACTIVATIONS[cfg.activation][0]
        h = self.features(words, suffixes, cases, prefixes, shapes, ngrams, enc)
        for i, (W, b) in enumerate(layers):
            h = K.add_bias(K.matmul(h, p[W], trans_b=True), p[b])
            if i + 1 < len(layers):
                h = f(h, out=h)
        return h

    def _projectable(self, enc):
        """Whether ``enc`` has the token types (and, for an n-gram model, one bag per
        type) that slot projections need; the averaged window has no slots."""
        return not (self.config.average or enc.types is None or enc.type_ids is None
                    or (self.config.ngram_dim and (enc.ngram_ptr is None or len(
                        enc.ngram_ptr) != len(enc.type_ids) + 1)))

    # bytes of slot projections held at once (T x w x H values; CoNLL-2003's training
    # split, 23,625 distinct tokens, needs 142 MB in float32): larger corpora go by parts
    PROJECTION_BUDGET = 2 ** 28

    def type_projections(self, enc, types=None):
        """P (len(types), w*H): for each token type of ``enc`` (Encoded.types; all
        of them by default), its input vector (the tables' rows, and its n-gram
        mean) times the first layer's weights of each window slot, in columns
        j*H:(j+1)*H for slot j. The window's first layer is then b + the sum of its
        tokens' slot rows, so its multiply-adds are done once per distinct token
        instead of once per window. None for the averaged window, or an Encoded
        without types."""
        cfg, p = self.config, self.params
        if not self._projectable(enc):
            return None
        T = len(enc.type_ids)
        types = np.arange(T, dtype=np.int64) if types is None else types
        names = self.tables()
        blocks = [self.table(k, enc)[enc.type_ids[types, BY_TABLE[k].column]] for k in names]
        dims = [p[k].shape[1] for k in names]
        if cfg.ngram_dim:
            blocks.append(K.embedding_bag_windows(p["N"], types[:, None], enc.ngram_ptr,
                                                  enc.ngram_items))
            dims.append(cfg.ngram_dim)
        X = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
        # X's columns in the window's input (window_logits): table by table, slot by slot
        w, starts, off = cfg.width, [], 0
        for d in dims:
            starts.append(off)
            off += w * d
        cols = np.concatenate([np.concatenate([np.arange(s + j * d, s + (j + 1) * d)
                                               for s, d in zip(starts, dims)])
                               for j in range(w)])
        W = p["W0"]
        Wj = np.ascontiguousarray(W[:, cols].reshape(W.shape[0], w, -1).transpose(1, 0, 2)
                                  .reshape(w * W.shape[0], -1))
        return K.matmul(np.ascontiguousarray(X), Wj, trans_b=True)

    def _typed_scores(self, enc):
        """All of ``enc``'s scores (N, C) from :meth:`type_projections`, or None
        where that does not apply (then :meth:`scores` runs window by window).
        A corpus with more distinct tokens than PROJECTION_BUDGET (bytes) allows
        goes in parts of consecutive windows, each with the projections of its own
        types."""
        cfg, p = self.config, self.params
        if len(cfg.hidden) != 1 or not self._projectable(enc):
            return None
        wH = cfg.width * cfg.hidden[0]
        budget = self.PROJECTION_BUDGET // p["c"].dtype.itemsize     # in values
        if len(enc.type_ids) * wH <= budget:
            return window_scores_typed(self.type_projections(enc), enc.types, p["b0"], p["U"],
                                       p["c"], activation=cfg.activation)
        n = len(enc)
        out = np.empty((n, p["c"].shape[0]), dtype=p["c"].dtype)
        # R consecutive windows name at most R + 2k + 2 types: their own centre
        # tokens, k more on each side, and the two pads
        rows = max(1, budget // wH - 2 * cfg.k - 2)
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            types, local = np.unique(enc.types[lo:hi], return_inverse=True)
            P = self.type_projections(enc, types)
            window_scores_typed(P, local.reshape(hi - lo, cfg.width), p["b0"], p["U"], p["c"],
                                activation=cfg.activation, out=out[lo:hi])
        return out

    def _share_in_documents(self, scores, enc):
        """In place: each token's scores become (1 - a) of its own plus a of the
        mean over the occurrences of the same token (the exact string: "Jordan"
        and "jordan" are two) in its document,
        a = config.doc_context: a name's clear mentions inform its unclear ones.
        Nothing for a = 0 or an Encoded without token types and documents."""
        a = self.config.doc_context
        if not a or enc.types is None or enc.type_ids is None or enc.docs is None \
                or not len(scores):
            return
        k = self.config.k
        T = len(enc.type_ids)
        _, group, counts = np.unique(enc.docs * T + enc.types[:, k], return_inverse=True,
                                     return_counts=True)
        group = group.reshape(-1)
        mean = np.stack([np.bincount(group, weights=scores[:, c], minlength=len(counts))
                         for c in range(scores.shape[1])], axis=1) / counts[:, None]
        scores *= 1.0 - a
        scores += a * mean[group]

    def tags(self, ids, offsets):
        """Tag strings per sentence for predicted ids. In the binary task, positive
        tokens become B-/I-<positive> entities (a run of positives is one entity)."""
        if not self.config.binary:
            names = np.array(self.vocab.tags, dtype=object)[np.asarray(ids, dtype=np.intp)]\
                .tolist()
            off = np.asarray(offsets).tolist()
            return [names[a:b] for a, b in zip(off[:-1], off[1:])]
        typ, out = self.config.positive, []
        for a, b in zip(offsets[:-1], offsets[1:]):
            sent, prev = [], 0
            for i in ids[a:b]:
                sent.append("O" if not i else ("I-" if prev else "B-") + typ)
                prev = i
            out.append(sent)
        return out

    def predict(self, enc, batch_size=4096, decode=None):
        """Tag ids (N,) for an encoded corpus (binary task: 1 = positive, 0 = not).

        ``decode="greedy"`` takes each token's best tag; ``"viterbi"`` (the
        default) the best tag sequence of each sentence in which every I-X
        follows B-X or I-X, scoring a sequence by the sum of its tokens'
        log-probabilities, or, for a CRF model, by its scores and learned
        transitions (cygrad.kernels.crf_viterbi).
        """
        logp = self.token_scores(enc, batch_size)
        self._share_in_documents(logp, enc)
        return self.decode(logp, enc, decode)

    def token_scores(self, enc, batch_size=4096):
        """Each token's tag scores (N, C) in float64, before the sharing within
        documents (:meth:`predict` = token_scores, the sharing, :meth:`decode`)."""
        n = len(enc)
        typed = self._typed_scores(enc) if n else None
        if typed is not None:
            return typed.astype(np.float64)
        logp = np.empty((n, self.params["c"].shape[0]), dtype=np.float64)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            bags = None if enc.ngrams is None else (enc.ngrams[lo:hi], enc.ngram_ptr,
                                                    enc.ngram_items)
            if self.config.ngram_dim and bags is None:
                raise ValueError("this model reads character n-grams: encode with "
                                 "model.encode(sentences)")
            logp[lo:hi] = self.scores(enc.words[lo:hi], enc.suffixes[lo:hi],
                                      enc.cases[lo:hi], _rows(enc.prefixes, lo, hi),
                                      _rows(enc.shapes, lo, hi), bags, enc)
        return logp

    def decode(self, logp, enc, decode=None):
        """Tag ids from scores (N, C) (changed in place) and ``enc``'s sentences."""
        return self.config.objective.decode(self, logp, enc, decode or self.config.decode)

    def tag(self, text):
        """Tag raw text (a str: split into sentences and tokens by
        cygrad.ner.data.tokenize) or pre-tokenised sentences (a list of lists of
        str). Returns one :class:`Tagged` per sentence: its (token, tag) pairs and
        its entities as (type, text, start, end), start and end character offsets
        into ``text`` for raw text (token indices, end exclusive, for tokens).
        The sentences of one call are one document: with ``config.doc_context``,
        a token's scores are shared with the other occurrences of the same token
        in the call (tag unrelated texts in separate calls)."""
        from cygrad.ner.data import Sentence, tokenize_spans
        from cygrad.ner.evaluate import chunks
        if isinstance(text, str):
            spans = tokenize_spans(text)
            sents = [[t for t, _, _ in s] for s in spans]
        elif isinstance(text, (list, tuple)) and all(
                isinstance(s, (list, tuple)) and all(isinstance(t, str) for t in s)
                for s in text):
            spans, sents = None, [list(s) for s in text]
        else:
            raise TypeError("tag: text must be a str or a list of token lists")
        enc = self.encode([Sentence(s, ["O"] * len(s)) for s in sents], with_labels=False)
        out = []
        for i, (toks, tags) in enumerate(zip(sents, self.tags(self.predict(enc),
                                                              enc.offsets))):
            ents = []
            for typ, a, b in chunks(tags):
                if spans is None:
                    ents.append((typ, " ".join(toks[a:b]), a, b))
                else:
                    s0, s1 = spans[i][a][1], spans[i][b - 1][2]
                    ents.append((typ, text[s0:s1], s0, s1))
            out.append(Tagged(list(zip(toks, tags)), ents))
        return out

    # ------------------------------------------------------------ files
    def save(self, directory, extra=None):
        """Write the model into ``directory`` as one unit: the arrays under a new
        name, then ``model.json`` naming them (the commit), then the old arrays
        file goes."""
        os.makedirs(directory, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **self.params)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        name = f"params-{digest[:16]}.npz"
        _atomic_write(os.path.join(directory, name), lambda f: f.write(data))
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "cygrad_version": cg.__version__,
            "config": dataclasses.asdict(self.config),
            "vocab": self.vocab.to_json(),
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                       for k, v in self.params.items()},
            "params_file": name,
            "params_sha256": digest,
        }
        if extra:
            meta["extra"] = extra
        _atomic_write(os.path.join(directory, "model.json"),
                      lambda f: f.write(json.dumps(meta, indent=1).encode()))
        for old in os.listdir(directory):
            if old.startswith("params") and old.endswith(".npz") and old != name:
                _remove(os.path.join(directory, old))

    @classmethod
    def load(cls, directory):
        """Load a model directory; :class:`ModelError` says what is wrong if it cannot."""
        meta_path = os.path.join(directory, "model.json")
        if not os.path.isdir(directory):
            raise ModelError(f"{directory}: no such model directory")
        if not os.path.isfile(meta_path):
            raise ModelError(f"{directory}: not a cygrad model (missing model.json)")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ModelError(f"{meta_path}: corrupt model metadata ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelError(f"{meta_path}: not a cygrad NER model (format "
                             f"{meta.get('format') if isinstance(meta, dict) else None!r})")
        if meta.get("version") != VERSION:
            raise ModelError(f"{meta_path}: model format version {meta.get('version')!r}; "
                             f"this cygrad reads version {VERSION}")
        name = meta.get("params_file", "params.npz")     # older models: a fixed name
        if not isinstance(name, str) or os.path.basename(name) != name:
            raise ModelError(f"{meta_path}: bad params_file {name!r}")
        npz_path = os.path.join(directory, name)
        if not os.path.isfile(npz_path):
            raise ModelError(f"{directory}: not a cygrad model (missing {name})")
        with open(npz_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != meta.get("params_sha256"):
            raise ModelError(f"{npz_path}: checksum mismatch: the arrays file is corrupt or "
                             f"does not belong to this model.json")
        try:
            with np.load(npz_path, allow_pickle=False) as z:
                params = {k: np.ascontiguousarray(z[k]) for k in z.files}
            config = Config(**meta["config"])
            vocab = Vocab.from_json(meta["vocab"])
        except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ModelError(f"{directory}: cannot read the model ({type(e).__name__}: {e})") \
                from None
        for k, a in params.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise ModelError(f"{npz_path}: array {k} holds NaN or infinity (a diverged "
                                 f"training run?); refusing to tag with it")
        vectors = None
        if config.vectors:
            from cygrad.ner import vectors as _vec
            try:
                vectors = _vec.load(config.vectors)
            except _vec.VectorsError as e:
                raise ModelError(f"{directory}: this model needs the word vectors "
                                 f"{config.vectors!r}: {e}") from None
        model = cls(config, vocab, params=params, vectors=vectors)
        model.meta = meta
        return model


def _rows(a, lo, hi):
    return None if a is None else a[lo:hi]


def window_logits(tables, ids, layers, activation="tanh", average=False, sparse=True,
                  dropout=(0.0, 0.0), key=None, bags=None):
    """The window model as graph ops: the one description that training (compiled
    or eager), cygrad.ner.WindowTrainer and the tests build on.

    Parameters
    ----------
    tables : list of Tensor (V_k, d_k)
        Embedding tables, concatenated in this order.
    ids : list of integer arrays (B, w), one per table
    layers : list of (W, b) Tensor pairs
        The hidden layers, h = f(h Wᵀ + b), then the output layer (no activation).
    activation : str
        A name of cygrad.ACTIVATIONS.
    average : bool
        Average each table's w vectors instead of concatenating them (the lecture's
        variant that loses word order).
    sparse : bool
        Row-sparse gradients for tables of over 64 rows (the eager graph then
        touches only the batch's rows; compiled steps always do).
    dropout : (float, float)
        Dropout probabilities of the window input and of every hidden layer's
        output (training only; 0 leaves the op out).
    key : int or integer array
        Dropout's key (cg.dropout): stream 0 for the input, i + 1 for hidden
        layer i.
    bags : (Tensor, windows, ptr, items), optional
        An embedding-bag feature (cg.embedding_bag_windows), after the tables.

    Returns
    -------
    Tensor (B, C)
    """
    xs = []
    for table, idx in zip(tables, ids):
        x = cg.embedding_windows(table, idx, sparse=sparse and table.shape[0] > 64)
        if average:
            x = x.reshape(idx.shape[0], idx.shape[1], table.shape[1]).mean(axis=1)
        xs.append(x)
    if bags is not None:
        table, win, ptr, items = bags
        x = cg.embedding_bag_windows(table, win, ptr, items)
        if average:
            x = x.reshape(win.shape[0], win.shape[1], table.shape[1]).mean(axis=1)
        xs.append(x)
    h = cg.concat(xs, axis=1) if len(xs) > 1 else xs[0]
    p_in, p_hidden = dropout
    if p_in:
        h = cg.dropout(h, p_in, key, stream=0)
    f = cg.ACTIVATIONS[activation]
    for i, (W, b) in enumerate(layers):
        h = cg.linear(h, W, b)
        if i + 1 < len(layers):
            h = f(h)
            if p_hidden:
                h = cg.dropout(h, p_hidden, key, stream=i + 1)
    return h


# the files are written by the core's atomic writer (cygrad.serialize), as cygrad.save's are
_fsync_dir = _ser.fsync_dir
_write_point = _ser.write_point
_remove = _ser.remove
_atomic_write = _ser.atomic_write
