"""An embedding table's SGD, Adagrad or Adam update in a compiled step: its slots
grouped by row in one chunk beside the last backward stage, then the rows stepped in
chunks of the sorted slots (each row whole, on one thread). Checked against the eager
graph over several steps with Zipf-distributed ids (rows that span many slots, so
chunk edges fall inside rows), rows wider and narrower than a vector, a table used
by one and by two windows (row-sparse and dense gradients), and bitwise the same at
1-4 threads; SGD's also bit for bit as the ownership classes update (the path of a
table used more than MAX_SEGMENTS times)."""

import contextlib

import numpy as np
import pytest

import cygrad as cg
from cygrad import nn, optim
from cygrad.compiler import builder
from helpers import assert_eager_and_thread_counts, train_steps

V, w, C = 40, 3, 4

OPTS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=0.1),
    "adam": lambda ps: optim.Adam(ps, lr=0.01),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
}


def _tol(dt):
    return dict(rtol=1e-9, atol=1e-11) if dt == np.float64 else dict(rtol=2e-4, atol=2e-6)


def _model(d, dt, sparse, twice):
    rng = np.random.default_rng(0)
    emb = nn.Embedding(V, d, sparse=sparse, dtype=dt, generator=rng)
    lin = nn.Linear((2 if twice else 1) * w * d, C, dtype=dt, generator=rng)
    params = emb.parameters() + lin.parameters()

    def loss_fn(win, win2, y):
        B = win.shape[0]
        x = emb(win).reshape(B, w * d)
        if twice:
            x = cg.concat([x, emb(win2).reshape(B, w * d)], axis=1)
        return cg.softmax_cross_entropy(lin(cg.tanh(x)), y)
    return params, loss_fn


def _batches(sizes):
    rng = np.random.default_rng(7)
    out = []
    for B in sizes:
        ids = lambda: np.minimum(rng.zipf(1.3, (B, w)) - 1, V - 1)     # noqa: E731
        out.append((ids(), ids(), rng.integers(0, C, B)))
    return out


def _train(d, dt, sparse, twice, opt_name, compiled, threads=1, sizes=(64, 64, 200, 9, 1)):
    params, loss_fn = _model(d, dt, sparse, twice)
    return train_steps(params, loss_fn, OPTS[opt_name](params), _batches(sizes), compiled, threads)


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("opt_name", sorted(OPTS))
@pytest.mark.parametrize("d", [5, 37])
def test_embedding_rows_stepped_in_chunks_train_as_the_eager_graph(
        d, opt_name, sparse, twice, dt, threaded_plans):
    le, pe, _ = _train(d, dt, sparse, twice, opt_name, False)
    runs = [_train(d, dt, sparse, twice, opt_name, True, threads=nt) for nt in (1, 2, 3, 4)]
    lc, pc, step = runs[0]
    text = step.describe(*_batches([64])[0]).splitlines()
    if sparse or opt_name in ("sgd", "adagrad"):    # (Adam on a dense gradient: every row)
        group = next(i for i, line in enumerate(text) if "emb_group" in line)
        assert "rows[64/8] emb_" + opt_name.rstrip("w") in text[group + 1], text
    assert_eager_and_thread_counts((le, pe, None), runs, (1, 2, 3, 4), _tol(dt))


def test_every_table_is_grouped_before_any_is_stepped():
    """Several tables: every grouping in one stage, every table's rows in the next
    (one stage of row updates, not one per table)."""
    rng = np.random.default_rng(0)
    embs = [nn.Embedding(V, 4, generator=rng) for _ in range(3)]
    lin = nn.Linear(3 * w * 4, C, generator=rng)
    params = sum((e.parameters() for e in embs), []) + lin.parameters()

    def loss_fn(a, b, c, y):
        B = a.shape[0]
        x = cg.concat([e(i).reshape(B, w * 4) for e, i in zip(embs, (a, b, c))], axis=1)
        return cg.softmax_cross_entropy(lin(x), y)

    step = cg.compile(loss_fn, optimizer=optim.Adagrad(params, lr=0.1), strict=True)
    ids = np.zeros((32, w), np.int64)
    y = np.zeros(32, np.int64)
    step(ids, ids, ids, y)
    text = step.describe(ids, ids, ids, y).splitlines()
    groups = [i for i, line in enumerate(text) if "emb_group" in line]
    updates = [i for i, line in enumerate(text) if "emb_adagrad" in line]
    assert len(groups) == 1 and text[groups[0]].count("emb_group") == 3, text
    assert updates == [groups[0] + 1] and text[updates[0]].count("emb_adagrad") == 3, text


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_sgd_by_slots_is_bit_for_bit_the_ownership_classes_update(sparse, dt, threaded_plans,
                                                                  monkeypatch):
    by_slots = _train(37, dt, sparse, True, "sgd", True, threads=2)
    monkeypatch.setattr(builder, "MAX_SEGMENTS", 0)      # every table: ownership classes
    by_owner = _train(37, dt, sparse, True, "sgd", True, threads=2)
    assert "own[8/1] emb_sgd_own" in by_owner[2].describe(*_batches([64])[0])
    assert by_slots[0] == by_owner[0]
    for i, (a, b) in enumerate(zip(by_slots[1], by_owner[1])):
        np.testing.assert_array_equal(a, b, err_msg=f"parameter {i}")


def test_a_table_used_more_than_max_segments_times_with_sgd(threaded_plans):
    """Past MAX_SEGMENTS uses, SGD falls back to the ownership classes (Adagrad and
    Adam refuse: the slot grouping holds at most MAX_SEGMENTS uses)."""
    n = builder.MAX_SEGMENTS + 1
    for opt_name in ("sgd", "adagrad"):
        runs = []
        for compiled in (False, True):
            rng = np.random.default_rng(0)
            emb = nn.Embedding(V, 4, generator=rng)
            lin = nn.Linear(n * w * 4, C, generator=rng)
            params = emb.parameters() + lin.parameters()
            opt = OPTS[opt_name](params)

            def loss_fn(*a):
                B = a[0].shape[0]
                x = cg.concat([emb(win).reshape(B, w * 4) for win in a[:n]], axis=1)
                return cg.softmax_cross_entropy(lin(x), a[n])

            rng = np.random.default_rng(1)
            batches = [tuple(rng.integers(0, V, (16, w)) for _ in range(n)) +
                       (rng.integers(0, C, 16),) for _ in range(3)]
            if compiled:
                step = cg.compile(loss_fn, optimizer=opt, strict=opt_name == "sgd")
                with pytest.warns(cg.CompileWarning, match="more than") if \
                        opt_name != "sgd" else contextlib.nullcontext():
                    for bt in batches:
                        step(*bt)
                if opt_name == "sgd":
                    assert "own[8/1] emb_sgd_own" in step.describe(*batches[0])
            else:
                for bt in batches:
                    opt.zero_grad()
                    loss_fn(*bt).backward()
                    opt.step()
            runs.append([p.data.copy() for p in params])
        for a, b in zip(*runs):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
