"""Embedding bags and the tagger's character n-gram feature (issue 14): the bag
kernel against the NumPy reference and central differences, the n-gram bags
of encode(), and a model that reads them."""

import zlib

import numpy as np
import pytest

import cygrad as cg
from cygrad import kernels as K
from cygrad import reference as R
from cygrad.ner import corpus
from cygrad.ner.data import Sentence, Vocab, char_ngrams, ngram_bucket, read_conll
from cygrad.ner.model import Config, WindowModel
from cygrad.ner.train import TrainConfig, score, train


def _bags(seed, V=40, d=6, nbags=7, B=9, w=3, dtype=np.float64):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 5, nbags)
    sizes[0] = 0                                      # an empty bag
    ptr = np.r_[0, np.cumsum(sizes)]
    items = rng.integers(0, V, ptr[-1])
    items[:2] = 3 if len(items) > 1 else items[:2]    # a row used twice
    table = rng.standard_normal((V, d)).astype(dtype)
    win = rng.integers(0, nbags, (B, w))
    return table, win, ptr, items


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_equals_reference(seed, dtype):
    table, win, ptr, items = _bags(seed, dtype=dtype)
    got = K.embedding_bag_windows(table, win, ptr, items)
    want = R.embedding_bag_windows(table, win, ptr, items)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-15)
    g = np.random.default_rng(seed).standard_normal(got.shape).astype(dtype)
    rows, vals = K.embedding_bag_backward(g, win, ptr, items)
    rr, rv = R.embedding_bag_backward(g, win, ptr, items)
    np.testing.assert_array_equal(rows, rr)
    np.testing.assert_allclose(vals, rv, rtol=1e-6)


def test_gradcheck_and_same_bits_for_any_thread_count():
    table, win, ptr, items = _bags(7)
    assert cg.gradcheck(lambda t: cg.tanh(cg.embedding_bag_windows(t, win, ptr, items)),
                        [cg.tensor(table, requires_grad=True)])
    table, win, ptr, items = _bags(8, V=500, d=50, nbags=300, B=3000, w=5)
    outs = []
    for nt in (1, 2):
        with cg.threads(nt):
            outs.append(K.embedding_bag_windows(table, win, ptr, items))
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("change, err, what", [
    (dict(ptr=np.array([0, 2, 1, 3])), ValueError, "ptr must rise from 0 to 3"),
    (dict(ptr=np.array([1, 2, 3, 3])), ValueError, "ptr must rise"),
    (dict(items=np.array([0, 1, 9])), IndexError, r"items\[2\] = 9 is out of range \[0, 5\)"),
    (dict(win=np.array([[0, 3]])), IndexError, r"windows\[0, 1\] = 3 is out of range"),
    (dict(win=np.array([0, 1])), ValueError, "windows must be 2-D"),
    (dict(table=np.zeros((5, 2), np.int64)), TypeError, "table"),
])
def test_bad_input_is_named(change, err, what):
    kw = dict(table=np.zeros((5, 2)), win=np.array([[0, 1]]), ptr=np.array([0, 1, 2, 3]),
              items=np.array([0, 1, 4]))
    kw.update(change)
    with pytest.raises(err, match=what):
        K.embedding_bag_windows(kw["table"], kw["win"], kw["ptr"], kw["items"])


def test_char_ngrams_and_buckets():
    assert char_ngrams("EU") == ["<eu", "eu>", "<eu>"]
    assert char_ngrams("Rome")[:3] == ["<ro", "rom", "ome"]
    assert len(char_ngrams("Rome")) == 4 + 3 + 2          # 3-, 4- and 5-grams of <rome>
    assert ngram_bucket("<eu", 1000) == zlib.crc32(b"<eu") % 1000 == ngram_bucket("<eu", 1000)


def test_encoded_bags():
    sents = [Sentence(["Rome", "EU", "Rome"], ["B-LOC", "B-ORG", "B-LOC"])]
    v = Vocab.build(sents, min_count=1)
    from cygrad.ner.data import encode
    enc = encode(sents, v, k=1, ngram_buckets=97)
    ptr, items = enc.ngram_ptr, enc.ngram_items
    bag = lambda b: list(items[ptr[b]:ptr[b + 1]])    # noqa: E731
    assert bag(0) == [] and bag(1) == []                # the pads
    centre = enc.ngrams[:, 1]
    assert centre[0] == centre[2]                       # one bag per distinct token
    assert bag(centre[1]) == sorted({ngram_bucket(g, 97) for g in char_ngrams("EU")})
    assert enc.ngrams[0, 0] == 0 and enc.ngrams[2, 2] == 1
    assert encode(sents, v, k=1).ngrams is None


def test_a_model_with_ngrams_trains_and_tags(tmp_path):
    tr, te = read_conll(corpus.path("train")), read_conll(corpus.path("test"))
    cfg = Config(hidden=(64,), dim=20, ngram_dim=8, ngram_buckets=4096)
    m, _ = train(tr, te, str(tmp_path / "m"), cfg, TrainConfig(epochs=3, patience=9),
                 log=lambda *a: None, progress=False)
    assert m.params["N"].shape == (4096, 8)
    assert score(m, te).f1 > 0.9
    m2 = WindowModel.load(tmp_path / "m")
    enc = m2.encode(te)
    np.testing.assert_array_equal(m2.predict(enc), m.predict(m.encode(te)))
    # the training graph equals direct inference
    t = {k: cg.tensor(a) for k, a in m.params.items()}
    g = m.logits_graph(t, enc.words, enc.suffixes, enc.cases,
                       ngrams=(enc.ngrams, enc.ngram_ptr, enc.ngram_items)).data
    s = m.scores(enc.words, enc.suffixes, enc.cases,
                 ngrams=(enc.ngrams, enc.ngram_ptr, enc.ngram_items))
    np.testing.assert_allclose(g, s, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="character n-gram"):
        m.scores(enc.words, enc.suffixes, enc.cases)
    from cygrad.ner.data import encode
    with pytest.raises(ValueError, match="model.encode"):
        m.predict(encode(te, m.vocab, m.config.k))
    with pytest.raises(ValueError, match="max-margin"):
        Config(ngram_dim=4, loss="max-margin")


@pytest.mark.parametrize("loss", ["crf", "softmax"])
def test_the_ngram_model_trains_compiled_as_on_the_eager_graph(tmp_path, loss):
    """The n-gram bags have plan tasks: `cygrad train --ngram-dim` trains compiled, and
    with Adagrad gives the eager graph's parameters bit for bit (CRF and softmax)."""
    tr = read_conll(corpus.path("train"))[:300]
    cfg = Config(hidden=(32,), dim=12, ngram_dim=6, ngram_buckets=2048, loss=loss)
    got = []
    for compiled in (True, False):
        m, _ = train(tr, None, str(tmp_path / f"m{compiled}"), cfg,
                     TrainConfig(epochs=2, compile=compiled, seed=5),
                     log=lambda *a: None, progress=False)
        got.append(m.params)
    for k in got[0]:
        np.testing.assert_array_equal(got[0][k], got[1][k], err_msg=k)


def test_new_bags_after_compiling_are_not_ignored():
    """A compiled step holds the n-gram bags it traced with as constants: a trainer
    handed other training data's bags makes a new step (the steps then equal eager)."""
    from cygrad.ner.train import Trainer
    tr = read_conll(corpus.path("train"))
    cfg = Config(hidden=(16,), dim=8, ngram_dim=4, ngram_buckets=512, loss="softmax")
    runs = []
    for compiled in (True, False):
        m = WindowModel(cfg, Vocab.build(tr), seed=0)
        t = Trainer(m, TrainConfig(compile=compiled, seed=1))
        for part in (tr[:40], tr[40:90]):
            enc = m.encode(part)
            t.set_data(enc)
            idx = np.arange(min(64, len(enc.words)))
            t.step(enc.words[idx], enc.suffixes[idx], enc.cases[idx], enc.labels[idx],
                   np.random.default_rng(2), prefixes=enc.prefixes[idx],
                   shapes=enc.shapes[idx], ngrams=enc.ngrams[idx])
        runs.append(m.params)
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
