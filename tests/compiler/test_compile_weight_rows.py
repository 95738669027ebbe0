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
from helpers import assert_eager_and_thread_counts, train_steps

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
    return train_steps(params, loss_fn, OPTS[opt_name](params), _batches(D, dt, sizes),
                       compiled, threads)


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
    assert_eager_and_thread_counts((le, pe, None), runs, (1, 2, 3, 4), _tol(dt))


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


@pytest.mark.filterwarnings("ignore::cygrad.CompileWarning")
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_changes_after_compiling_are_followed_on_the_weight_rows_plan(opt_name, threaded_plans):
    """A step rate changed, the weight frozen, its array replaced and unfrozen after
    compiling: the plan split by W's rows follows each as the eager graph does (the
    freeze re-traces: strict=False; strict=True refuses it, tested in
    test_compile_guards.py)."""
    def lr(ps, opt):
        opt.lr = opt.lr * 0.5

    def freeze(ps, opt):
        ps[0].requires_grad = False

    def replace(ps, opt):
        ps[0].data = ps[0].data * np.float32(0.9)
        ps[0].requires_grad = True

    events = {2: lr, 3: freeze, 4: replace}
    runs = []
    for compiled in (False, True):
        params, loss_fn = _model(70, 100, np.float32, False)
        runs.append(train_steps(params, loss_fn, OPTS[opt_name](params),
                                _batches(70, np.float32, (9, 9, 40, 40, 9, 9)), compiled, 2,
                                events, strict=False))
    assert "linear_wgrad" in runs[1][2].describe(*_batches(70, np.float32, [9])[0])
    assert_eager_and_thread_counts(runs[0], runs[1:], (2,), _tol(np.float32))
