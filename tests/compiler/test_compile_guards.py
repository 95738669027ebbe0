"""A compiled step is the eager graph's step, or it refuses: side by side with the
eager graph over several steps, for every optimiser (its subclasses and objects of
the user's too), every dtype of the targets, and each change a user makes after
compiling (hyper-parameters set or loaded, parameters frozen or unfrozen, arrays
replaced, train/eval, a layer's settings). Each case builds two identical models,
applies the same changes to both, and requires equal parameters after every step
(float64 rtol 1e-9; float32 to rounding), or a refusal that updated nothing."""

import types
import warnings

import numpy as np
import pytest

import cygrad as cg
from cygrad import CompileError, CompileWarning, nn, optim

V, d, w, H, C = 23, 4, 3, 16, 5


def _tol(dt):
    # (float64: the gradient of a parameter used twice (the max-margin's two windows) is
    # summed in another order than eagerly, and Adagrad's first step, lr g / |g|, turns
    # a near-zero gradient's rounding into ~1e-10 of the parameter)
    return dict(rtol=1e-9, atol=1e-10) if dt == np.float64 else dict(rtol=2e-4, atol=2e-6)


def _model(dt, sparse, n_out, drop_p=0.0, act="tanh"):
    rng = np.random.default_rng(0)
    m = types.SimpleNamespace()
    m.emb = nn.Embedding(V, d, sparse=sparse, dtype=dt, generator=rng)
    m.lin = nn.Linear(w * d, H, dtype=dt, generator=rng)
    m.act = nn.LeakyReLU(negative_slope=0.1) if act == "leaky" else nn.Tanh()
    m.drop = nn.Dropout(drop_p, stream=7)     # both models: the same masks
    m.out = nn.Linear(H, n_out, dtype=dt, generator=rng)
    m.all = nn.Sequential(m.emb, m.lin, m.act, m.drop, m.out)     # for train()/eval()
    m.params = m.all.parameters()
    return m


def _loss_fn(m, loss, keyless=False):
    def scores(win, key):
        B = win.shape[0]
        x = m.emb(win).reshape(B, w * d)
        h = m.act(m.lin(x))
        return m.out(m.drop(h) if keyless else m.drop(h, key))

    red = "sum" if loss.endswith("_sum") else "mean"
    weight = np.array([0.5, 2.0, 1.0, 0.25, 3.0])
    if loss == "softmax":
        def loss_fn(win, y, key):
            return cg.softmax_cross_entropy(scores(win, key), y)
    elif loss in ("xent_sum", "xent_w", "xent_w_sum"):
        def loss_fn(win, y, key):
            return cg.softmax_cross_entropy(scores(win, key), y, reduction=red,
                                            weight=weight if "_w" in loss else None)
    elif loss == "xent_on_tanh":       # the loss reads an activation's saved output
        def loss_fn(win, y, key):
            return cg.softmax_cross_entropy(cg.tanh(scores(win, key)), y)
    elif loss in ("mse", "mse_sum"):
        def loss_fn(win, y, key):
            return cg.mse_loss(scores(win, key), y, reduction=red)
    elif loss in ("bce_col", "bce_col_sum"):       # the (B, 1) output of Linear(H, 1)
        def loss_fn(win, y, key):
            return cg.sigmoid_binary_cross_entropy(scores(win, key), y, reduction=red)
    elif loss == "bce":
        def loss_fn(win, y, key):
            return cg.sigmoid_binary_cross_entropy(scores(win, key).reshape(win.shape[0]), y)
    elif loss == "margin_sum":
        def loss_fn(win, y, key):
            B = win.shape[0]
            return cg.max_margin(scores(win, key).reshape(B), scores(y, key).reshape(B),
                                 reduction="sum")
    else:
        def loss_fn(win, y, key):
            B = win.shape[0]
            return cg.max_margin(scores(win, key).reshape(B), scores(y, key).reshape(B))
    return loss_fn


def _batches(loss, n, B, dt, rng, target_dtype=None):
    out = []
    for k in range(n):
        win = rng.integers(0, V, (B, w))
        if loss.startswith("softmax") or loss.startswith("xent"):
            y = rng.integers(0, C, B)
        elif loss.startswith("mse"):
            y = (rng.standard_normal((B, C)) * 3).astype(target_dtype or dt)
        elif loss.startswith("bce"):
            y = rng.integers(0, 2, B).astype(target_dtype or dt)
            if np.dtype(target_dtype or dt).kind == "f":
                y = (y * 0.8 + 0.1).astype(target_dtype or dt)   # soft targets: dtype matters
            if loss.startswith("bce_col"):
                y = y.reshape(B, 1)
        else:
            y = win.copy()
            y[:, w // 2] = rng.integers(0, V, B)
        out.append((win, y, np.array([1000 + k], np.int64)))
    return out


def _clip(opt, kw):
    """The eager side of compile's clip_grad_norm / clip_grad_value."""
    if "clip_grad_norm" in kw:
        optim.clip_grad_norm(opt.params, kw["clip_grad_norm"])
    if "clip_grad_value" in kw:
        v = kw["clip_grad_value"]
        for p in opt.params:
            g = p.grad
            if isinstance(g, cg.graph.SparseRows):
                p.grad = cg.graph.SparseRows(g.indices, np.clip(g.rows, -v, v), g.shape)
            elif g is not None:
                p.grad = np.clip(g, -v, v)


class ClippingAdam(optim.Adam):
    """A subclass whose step clips the gradients first (its own step: gradient mode)."""

    def step(self):
        optim.clip_grad_norm(self.params, 0.05)
        super().step()


class DampedSGD:
    """An optimiser of the user's: the protocol only (params, step, zero_grad); its
    update is smooth in the gradient (a sign would turn rounding into a full step)."""

    def __init__(self, params, lr):
        self.params, self.lr = list(params), lr

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for p in self.params:
            if p.grad is not None:
                g = p.grad
                if isinstance(g, cg.graph.SparseRows):
                    g2 = np.zeros_like(p.data)
                    np.add.at(g2, g.indices.reshape(-1), g.rows)
                    g = g2
                p.data -= (self.lr * g / (1.0 + np.abs(g))).astype(p.dtype)


OPTS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "sgd_momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd_small": lambda ps: optim.SGD(ps, lr=0.005),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=0.1),
    "adam": lambda ps: optim.Adam(ps, lr=0.01),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "clipping_adam": lambda ps: ClippingAdam(ps, lr=0.01),
    "damped_sgd": lambda ps: DampedSGD(ps, lr=0.1),
}


def _n_out(loss):
    return 1 if loss.startswith(("bce", "margin")) else C


def _side_by_side(opt_name, dt=np.float64, sparse=True, loss="softmax", events=None,
                  n=6, B=9, target_dtype=None, drop_p=0.0, act="tanh", strict=True,
                  compile_kw=None, batches=None, before=None, keyless=False, trained=True):
    """Run the compiled step and the eager graph on two identical models; apply each
    event (a function of (model, optimiser)) to both before its step; compare after
    every step. Returns the compiled step."""
    events = events or {}
    ms = [_model(dt, sparse, _n_out(loss), drop_p, act)
          for _ in range(2)]
    opts = [OPTS[opt_name](m.params) for m in ms]
    if before is not None:
        for m, o in zip(ms, opts):
            before(m, o)
    fns = [_loss_fn(m, loss, keyless) for m in ms]
    kw = compile_kw or {}
    step = cg.compile(fns[0], optimizer=opts[0], strict=strict, **kw)
    rng = np.random.default_rng(5)
    if batches is None:
        batches = _batches(loss, n, B, dt, rng, target_dtype)
    for k, bt in enumerate(batches):
        if k in events:
            for m, o in zip(ms, opts):
                events[k](m, o)
        lc = step(*bt)
        opts[1].zero_grad()
        l_e = fns[1](*bt)
        l_e.backward()
        _clip(opts[1], kw)
        opts[1].step()
        opts[1].zero_grad()
        np.testing.assert_allclose(lc, l_e.item(), err_msg=f"loss at step {k}", **_tol(dt))
        for i, (a, b) in enumerate(zip(ms[0].params, ms[1].params)):
            np.testing.assert_allclose(a.data, b.data, err_msg=f"parameter {i} after step {k}",
                                       **_tol(dt))
    if trained:     # the run trained something
        init = _model(dt, sparse, _n_out(loss), drop_p, act).params
        assert any(not np.array_equal(a.data, b.data) for a, b in zip(ms[0].params, init))
    return step


# ---------------------------------------------------------------- optimisers

@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("opt_name", sorted(OPTS))
def test_every_optimiser_dense_and_sparse_tables(opt_name, sparse, dt):
    """Dense-gradient tables under Adam move every row's moments (not only the
    batch's); SGD with momentum on a dense table trains (it raised on the second
    call); a subclass's step and an object of the user's run at every call."""
    if opt_name == "sgd_momentum" and sparse:
        pytest.skip("SGD with momentum refuses row-sparse gradients (tested below)")
    step = _side_by_side(opt_name, dt=dt, sparse=sparse)
    assert step.plans == 1 and step.fallbacks() == []


def test_a_subclass_step_runs_at_every_call():
    calls = []

    class Counting(optim.SGD):
        def step(self):
            calls.append(1)
            super().step()
    OPTS["counting"] = lambda ps: Counting(ps, lr=0.1)
    try:
        step = _side_by_side("counting", n=5)
    finally:
        del OPTS["counting"]
    assert len(calls) == 2 * 5 and step.plans == 1     # the compiled side and the eager side


def test_sgd_momentum_on_a_sparse_gradient_refuses_before_any_update():
    m = _model(np.float64, True, C)
    opt = optim.SGD(m.params, lr=0.1, momentum=0.9)
    step = cg.compile(_loss_fn(m, "softmax"), optimizer=opt)
    before = [p.data.copy() for p in m.params]
    bt = _batches("softmax", 1, 5, np.float64, np.random.default_rng(0))[0]
    with pytest.raises(ValueError, match="row-sparse gradient"):
        step(*bt)
    for p, b in zip(m.params, before):
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "clipping_adam"])
@pytest.mark.parametrize("how", ["norm", "value"])
def test_gradient_clipping_is_an_option_of_the_step(opt_name, how):
    kw = {"clip_grad_norm": 0.1} if how == "norm" else {"clip_grad_value": 0.01}
    step = _side_by_side(opt_name, compile_kw=kw)
    assert step.plans == 1
    with pytest.raises(ValueError, match="clip_grad_norm"):
        cg.compile(lambda x: x, optimizer=optim.SGD(_model(np.float64, True, C).params, 0.1),
                   clip_grad_norm=-1)


def test_the_optimiser_protocol_is_checked():
    with pytest.raises(TypeError, match="optimiser protocol"):
        cg.compile(lambda x: x, optimizer=types.SimpleNamespace(params=[1], step=print,
                                                                zero_grad=print))


# ---------------------------------------------------------------- changes after compiling

def _set(attr, value):
    def ev(m, o):
        setattr(o, attr, value)
    return ev


def _loaded(**hyper):
    def ev(m, o):
        sd = o.state_dict()
        sd.update(hyper)
        o.load_state_dict(sd)
    return ev


def _freeze(name, flag):
    def ev(m, o):
        getattr(m, name).weight.requires_grad = flag
    return ev


class _Halving(optim.SGD):
    def step(self):
        self.lr /= 2
        super().step()
        self.lr *= 2


def _replace(m, o):
    m.lin.weight.data = m.lin.weight.data * 0.5


CHANGES = {
    "momentum_attribute": ("sgd", {2: _set("momentum", 0.9)}),
    "weight_decay_attribute": ("sgd", {2: _set("weight_decay", 0.01)}),
    "nesterov_then_plain": ("sgd_momentum", {2: _set("nesterov", True), 4: _set("momentum", 0.5)}),
    "momentum_loaded": ("sgd", {2: _loaded(momentum=0.5)}),
    "weight_decay_loaded": ("sgd", {3: _loaded(weight_decay=0.1)}),
    "adam_betas_and_decay": ("adam", {2: _set("betas", (0.5, 0.9)), 3: _set("weight_decay", 0.1)}),
    "adam_loaded": ("adamw", {2: _loaded(betas=(0.8, 0.99), weight_decay=0.5, lr=0.02)}),
    "lr_schedule": ("adagrad", {1: _set("lr", 0.01), 3: _set("lr", 0.3)}),
    "freeze": ("sgd", {2: _freeze("lin", False)}),
    "freeze_adam": ("adam", {2: _freeze("out", False), 4: _freeze("out", True)}),
    "freeze_table": ("adagrad", {2: _freeze("emb", False)}),
    "data_replaced": ("adam", {2: _replace}),
    "class_changed": ("sgd", {2: lambda m, o: setattr(o, "__class__", _Halving)}),
}


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_changes_after_compiling_are_followed(change, dt):
    opt_name, events = CHANGES[change]
    # (dense tables: SGD with momentum or weight decay refuses row-sparse gradients)
    step = _side_by_side(opt_name, dt=dt, events=events, strict=False, sparse=False)
    assert step.fallbacks() == []


def test_a_parameter_frozen_before_compiling_and_unfrozen_after_is_trained():
    def before(m, o):
        m.lin.weight.requires_grad = False
    _side_by_side("adam", before=before, events={3: _freeze("lin", True)}, strict=False)


@pytest.mark.parametrize("change", ["momentum_attribute", "freeze", "momentum_loaded"])
def test_strict_refuses_a_changed_guard_naming_it_before_any_update(change):
    opt_name, events = CHANGES[change]
    m = _model(np.float64, False, C)
    opt = OPTS[opt_name](m.params)
    step = cg.compile(_loss_fn(m, "softmax"), optimizer=opt, strict=True)
    bts = _batches("softmax", 3, 7, np.float64, np.random.default_rng(1))
    step(*bts[0])
    step(*bts[1])
    (ev,) = events.values()
    ev(m, opt)
    before = [p.data.copy() for p in m.params]
    with pytest.raises(CompileError, match="momentum|requires_grad|update changed"):
        step(*bts[2])
    for p, b in zip(m.params, before):
        np.testing.assert_array_equal(p.data, b)


# ---------------------------------------------------------------- layers' settings

@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_train_and_eval_and_dropout_rate_are_guarded(dt):
    events = {2: lambda m, o: m.all.eval(), 3: lambda m, o: m.all.train(),
              4: lambda m, o: setattr(m.drop, "p", 0.1)}
    step = _side_by_side("adam", dt=dt, drop_p=0.4, events=events, n=7, strict=False)
    assert step.retraces == 3


@pytest.mark.parametrize("loss", ["softmax", "bce", "margin"])
@pytest.mark.parametrize("opt_name", ["sgd", "adagrad", "adam"])
def test_dropout_layers_without_a_key_compile_and_draw_the_eager_masks(opt_name, loss):
    """nn.Dropout called as drop(h): the step advances the layer's counter at every
    call (the margin loss calls it twice a step), eval() switches it off."""
    events = {4: lambda m, o: m.all.eval(), 5: lambda m, o: m.all.train()}
    step = _side_by_side(opt_name, loss=loss, drop_p=0.5, keyless=True, events=events, n=8,
                         strict=False)
    assert step.fallbacks() == [] and step.retraces == 2


def test_a_failed_step_does_not_advance_the_dropout_counter():
    m = _model(np.float64, True, C, drop_p=0.5)
    step = cg.compile(_loss_fn(m, "softmax", keyless=True), optimizer=optim.SGD(m.params, 0.1))
    bt = _batches("softmax", 1, 5, np.float64, np.random.default_rng(0))[0]
    step(*bt)
    step(*bt)
    assert m.drop._count == 2
    bad = (bt[0], np.full(5, C), bt[2])         # a label out of range
    with pytest.raises(IndexError, match="out of range"):
        step(*bad)
    assert m.drop._count == 2


def test_a_layer_setting_assigned_after_compiling_is_guarded():
    events = {2: lambda m, o: setattr(m.act, "kw", {"negative_slope": 0.3})}
    step = _side_by_side("sgd", act="leaky", events=events, strict=False)
    assert step.retraces == 1


def test_strict_names_the_layer_setting_that_changed():
    m = _model(np.float64, True, C, drop_p=0.3)
    step = cg.compile(_loss_fn(m, "softmax"), optimizer=optim.SGD(m.params, lr=0.1),
                      strict=True)
    bt = _batches("softmax", 1, 6, np.float64, np.random.default_rng(0))[0]
    step(*bt)
    step(*bt)
    m.all.eval()
    with pytest.raises(CompileError, match="'training' changed from True to False"):
        step(*bt)


def test_an_unrelated_module_change_does_not_retrace():
    other = nn.Linear(3, 3)
    events = {2: lambda m, o: other.eval(), 3: lambda m, o: setattr(other, "x", 1)}
    step = _side_by_side("sgd", events=events)
    assert step.retraces == 0


# ---------------------------------------------------------------- dynamic rows

@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adagrad", "adam", "sgd_momentum"])
@pytest.mark.parametrize("loss", ["softmax", "xent_w", "bce_col", "mse", "margin"])
def test_dynamic_rows_serve_every_batch_up_to_the_capacity(loss, opt_name, dt):
    """One plan for every batch of up to the rows it was traced with; a larger batch
    traces one of its size, which replaces the smaller."""
    rng = np.random.default_rng(4)
    sizes = [13, 13, 7, 1, 13, 20, 3, 20, 19]
    batches = [b for B in sizes for b in _batches(loss, 1, B, dt, rng)]
    step = _side_by_side(opt_name, dt=dt, loss=loss, sparse=opt_name != "sgd_momentum",
                         batches=batches, drop_p=0.3, keyless=True,
                         compile_kw={"dynamic_rows": True})
    assert step.plans_built == 2 and step.plans == 1 and step.fallbacks() == []


def test_dynamic_rows_keep_exact_plans_where_rows_are_not_the_batch():
    """A key argument (1,) and a constant table of rows are not the batch's rows."""
    m = _model(np.float64, True, C)
    opt = optim.SGD(m.params, lr=0.1)
    const_x = cg.tensor(np.ones((5, w * d)))
    step = cg.compile(lambda y: cg.softmax_cross_entropy(m.out(m.act(m.lin(const_x))), y),
                      optimizer=opt, dynamic_rows=True, strict=True)
    step(np.zeros(5, np.int64))
    assert step.plans == 1 and step._poly == []     # a constant read by rows: exact sizes
    win = np.zeros((5, w), np.int64)
    key = np.array([3], np.int64)
    step2 = cg.compile(lambda win, y, key: cg.softmax_cross_entropy(
        m.out(cg.dropout(m.act(m.lin(m.emb(win).reshape(win.shape[0], w * d))), 0.5, key)), y),
        optimizer=opt, dynamic_rows=True, strict=True)
    step2(win, np.zeros(5, np.int64), key)
    step2(win[:3], np.zeros(3, np.int64), key)     # fewer rows, the same (1,) key
    assert step2.plans_built == 1




LOSSES = ["xent_sum", "xent_w", "xent_w_sum", "xent_on_tanh", "mse", "mse_sum", "bce_col",
          "bce_col_sum", "margin_sum"]


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("opt_name", ["sgd", "adagrad", "adam"])
@pytest.mark.parametrize("loss", LOSSES)
def test_the_common_losses_compile_and_equal_the_eager_graph(loss, opt_name, dt):
    if opt_name == "sgd" and loss.endswith("_sum"):
        opt_name = "sgd_small"      # summed losses: a step that does not blow up float32
    step = _side_by_side(opt_name, dt=dt, loss=loss, strict=True, drop_p=0.3)
    assert step.plans == 1 and step.fallbacks() == []


@pytest.mark.parametrize("target_dtype", [np.float64, np.float32, np.int32, ">f4"])
def test_regression_targets_of_any_dtype(target_dtype):
    _side_by_side("adam", dt=np.float32, loss="mse", target_dtype=target_dtype)


def test_weights_changed_in_place_are_read_at_the_next_call():
    """A float64 weight array is the op's own: the plan reads it at every call."""
    ms = [_model(np.float64, True, C) for _ in range(2)]
    wts = [np.ones(C) for _ in ms]
    fns = [(lambda m, wt: lambda win, y: cg.softmax_cross_entropy(
        m.out(m.act(m.lin(m.emb(win).reshape(win.shape[0], w * d)))), y, weight=wt))(m, wt)
        for m, wt in zip(ms, wts)]
    opts = [optim.SGD(m.params, lr=0.3) for m in ms]
    step = cg.compile(fns[0], optimizer=opts[0], strict=True)
    rng = np.random.default_rng(3)
    for k in range(4):
        if k == 2:
            for wt in wts:
                wt[1] = 5.0
        win, y = rng.integers(0, V, (7, w)), rng.integers(0, C, 7)
        step(win, y)
        opts[1].zero_grad()
        fns[1](win, y).backward()
        opts[1].step()
        for a, b in zip(ms[0].params, ms[1].params):
            np.testing.assert_allclose(a.data, b.data, rtol=1e-9, atol=1e-12)
    y0 = np.zeros(7, np.int64)
    wts[0][0] = 0.0
    before = [p.data.copy() for p in ms[0].params]
    with pytest.raises(ValueError, match="sum to 0.0"):
        step(rng.integers(0, V, (7, w)), y0)
    for p, b in zip(ms[0].params, before):
        np.testing.assert_array_equal(p.data, b)


# ---------------------------------------------------------------- targets and inputs

@pytest.mark.parametrize("model_dt", [np.float32, np.float64])
@pytest.mark.parametrize("target_dtype", [np.float64, np.float32, np.int64, np.int8, np.bool_,
                                          ">f8"])
@pytest.mark.parametrize("opt_name", ["sgd", "adagrad", "adam"])
def test_binary_targets_of_any_dtype_are_read_as_the_eager_loss_reads_them(
        model_dt, target_dtype, opt_name):
    _side_by_side(opt_name, dt=model_dt, loss="bce", target_dtype=target_dtype, n=5)


@pytest.mark.parametrize("bad", [2.0, -1.0, np.nan, 1.0000001])
def test_targets_out_of_range_are_refused_at_every_call_before_any_update(bad):
    m = _model(np.float64, True, 1)
    step = cg.compile(_loss_fn(m, "bce"), optimizer=optim.Adam(m.params, lr=0.01))
    bts = _batches("bce", 3, 6, np.float64, np.random.default_rng(0))
    step(*bts[0])
    step(*bts[1])
    win, y, key = bts[2]
    y = y.copy()
    y[4] = bad
    before = [p.data.copy() for p in m.params]
    with pytest.raises(ValueError, match=r"targets?\[4\] = .* outside \[0, 1\]"):
        step(win, y, key)
    for p, b in zip(m.params, before):
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("opt_name", ["sgd", "adagrad", "adam"])
def test_an_input_that_is_a_parameters_own_array(opt_name):
    """The eager graph reads its input whole before the optimiser changes anything;
    the plan, which updates parameters during backward, copies such an input."""
    rng = np.random.default_rng(0)
    W = cg.tensor(rng.standard_normal((6, 6)), requires_grad=True)
    U = cg.tensor(rng.standard_normal((C, 6)), requires_grad=True)
    b = cg.tensor(rng.standard_normal(6), requires_grad=True)
    W2, U2, b2 = (cg.tensor(t.data.copy(), requires_grad=True) for t in (W, U, b))
    opt = OPTS[opt_name]([W, U, b])
    opt2 = OPTS[opt_name]([W2, U2, b2])

    def f(W, U, b):
        def loss_fn(x, y):
            return cg.softmax_cross_entropy(cg.tanh(cg.linear(x, W, b)) @ U.T, y)
        return loss_fn
    step = cg.compile(f(W, U, b), optimizer=opt, strict=True)
    y = np.arange(6) % C
    for k in range(4):
        step(W.data, y)             # the input is W's own array
        opt2.zero_grad()
        f(W2, U2, b2)(W2.data.copy(), y).backward()
        opt2.step()
        for t, t2 in ((W, W2), (U, U2), (b, b2)):
            np.testing.assert_allclose(t.data, t2.data, rtol=1e-10, atol=1e-12)
    assert step.plans == 1


@pytest.mark.parametrize("method", ["max", "astype", "reshape", "sum", "T"])
def test_numpy_methods_on_arguments_fall_back_with_a_warning(method):
    m = _model(np.float64, True, C)
    opt = optim.SGD(m.params, lr=0.1)
    inner = _loss_fn(m, "softmax")

    def loss_fn(win, y, key):
        if method == "max":
            assert y.max() < C
        elif method == "astype":
            y = y.astype(np.int64)
        elif method == "reshape":
            y = y.reshape(-1)
        elif method == "sum":
            y.sum()
        else:
            y.T
        return inner(win, y, key)
    step = cg.compile(loss_fn, optimizer=opt)
    bt = _batches("softmax", 1, 5, np.float64, np.random.default_rng(0))[0]
    with pytest.warns(CompileWarning, match=f"argument 'y'.*{method}|{method}.*argument 'y'"):
        step(*bt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(*bt)           # eager from now on, without another warning
    assert step.plans == 0
    strict = cg.compile(loss_fn, optimizer=opt, strict=True)
    with pytest.raises(CompileError, match="argument 'y'"):
        strict(*bt)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        cg.graph.Traced(np.zeros(3), "x").nonsense


# ---------------------------------------------------------------- values a plan must not overwrite

def _pair(make_params, loss_of, opt_name="adagrad", args=(), n=3, strict=True):
    """The compiled step and the eager graph on two copies of the same parameters."""
    ps = [make_params(), make_params()]
    opts = [OPTS[opt_name](p) for p in ps]
    step = cg.compile(loss_of(ps[0]), optimizer=opts[0], strict=strict)
    for _ in range(n):
        lc = step(*args)
        opts[1].zero_grad()
        le = loss_of(ps[1])(*args)
        le.backward()
        opts[1].step()
        assert lc == pytest.approx(le.item(), rel=1e-12)
        for a, b in zip(ps[0], ps[1]):
            np.testing.assert_allclose(a.data, b.data, rtol=1e-10, atol=1e-12)
    return step


def _params(*shapes):
    def make():
        rng = np.random.default_rng(0)
        return [cg.tensor(rng.standard_normal(s) * 0.5, requires_grad=True) for s in shapes]
    return make


@pytest.mark.parametrize("case", ["act_of_reshaped_input", "bias_of_reshaped_input",
                                  "bias_after_act", "act_of_act", "xent_of_reshaped_input"])
def test_nothing_a_later_op_reads_is_overwritten(case):
    """In-place writes (an activation over its input, a bias added in place, the loss's
    gradient over the logits) only where nothing else reads the buffer: not an
    argument (which a reshape passes on), not an activation's saved output."""
    x = np.random.default_rng(1).standard_normal((6, 2, 2))
    x0 = x.copy()
    y = np.arange(6) % 4

    def loss_of(ps):
        W, b, c = ps

        def loss_fn(x, y):
            xr = cg.tensor(x).reshape(6, 4)
            if case == "act_of_reshaped_input":
                return cg.softmax_cross_entropy(cg.linear(cg.tanh(xr), W, b), y)
            if case == "bias_of_reshaped_input":
                return cg.softmax_cross_entropy(cg.linear(xr + c, W, b), y)
            if case == "xent_of_reshaped_input":
                return cg.softmax_cross_entropy(xr + c, y)      # logits over x's rows
            h = cg.tanh(cg.linear(xr, W, b))
            h = h + c if case == "bias_after_act" else cg.tanh(h)
            return cg.softmax_cross_entropy(cg.linear(h, W, b), y)
        return loss_fn
    _pair(_params((4, 4), (4,), (4,)), loss_of, args=(x, y))
    np.testing.assert_array_equal(x, x0)        # the caller's array untouched


def _refusal_case(case, E, P, W, b):
    def loss_fn(win, x, y):
        if case == "reshaped_parameter":           # P's gradient would not reach it
            return cg.softmax_cross_entropy(cg.linear(cg.tanh(P.reshape(3, 4)), W, b), y)
        if case == "concat_of_reshaped_argument":
            h = cg.concat([cg.tensor(x).reshape(3, 4),
                           cg.embedding_windows(E, win).reshape(3, 4)], axis=1)
            return cg.softmax_cross_entropy(cg.linear(h, W, b), y)
        h = cg.embedding_windows(E, win)           # E gathered, and E a weight too
        return cg.softmax_cross_entropy(h @ E.T, y)
    return loss_fn


@pytest.mark.parametrize("case,match", [
    ("reshaped_parameter", "reshape of a parameter"),
    ("concat_of_reshaped_argument", "concat of an argument"),
    ("tied_weights", "tied weights")])
def test_what_a_plan_cannot_run_exactly_is_refused(case, match):
    rng = np.random.default_rng(2)
    E = cg.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    P = cg.tensor(rng.standard_normal((3, 2, 2)), requires_grad=True)
    W = cg.tensor(rng.standard_normal((5, 4 if case != "concat_of_reshaped_argument" else 8)),
                  requires_grad=True)
    b = cg.tensor(np.zeros(5), requires_grad=True)
    opt = optim.Adagrad([E, P, W, b], lr=0.1)
    step = cg.compile(_refusal_case(case, E, P, W, b), optimizer=opt, strict=True)
    with pytest.raises(CompileError, match=match):
        step(np.array([[0], [1], [2]]), rng.standard_normal((3, 2, 2)), np.arange(3))


def test_failed_checks_move_no_adam_step_count():
    ps = _params((4, 4), (4,))()
    opt = optim.Adam(ps, lr=0.1)
    weight = np.array([1.0, 1.0, 0.0, 0.0])
    step = cg.compile(lambda x, y: cg.softmax_cross_entropy(cg.linear(x, *ps), y,
                                                            weight=weight),
                      optimizer=opt, strict=True)
    x = np.ones((3, 4))
    step(x, np.array([0, 1, 2]))
    step(x, np.array([0, 1, 2]))
    before = list(opt.steps), [p.data.copy() for p in ps]
    with pytest.raises(ValueError, match="sum to 0.0"):
        step(x, np.array([2, 3, 2]))
    weight[1] = -1.0                    # changed in place: checked at every call
    with pytest.raises(ValueError, match=r"weight\[1\] = -1.0 must be a finite number"):
        step(x, np.array([0, 1, 2]))
    assert opt.steps == before[0]
    for p, b in zip(ps, before[1]):
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-table", "sparse-table"])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [(1, 2, 2, 2), (2, 2, 1, 2, 1, 2)])
def test_a_parameter_used_twice_trains_bit_for_bit_as_eagerly_with_adagrad(sizes, dt, sparse):
    """The max-margin loss reads the weights and the table twice (the true and the
    corrupt windows). The plan adds the second use's product to the first as the
    eager graph adds them (not accumulated into one product), and sums a dense
    table's rows use by use: with Adagrad, whose first step lr g / (|g| + eps) turns
    any rounding of a near-zero gradient into a step of up to lr (the plan's first
    steps were 0.03-0.16 off in float32), compiled and eager are now the same bits,
    from the first call of each batch size on."""
    ms = [_model(dt, sparse, 1, 0.0, "leaky") for _ in range(2)]
    opts = [optim.Adagrad(m.params, lr=0.1) for m in ms]
    fns = [_loss_fn(m, "margin") for m in ms]
    step = cg.compile(fns[0], optimizer=opts[0], strict=True)
    rng = np.random.default_rng(0)
    for k, B in enumerate(sizes):
        bt = _batches("margin", 1, B, dt, rng)[0]
        step(*bt)
        opts[1].zero_grad()
        fns[1](*bt).backward()
        opts[1].step()
        for i, (a, b) in enumerate(zip(ms[0].params, ms[1].params)):
            np.testing.assert_array_equal(a.data, b.data, err_msg=f"parameter {i}, step {k}")
