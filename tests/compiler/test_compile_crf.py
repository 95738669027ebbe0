"""The CRF loss compiled (issue 28): crf_nll's forward-backward as plan tasks (the
sentences in parallel, the transitions' counts summed in sentence order, then the
transition parameter's update), with sentence batches of any size served by one
plan (dynamic rows); against the eager graph for every optimiser and dtype, bitwise
where the eager graph's arithmetic is the plan's (Adagrad), and the per-call checks
(lengths, gold paths against the allowed transitions) before anything is updated."""

import numpy as np
import pytest

import cygrad as cg
from cygrad import optim

V, d, w, H, C = 30, 4, 3, 12, 5
ALLOWED = np.ones((C + 1, C + 1), bool)
ALLOWED[C, 2] = ALLOWED[0, 2] = False       # tag 2 never first, never after tag 0


def _model(dt, seed=0):
    rng = np.random.default_rng(seed)
    u = lambda *s: cg.tensor(rng.uniform(-0.5, 0.5, s).astype(dt), requires_grad=True)  # noqa
    return [u(V, d), u(H, w * d), cg.tensor(np.zeros(H, dt), requires_grad=True), u(C, H),
            cg.tensor(np.zeros(C, dt), requires_grad=True), u(C + 1, C + 1)]


def _loss_fn(ps, allowed=ALLOWED, reduction="token_mean"):
    E, W, b, U, c, A = ps

    def loss_fn(win, tags, lengths):
        h = cg.tanh(cg.linear(cg.embedding_windows(E, win, sparse=True), W, b))
        return cg.crf_nll(cg.linear(h, U, c), lengths, tags, A, allowed, reduction=reduction)
    return loss_fn


def _batch(rng, S, maxlen=7):
    lens = rng.integers(1, maxlen, S)
    N = int(lens.sum())
    starts = set(np.concatenate([[0], np.cumsum(lens)[:-1]]).tolist())
    tags = rng.integers(0, C, N)
    for i in range(N):          # gold paths the mask allows
        while tags[i] == 2 and (i in starts or tags[i - 1] == 0):
            tags[i] = rng.integers(0, C)
    return rng.integers(0, V, (N, w)), tags, lens


OPTS = {"sgd": lambda p: optim.SGD(p, lr=0.1), "adagrad": lambda p: optim.Adagrad(p, lr=0.1),
        "adam": lambda p: optim.Adam(p, lr=0.01)}


@pytest.mark.parametrize("reduction", ["token_mean", "sum", "mean"])
@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("opt_name", sorted(OPTS))
def test_compiled_crf_equals_the_eager_graph(opt_name, dt, reduction, nthreads):
    ps1, ps2 = _model(dt), _model(dt)
    o1, o2 = OPTS[opt_name](ps1), OPTS[opt_name](ps2)
    step = cg.compile(_loss_fn(ps1, reduction=reduction), o1, strict=True, dynamic_rows=True)
    f2 = _loss_fn(ps2, reduction=reduction)
    rng = np.random.default_rng(1)
    exact = opt_name == "adagrad" and reduction == "token_mean"
    tol = 1e-9 if dt == np.float64 else 2e-4
    for k, S in enumerate([6, 6, 3, 1, 6, 9, 2, 9, 40, 5]):
        bt = _batch(rng, S, maxlen=60 if S == 40 else 7)
        loss = step(*bt)
        o2.zero_grad()
        ref = f2(*bt)
        ref.backward()
        o2.step()
        assert loss == pytest.approx(ref.item(), rel=tol, abs=tol)
        for i, (a, b) in enumerate(zip(ps1, ps2)):
            if exact:
                np.testing.assert_array_equal(a.data, b.data, err_msg=f"param {i} step {k}")
            else:
                np.testing.assert_allclose(a.data, b.data, rtol=tol, atol=tol * 0.01,
                                           err_msg=f"param {i} step {k}")
    assert step.plans == 1 and step.plans_built <= 4 and step.fallbacks() == []


def test_the_sentences_are_checked_at_every_call_before_any_update():
    ps = _model(np.float64)
    step = cg.compile(_loss_fn(ps), optim.Adagrad(ps, lr=0.1), strict=True, dynamic_rows=True)
    rng = np.random.default_rng(2)
    win, tags, lens = _batch(rng, 8)
    step(win, tags, lens)
    step(win, tags, lens)
    before = [p.data.copy() for p in ps]
    bad = lens.copy()
    bad[2] = 0
    bad[3] += lens[2]
    with pytest.raises(ValueError, match=r"lengths\[2\] = 0"):
        step(win, tags, bad)
    with pytest.raises(ValueError, match="lengths sum to"):
        step(win[:-1], tags[:-1], lens)
    forbidden = tags.copy()
    forbidden[0] = 2            # a sentence may not start with tag 2
    with pytest.raises(ValueError, match="sentence 0 use a transition that allowed forbids"):
        step(win, forbidden, lens)
    with pytest.raises(IndexError, match="tags"):
        step(win, np.full_like(tags, C), lens)
    for p, b in zip(ps, before):
        np.testing.assert_array_equal(p.data, b)


def test_the_ner_trainer_trains_its_crf_model_compiled_bit_for_bit_as_eagerly():
    from cygrad.ner import corpus
    from cygrad.ner.data import Vocab, encode, read_conll
    from cygrad.ner.model import Config, WindowModel
    from cygrad.ner.train import TrainConfig, Trainer
    tr = read_conll(corpus.path("train"))[:200]
    vocab = Vocab.build(tr, min_count=1)
    mcfg = Config(hidden=(24,), dim=8, loss="crf", prefix_dim=4, shape_dim=3)
    enc = encode(tr, vocab, mcfg.k)
    runs = {}
    for comp in (True, False):
        m = WindowModel(mcfg, vocab, seed=3)
        t = Trainer(m, TrainConfig(compile=comp, dropout=0.5, word_dropout=1.0))
        t.set_data(enc)
        rng = np.random.default_rng(0)
        for batch, lens, _ in t.batches(enc, np.random.default_rng(5)):
            t.step(enc.words[batch], enc.suffixes[batch], enc.cases[batch],
                   enc.labels[batch], rng, enc.prefixes[batch], enc.shapes[batch],
                   lengths=lens)
        runs[comp] = (m.params, t)
    assert runs[True][1]._step.fallbacks() == [] and runs[True][1]._step.plans >= 1
    for k in runs[True][0]:
        np.testing.assert_array_equal(runs[True][0][k], runs[False][0][k], err_msg=k)


@pytest.mark.parametrize("how", ["int32", "big_endian", "strided", "uint16"])
def test_index_arguments_in_any_dtype_and_layout(how):
    """Windows, tags and lengths as int32, byte-swapped, strided or unsigned arrays:
    read as the eager graph reads them."""
    def odd(a):
        if how == "int32":
            return a.astype(np.int32)
        if how == "big_endian":
            return a.astype(">i8")
        if how == "uint16":
            return a.astype(np.uint16)
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype) if a.ndim > 1 \
            else np.zeros(2 * a.shape[0], a.dtype)
        view = wide[..., ::2]
        view[...] = a
        return view
    ps1, ps2 = _model(np.float64), _model(np.float64)
    o1, o2 = optim.Adagrad(ps1, lr=0.1), optim.Adagrad(ps2, lr=0.1)
    step = cg.compile(_loss_fn(ps1), o1, strict=True, dynamic_rows=True)
    f2 = _loss_fn(ps2)
    rng = np.random.default_rng(3)
    for S in (5, 5, 3, 7):
        win, tags, lens = _batch(rng, S)
        step(odd(win), odd(tags), odd(lens))
        o2.zero_grad()
        f2(win, tags, lens).backward()
        o2.step()
        for a, b in zip(ps1, ps2):
            np.testing.assert_array_equal(a.data, b.data)


def test_stage_timing_counts_every_run_and_changes_nothing(nthreads):
    """cygrad.compiler._plan.set_timing (benches/profile_step.py): each stage's wall
    time and each task's thread time over the runs since the last read; the step's
    results bitwise those of a step run without timing."""
    from cygrad.compiler import _plan
    rng = np.random.default_rng(3)
    batches = [_batch(rng, S) for S in (6, 4, 6, 2)]
    out = []
    for timing in (False, True):
        ps = _model(np.float32)
        step = cg.compile(_loss_fn(ps), optim.Adagrad(ps, lr=0.1), strict=True,
                          dynamic_rows=True)
        _plan.set_timing(timing)
        try:
            for bt in batches:
                step(*bt)
        finally:
            _plan.set_timing(False)
        bp = [p for p in step._plans.values() if hasattr(p, "plan")][0]
        stages, tasks, runs = bp.plan.stage_times()
        assert len(stages) == bp.nstages and len(tasks) == bp.ntasks == len(bp.task_labels)
        if timing:
            # (the first call of a shape traces the eager graph)
            assert 1 <= runs < len(batches) and (stages > 0).all() and (tasks >= 0).all()
            assert tasks.sum() > 0
            assert bp.plan.stage_times()[2] == 0        # read and reset
        else:
            assert runs == 0 and not stages.any() and not tasks.any()
        out.append([p.data.copy() for p in ps])
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
