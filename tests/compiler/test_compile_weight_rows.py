"""A linear layer on the data (its input needs no gradient) with a trained weight of
at least WGRAD_ROWS rows: the plan splits its weight gradient and update by the
rows of W, and its forward by the same rows (the output's columns), so that each
thread keeps the rows it reads and updates. Checked against the eager graph over
several steps for every optimiser (the weight used once and twice), both dtypes
and rows that are not a multiple of the column grain, and bitwise the same at 1-4
threads; a layer whose input needs a gradient keeps the split by the input's
columns."""

import numpy as np
import pytest

import cygrad as cg
from cygrad import nn, optim
from cygrad.compiler import lowering

C = 5

OPTS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "sgd_momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=0.1),
    "adam": lambda ps: optim.Adam(ps, lr=0.01),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
}


def _tol(dt):
    return dict(rtol=1e-9, atol=1e-11) if dt == np.float64 else dict(rtol=2e-4, atol=2e-6)


def _model(D, H, dt, twice):
    rng = np.random.default_rng(0)
    first = nn.Linear(D, H, dtype=dt, generator=rng)
    out = nn.Linear(2 * H if twice else H, C, dtype=dt, generator=rng)
    params = first.parameters() + out.parameters()
    if twice:       # the first layer on two inputs: its gradient is two products, added
        def loss_fn(x, x2, y):
            h = cg.concat([cg.relu(first(x)), cg.tanh(first(x2))], axis=1)
            return cg.softmax_cross_entropy(out(h), y)
    else:
        def loss_fn(x, x2, y):
            return cg.softmax_cross_entropy(out(cg.relu(first(x))), y)
    return params, loss_fn


def _batches(D, dt, sizes):
    rng = np.random.default_rng(3)
    return [(rng.standard_normal((B, D)).astype(dt), rng.standard_normal((B, D)).astype(dt),
             rng.integers(0, C, B)) for B in sizes]


def _train(D, H, dt, opt_name, twice, compiled, threads=1, sizes=(9, 9, 40, 200, 9, 3)):
    # (B = 200: from B = ROW_MODE on, the forward by W's rows where B <= 2 H (H = 100),
    # the earlier plan beyond (H = 64))
    params, loss_fn = _model(D, H, dt, twice)
    opt = OPTS[opt_name](params)
    step = cg.compile(loss_fn, optimizer=opt, strict=True, threads=threads) if compiled \
        else None
    losses = []
    for bt in _batches(D, dt, sizes):
        if compiled:
            losses.append(step(*bt))
        else:
            opt.zero_grad()
            loss = loss_fn(*bt)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, [p.data.copy() for p in params], step


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
@pytest.mark.parametrize("opt_name", sorted(OPTS))
@pytest.mark.parametrize("D,H", [(11, 64), (70, 100)])
def test_weight_rows_split_trains_as_the_eager_graph_at_any_thread_count(
        D, H, opt_name, twice, dt, threaded_plans):
    le, pe, _ = _train(D, H, dt, opt_name, twice, False)
    runs = [_train(D, H, dt, opt_name, twice, True, threads=nt) for nt in (1, 2, 3, 4)]
    _, bt = runs[0][2], _batches(D, dt, [9])[0]
    assert "linear_wgrad" in runs[0][2].describe(*bt)
    lc, pc, _ = runs[0]
    np.testing.assert_allclose(lc, le, **_tol(dt))
    for i, (a, b) in enumerate(zip(pc, pe)):
        np.testing.assert_allclose(a, b, err_msg=f"parameter {i}", **_tol(dt))
    for nt, (l_n, p_n, _) in zip((2, 3, 4), runs[1:]):
        assert l_n == lc, f"losses at {nt} threads"
        for i, (a, b) in enumerate(zip(p_n, pc)):
            np.testing.assert_array_equal(a, b, err_msg=f"parameter {i} at {nt} threads")


def test_the_rule_names_the_layers_it_splits_by_weight_rows():
    """On the data with enough rows and at most 2 H in the batch: by W's rows (the
    forward by the output's columns, also from B = 128 on); too few rows, a larger
    batch, a frozen weight, or an input that needs a gradient: the input's columns."""
    for H, B, frozen, on_data, expect in [
            (lowering.WGRAD_ROWS, 2 * lowering.WGRAD_ROWS, False, True, True),
            (lowering.WGRAD_ROWS - 1, 2 * lowering.WGRAD_ROWS - 2, False, True, False),
            (96, 192, False, True, True), (96, 193, False, True, False),
            (96, 128, True, True, False), (96, 128, False, False, False)]:
        x = np.zeros((B, 40), np.float32)
        y = np.zeros(B, np.int64)
        rng = np.random.default_rng(0)
        emb = nn.Embedding(50, 40, generator=rng)
        first, out = nn.Linear(40, H, generator=rng), nn.Linear(H, C, generator=rng)
        if frozen:
            first.weight.requires_grad = False
        params = [p for p in first.parameters() + out.parameters() if p.requires_grad]
        if not on_data:
            params = params + emb.parameters()

        def loss_fn(x, y, ids):
            inp = x if on_data else emb(ids).reshape(B, 40)
            return cg.softmax_cross_entropy(out(cg.relu(first(inp))), y)

        step = cg.compile(loss_fn, optimizer=optim.Adam(params, lr=1e-3), strict=True)
        ids = np.zeros((B, 1), np.int64)
        step(x, y, ids)
        text = step.describe(x, y, ids)
        assert ("linear_wgrad" in text) == expect, (H, B, frozen, on_data, text)
        # the first layer's forward: by W's rows (the output's columns) where its
        # weight gradient is, else by the batch's rows from ROW_MODE on (or with
        # fewer than two column chunks)
        stage0 = text.splitlines()[1].split(": ", 1)[1].split(" | ")
        group = next(g for g in stage0 if "linear" in g.split("] ", 1)[1].split(", "))
        by_rows = not expect and (B >= lowering.ROW_MODE or H < 2 * lowering.COL_GRAIN)
        assert group.startswith("rows[" if by_rows else f"cols[{H}/"), (group, text)
