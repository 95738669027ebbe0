"""Optimisers: the fused kernels against cygrad.kernels.reference, Adam/AdamW against
updates computed by hand from the Adam paper, momentum against PyTorch's rule
written out, lazy sparse Adam against a dense oracle on the touched rows,
clipping, schedules, state_dict round trips, compiled steps in gradient mode."""

import math

import numpy as np
import pytest

import cygrad as cg
from cygrad import kernels as K
from cygrad import nn, optim
from cygrad import reference as R
from helpers import DTYPES, run_with_threads

rng = np.random.default_rng(3)
SIZES = [0, 1, 7, 33, 40_009]


def _arrays(n, dt, k):
    return [rng.standard_normal(n).astype(dt) for _ in range(k)]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_kernel_matches_reference(dt, n, decoupled):
    p, m, g = _arrays(n, dt, 3)
    v = np.abs(_arrays(n, dt, 1)[0])
    outs = []
    for fn, threads in ((R.adam_update, 1), (K.adam_update, 1), (K.adam_update, 2)):
        a = [x.copy() for x in (p, m, v)]
        run_with_threads(threads, fn, *a, g, 4, 0.01, 0.8, 0.99, 1e-6, 0.1, decoupled)
        outs.append(a)
    tol = dict(rtol=2e-6, atol=1e-7) if dt == np.float32 else dict(rtol=1e-13, atol=1e-15)
    for x, y in zip(outs[0], outs[1]):
        np.testing.assert_allclose(y, x, **tol)
    for x, y in zip(outs[1], outs[2]):      # any thread count: the same bits
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("nesterov,first", [(False, False), (True, False), (True, True)])
def test_momentum_kernel_matches_reference(dt, n, nesterov, first):
    p, b, g = _arrays(n, dt, 3)
    outs = []
    for fn, threads in ((R.sgd_momentum_update, 1), (K.sgd_momentum_update, 1),
                        (K.sgd_momentum_update, 2)):
        a = [x.copy() for x in (p, b)]
        run_with_threads(threads, fn, *a, g, 0.1, 0.9, 0.0, 0.01, nesterov, first)
        outs.append(a)
    tol = dict(rtol=2e-6, atol=1e-7) if dt == np.float32 else dict(rtol=1e-13, atol=1e-15)
    for x, y in zip(outs[0], outs[1]):
        np.testing.assert_allclose(y, x, **tol)
    for x, y in zip(outs[1], outs[2]):
        np.testing.assert_array_equal(x, y)


def _adam_by_hand(theta, grads, lr, b1, b2, eps, wd=0.0, decoupled=False):
    """Kingma and Ba, algorithm 1, one scalar, in Python floats."""
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, 1):
        if decoupled:
            theta = theta * (1 - lr * wd)
        else:
            g = g + wd * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        theta = theta - lr * mhat / (math.sqrt(vhat) + eps)
        out.append(theta)
    return out


@pytest.mark.parametrize("cls,wd", [(optim.Adam, 0.0), (optim.Adam, 0.1), (optim.AdamW, 0.1)])
def test_adam_step_by_step_against_the_paper(cls, wd):
    grads = [0.5, -1.5, 2.0, 0.25]
    w = cg.tensor(np.array([1.0]), requires_grad=True)
    opt = cls([w], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    want = _adam_by_hand(1.0, grads, 0.1, 0.9, 0.999, 1e-8, wd, cls is optim.AdamW)
    # the first step of Adam moves by lr * sign(g) (m_hat / sqrt(v_hat) = g / |g|)
    if wd == 0:
        assert abs(want[0] - (1.0 - 0.1)) < 1e-8       # (eps moves it by lr eps / |g|)
    for g, theta in zip(grads, want):
        w.grad = np.array([g])
        opt.step()
        # the paper puts eps after the bias correction of v; PyTorch (and cygrad) divide
        # sqrt(v) by sqrt(1 - b2^t) first, which is the same number up to rounding
        assert abs(w.data[0] - theta) < 1e-12


def test_sgd_momentum_and_nesterov_by_hand():
    for nesterov, damp in ((False, 0.0), (False, 0.5), (True, 0.0)):
        w = cg.tensor(np.array([2.0]), requires_grad=True)
        opt = optim.SGD([w], lr=0.1, momentum=0.9, dampening=damp, nesterov=nesterov,
                        weight_decay=0.01)
        theta, buf = 2.0, None
        for g in (1.0, -0.5, 0.25):
            w.grad = np.array([g])
            opt.step()
            gg = g + 0.01 * theta
            buf = gg if buf is None else 0.9 * buf + (1 - damp) * gg
            theta -= 0.1 * (gg + 0.9 * buf if nesterov else buf)
            assert abs(w.data[0] - theta) < 1e-13


def test_lazy_sparse_adam_updates_only_touched_rows():
    V, d = 12, 3
    E0 = rng.standard_normal((V, d))
    windows = np.array([[1, 4, 4], [4, 7, 1]])
    W0 = rng.standard_normal((2, 3 * d))
    target = np.array([0, 1])

    def run(sparse):
        E = cg.tensor(E0, requires_grad=True)
        W = cg.tensor(W0, requires_grad=True)
        opt = optim.Adam([E, W], lr=0.05, weight_decay=0.01)
        for _ in range(3):
            opt.zero_grad()
            x = cg.embedding_windows(E, windows, sparse=sparse)
            cg.softmax_cross_entropy(x @ W.T, target).backward()
            opt.step()
        return E.data, W.data

    Es, Ws = run(True)
    Ed, Wd = run(False)
    touched = np.unique(windows)
    untouched = np.setdiff1d(np.arange(V), touched)
    # the same rows are touched every step, so lazy = dense on them, and nothing elsewhere
    np.testing.assert_allclose(Es[touched], Ed[touched], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(Ws, Wd, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(Es[untouched], E0[untouched])
    assert not np.allclose(Ed[untouched], E0[untouched])  # dense weight decay moved them


def test_sparse_gradient_with_momentum_is_refused():
    E = cg.tensor(rng.standard_normal((5, 2)), requires_grad=True)
    opt = optim.SGD([E], lr=0.1, momentum=0.9)
    cg.embedding_windows(E, np.array([[0, 1]]), sparse=True).sum().backward()
    with pytest.raises(ValueError, match="row-sparse gradient"):
        opt.step()


def test_clip_grad_norm_matches_numpy():
    a = cg.tensor(np.zeros((2, 3)), requires_grad=True)
    b = cg.tensor(np.zeros(4), requires_grad=True)
    ga, gb = rng.standard_normal((2, 3)), rng.standard_normal(4)
    a.grad, b.grad = ga.copy(), gb.copy()
    norm = np.sqrt((ga ** 2).sum() + (gb ** 2).sum())
    got = optim.clip_grad_norm([a, b], 0.5)
    assert abs(got - norm) < 1e-12
    f = 0.5 / (norm + 1e-6)
    np.testing.assert_allclose(a.grad, ga * f, rtol=1e-14)
    np.testing.assert_allclose(b.grad, gb * f, rtol=1e-14)
    # below the limit nothing changes; inf norm
    a.grad = ga.copy()
    assert optim.clip_grad_norm([a], 100.0) == pytest.approx(np.sqrt((ga ** 2).sum()))
    np.testing.assert_array_equal(a.grad, ga)
    assert optim.clip_grad_norm([a], 100.0, norm_type=math.inf) == np.abs(ga).max()
    # a sparse gradient's norm is its dense gradient's (repeated rows summed first)
    E = cg.tensor(np.zeros((6, 2)), requires_grad=True)
    cg.embedding_windows(E, np.array([[1, 1], [3, 1]]), sparse=True).sum().backward()
    dense = E.grad.to_dense()
    assert optim.clip_grad_norm([E], 1e6) == pytest.approx(np.sqrt((dense ** 2).sum()))
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm([a], 0)


def test_schedules_follow_their_formulas():
    w = cg.tensor(np.zeros(1), requires_grad=True)
    opt = optim.SGD([w], lr=0.8)
    s = optim.StepLR(opt, step_size=2, gamma=0.5)
    assert [s.step() for _ in range(5)] == pytest.approx([0.8, 0.4, 0.4, 0.2, 0.2])
    opt = optim.SGD([w], lr=1.0)
    s = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.1)
    want = [0.1 + 0.9 * (1 + math.cos(math.pi * t / 4)) / 2 for t in (1, 2, 3, 4, 4)]
    assert [s.step() for _ in range(5)] == pytest.approx(want)
    opt = optim.Adam([w], lr=0.3)
    s = optim.LinearWarmup(opt, warmup_steps=3, start_factor=0.1)
    assert opt.lr == pytest.approx(0.03)
    assert [s.step() for _ in range(4)] == pytest.approx([0.12, 0.21, 0.3, 0.3])
    s2 = optim.LinearWarmup(optim.Adam([w], lr=0.3), warmup_steps=3, start_factor=0.1)
    s2.load_state_dict(s.state_dict())
    assert s2.optimizer.lr == pytest.approx(0.3)


def _mlp(seed, dt=np.float64):
    return nn.Sequential(nn.Linear(6, 8, dtype=dt, generator=seed), nn.Tanh(),
                         nn.Linear(8, 3, dtype=dt, generator=seed + 1))


OPTS = [(optim.Adam, dict(lr=0.01)), (optim.AdamW, dict(lr=0.01)),
        (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
        (optim.SGD, dict(lr=0.1)), (optim.Adagrad, dict(lr=0.1))]


@pytest.mark.parametrize("cls,kw", OPTS, ids=[f"{c.__name__}{i}" for i, (c, _) in enumerate(OPTS)])
def test_state_dict_round_trip_continues_identically(tmp_path, cls, kw):
    X = rng.standard_normal((10, 6))
    y = rng.integers(0, 3, 10)

    def train(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            cg.softmax_cross_entropy(model(cg.tensor(X)), y).backward()
            opt.step()

    a = _mlp(0)
    oa = cls(a.parameters(), **kw)
    train(a, oa, 3)
    cg.save({"model": a.state_dict(), "optim": oa.state_dict()}, tmp_path / "ck")
    train(a, oa, 3)
    b = _mlp(5)
    ob = cls(b.parameters(), **kw)
    state = cg.load(tmp_path / "ck")
    b.load_state_dict(state["model"])
    ob.load_state_dict(state["optim"])
    train(b, ob, 3)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("cls,kw", OPTS[:3], ids=["Adam", "AdamW", "SGD-nesterov"])
@pytest.mark.parametrize("dt", DTYPES)
def test_compiled_step_in_gradient_mode_equals_eager(cls, kw, dt):
    X = rng.standard_normal((16, 6)).astype(dt)
    y = rng.integers(0, 3, 16)
    a, b = _mlp(0, dt), _mlp(0, dt)
    oa, ob = cls(a.parameters(), **kw), cls(b.parameters(), **kw)
    step = cg.compile(lambda X, y: cg.softmax_cross_entropy(b(X), y), optimizer=ob, strict=True)
    for _ in range(4):
        oa.zero_grad()
        la = cg.softmax_cross_entropy(a(cg.tensor(X)), y)
        la.backward()
        oa.step()
        lb = step(X, y)
        assert lb == pytest.approx(la.item(), rel=1e-6 if dt == np.float32 else 1e-13)
    assert step.plans == 1
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(q.data, p.data, rtol=1e-5 if dt == np.float32 else 1e-12,
                                   atol=1e-6 if dt == np.float32 else 1e-14)
        assert q.grad is None


def test_bad_hyper_parameters_and_states_are_refused():
    w = cg.tensor(np.zeros(3), requires_grad=True)
    with pytest.raises(ValueError, match="betas\\[1\\]"):
        optim.Adam([w], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([w], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="appears twice"):
        optim.Adam([w, w])
    opt = optim.Adam([w])
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="of a Adam"):
        optim.AdamW([w]).load_state_dict(sd)
    bad = dict(sd, state=[dict(sd["state"][0], exp_avg=np.zeros(4))])
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="betas"):
        opt.load_state_dict(dict(sd, betas=[0.9, 2.0]))
    assert opt.betas == (0.9, 0.999)        # nothing changed
    with pytest.raises(ValueError, match="step must be an integer"):
        opt.load_state_dict(dict(sd, state=[dict(sd["state"][0], step=-1)]))
    with pytest.raises(ValueError, match="grad must have the shape"):
        K.adam_update(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(4), 1, 0.1)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        K.adam_update(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3), 0, 0.1)
    p = np.zeros(3)
    with pytest.raises(ValueError, match="overlap|share"):
        K.adam_update(p, p, np.zeros(3), np.zeros(3), 1, 0.1)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_weight_decay_without_momentum_needs_no_buffer(dt, n):
    p, g = _arrays(n, dt, 2)
    outs = []
    for fn, threads in ((R.sgd_momentum_update, 1), (K.sgd_momentum_update, 1),
                        (K.sgd_momentum_update, 2)):
        a = p.copy()
        run_with_threads(threads, fn, a, None, g, 0.1, 0.0, 0.0, 0.01)
        outs.append(a)
    tol = dict(rtol=2e-6, atol=1e-7) if dt == np.float32 else dict(rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(outs[1], outs[0], **tol)
    np.testing.assert_array_equal(outs[1], outs[2])
    # by hand, through the optimiser: theta -= lr (g + wd theta), and no state is kept
    w = cg.tensor(np.array([2.0]), requires_grad=True)
    opt = optim.SGD([w], lr=0.1, weight_decay=0.01)
    w.grad = np.array([1.0])
    opt.step()
    assert abs(w.data[0] - (2.0 - 0.1 * (1.0 + 0.01 * 2.0))) < 1e-15
    assert opt.state_dict()["state"] == [{}]
    with pytest.raises(ValueError, match="needs a buf array"):
        K.sgd_momentum_update(np.zeros(3), None, np.zeros(3), 0.1, 0.9)


class _Tied(nn.Module):
    """One square layer applied twice: its weight and bias get two gradient
    contributions, so the plan sums them before Adam's update (the update task)."""

    def __init__(self, dt):
        super().__init__()
        self.inp = nn.Linear(6, 16, dtype=dt, generator=11)
        self.mid = nn.Linear(16, 16, dtype=dt, generator=12)
        self.out = nn.Linear(16, 3, dtype=dt, generator=13)

    def forward(self, x):
        h = cg.tanh(self.mid(cg.relu(self.inp(x))))
        return self.out(cg.tanh(self.mid(h)))


def _adam_case(kind, dt):
    if kind == "mlp":
        return nn.Sequential(nn.Linear(6, 40, dtype=dt, generator=1), nn.ReLU(),
                             nn.Linear(40, 3, dtype=dt, generator=2))
    return _Tied(dt)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("kind", ["mlp", "tied"])
@pytest.mark.parametrize("cls,kw", [(optim.Adam, dict(lr=0.01)),
                                    (optim.Adam, dict(lr=0.01, weight_decay=0.05)),
                                    (optim.AdamW, dict(lr=0.01, weight_decay=0.1))],
                         ids=["Adam", "Adam-L2", "AdamW"])
def test_compiled_adam_is_folded_into_backward(cls, kw, kind, dt):
    """Adam and AdamW run inside the plan (no gradient buffers, no optimiser pass):
    the same parameters and state as the eager graph's steps to rounding, bitwise the
    same for 1 and 2 threads, the schedule's lr read at every call, and the step
    counts kept so that the optimiser's state_dict continues on the graph."""
    X = rng.standard_normal((64, 6)).astype(dt)
    y = rng.integers(0, 3, 64)
    lrs = [0.01, 0.02, 0.005, 0.0, 0.01]

    def compiled(nt):
        m = _adam_case(kind, dt)
        o = cls(m.parameters(), **kw)
        step = cg.compile(lambda X, y: cg.softmax_cross_entropy(m(X), y), optimizer=o,
                          strict=True, threads=nt)
        losses = []
        for lr in lrs:
            o.lr = lr
            losses.append(step(X, y))
        (plan,) = step._plans.values()
        assert plan.opt_kind == "adam" and not plan.gradmode and not plan.grad_specs
        return m, o, losses

    a = _adam_case(kind, dt)
    oa = cls(a.parameters(), **kw)
    eager = []
    for lr in lrs:
        oa.lr = lr
        oa.zero_grad()
        loss = cg.softmax_cross_entropy(a(cg.tensor(X)), y)
        loss.backward()
        oa.step()
        eager.append(loss.item())
    m1, o1, l1 = compiled(1)
    m2, o2, l2 = compiled(2)
    tight = dict(rtol=2e-5, atol=2e-6) if dt == np.float32 else dict(rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(l1, eager, **tight)
    for p, q, r in zip(a.parameters(), m1.parameters(), m2.parameters()):
        np.testing.assert_allclose(q.data, p.data, **tight)
        np.testing.assert_array_equal(q.data, r.data)          # any thread count: same bits
        assert q.grad is None
    assert o1.steps == oa.steps == [len(lrs)] * len(oa.params)
    for x, z in zip(o1.exp_avg_sq + o1.exp_avg, oa.exp_avg_sq + oa.exp_avg):
        np.testing.assert_allclose(x, z, **tight)
    # the state continues on the graph: one more eager step from each agrees
    ob = cls(m1.parameters(), **kw)
    ob.load_state_dict(o1.state_dict())
    for opt, model in ((oa, a), (ob, m1)):
        opt.zero_grad()
        cg.softmax_cross_entropy(model(cg.tensor(X)), y).backward()
        opt.step()
    for p, q in zip(a.parameters(), m1.parameters()):
        np.testing.assert_allclose(q.data, p.data, **tight)


def test_compiled_adam_by_hand_one_parameter():
    """A compiled Adam update of a linear softmax (constant zero bias), against
    the Adam paper's formulas with the gradient (p - onehot) x / B written out."""
    X = rng.standard_normal((8, 4))
    y = rng.integers(0, 3, 8)
    W0 = rng.standard_normal((3, 4)) * 0.1
    W = cg.tensor(W0.copy(), requires_grad=True)
    opt = optim.Adam([W], lr=0.1, betas=(0.8, 0.99), eps=1e-6)
    zero = cg.tensor(np.zeros(3))           # a constant bias: only W is trained
    step = cg.compile(lambda X, y: cg.softmax_cross_entropy(cg.linear(X, W, zero), y),
                      optimizer=opt, strict=True)
    step(X, y)                              # the first call runs on the graph
    Wa = W.data.copy()
    m, v = opt.exp_avg[0].copy(), opt.exp_avg_sq[0].copy()
    step(X, y)                              # the second replays the plan
    z = X @ Wa.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(3)[y]).T @ X / 8
    m = 0.8 * m + 0.2 * g
    v = 0.99 * v + 0.01 * g * g
    want = Wa - 0.1 / (1 - 0.8 ** 2) * m / (np.sqrt(v) / np.sqrt(1 - 0.99 ** 2) + 1e-6)
    np.testing.assert_allclose(W.data, want, rtol=1e-12, atol=1e-14)
    assert opt.steps == [2]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.05, False), (0.1, True)])
def test_embedding_adam_kernel_matches_reference(dt, wd, decoupled):
    """Lazy Adam on the rows of windows (repeated rows summed first) against the NumPy
    twin; the rows no window holds are not touched, moments included."""
    V, d = 30, 5
    windows = rng.integers(0, 20, (7, 3))
    windows[0, :] = 4                              # one row three times in one window
    dX = rng.standard_normal((7, 3 * d)).astype(dt)
    start = [rng.standard_normal((V, d)).astype(dt), np.abs(rng.standard_normal((V, d))).astype(dt),
             np.abs(rng.standard_normal((V, d))).astype(dt)]
    got = [a.copy() for a in start]
    want = [a.copy() for a in start]
    for t in (1, 2, 5):
        K.embedding_adam_update(*got, windows, dX, t, 0.01, 0.9, 0.99, 1e-6, wd, decoupled)
        R.embedding_adam_update(*want, windows, dX, t, 0.01, 0.9, 0.99, 1e-6, wd, decoupled)
    tol = dict(rtol=2e-6, atol=1e-6) if dt == np.float32 else dict(rtol=1e-13, atol=1e-15)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tol)
    untouched = np.setdiff1d(np.arange(V), windows)
    assert len(untouched) >= 10
    for g, s in zip(got, start):
        np.testing.assert_array_equal(g[untouched], s[untouched])
    with pytest.raises(ValueError, match="exp_avg_sq must have the shape"):
        K.embedding_adam_update(got[0], got[1], got[2][:3], windows, dX, 1, 0.01)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        K.embedding_adam_update(*got, windows, dX, 0, 0.01)
    with pytest.raises(IndexError):
        K.embedding_adam_update(*got, windows + V, dX, 1, 0.01)
    with pytest.raises(ValueError, match="overlap"):
        K.embedding_adam_update(got[0], got[0], got[2], windows, dX, 1, 0.01)


def _window_params(dt, V, d, w, H, C, seed):
    """The window model's parameters (table, hidden layer, output layer), seeded."""
    g = np.random.default_rng(seed)
    return [cg.tensor(g.normal(0, 0.3, s).astype(dt), requires_grad=True)
            for s in ((V, d), (H, w * d), (H,), (C, H), (C,))]


def _window_loss(E, W, b, U, c):
    """Its loss over (windows, labels): a row-sparse table, tanh, softmax cross-entropy."""
    def loss_fn(windows, labels):
        x = cg.embedding_windows(E, windows, sparse=True)
        return cg.softmax_cross_entropy(cg.linear(cg.tanh(cg.linear(x, W, b)), U, c), labels)
    return loss_fn


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
@pytest.mark.parametrize("dt", DTYPES)
def test_compiled_window_model_with_lazy_adam(cls, dt):
    """The window model with a sparse embedding table under Adam compiles (strict):
    the same table, weights and moments as the eager graph's lazy Adam, bitwise the
    same for 1 and 2 threads, untouched rows left alone."""
    V, d, w, H, C = 60, 4, 3, 10, 3
    windows = rng.integers(0, 45, (32, w))
    labels = rng.integers(0, C, 32)

    def model():
        return _window_params(dt, V, d, w, H, C, seed=7)

    loss_of = _window_loss

    def compiled(nt):
        ps = model()
        o = cls(ps, lr=0.02)
        step = cg.compile(loss_of(*ps), optimizer=o, strict=True, threads=nt)
        for _ in range(4):
            step(windows, labels)
        return ps, o

    pe = model()
    oe = cls(pe, lr=0.02)
    for _ in range(4):
        oe.zero_grad()
        loss_of(*pe)(windows, labels).backward()
        oe.step()
    p1, o1 = compiled(1)
    p2, o2 = compiled(2)
    tight = dict(rtol=2e-5, atol=2e-6) if dt == np.float32 else dict(rtol=1e-11, atol=1e-13)
    for a, b, c in zip(pe, p1, p2):
        np.testing.assert_allclose(b.data, a.data, **tight)
        np.testing.assert_array_equal(b.data, c.data)
    np.testing.assert_allclose(o1.exp_avg[0], oe.exp_avg[0], **tight)
    assert o1.steps == oe.steps == [4] * 5
    init = model()[0].data
    np.testing.assert_array_equal(p1[0].data[45:], init[45:])     # rows no window holds
    assert not o1.exp_avg_sq[0][45:].any()


def test_schedule_state_is_checked_before_it_is_used():
    w = nn.Parameter(np.zeros(2))
    s = optim.StepLR(optim.SGD([w], lr=0.1), step_size=2)
    good = s.state_dict()
    for bad, what in (({**good, "last_step": -1}, "last_step"),
                      ({**good, "last_step": 1.5}, "last_step"),
                      ({**good, "base_lr": float("nan")}, "base_lr"),
                      ({**good, "base_lr": "x"}, "base_lr"),
                      ({k: v for k, v in good.items() if k != "base_lr"}, "base_lr"),
                      ({**good, "type": "CosineAnnealingLR"}, "not the state")):
        with pytest.raises(ValueError, match=what):
            s.load_state_dict(bad)
    assert s.optimizer.lr == 0.1 and s.last_step == 0      # nothing half-applied
    s.load_state_dict({**good, "last_step": 4})
    assert s.optimizer.lr == pytest.approx(0.1 * 0.1 ** 2)


@pytest.mark.parametrize("dt", DTYPES)
def test_compiled_window_model_in_gradient_mode(dt):
    """An optimiser the plan does not fold: the plan leaves the dense gradients and
    the table's (ids, rows) in its workspace, then the optimiser's step runs (sparse
    rows: summed per row in slot order). Equal to the eager graph to
    rounding, bitwise for 1 and 2 threads, untouched rows unchanged."""
    V, d, w, H, C = 50, 4, 3, 10, 3
    windows = rng.integers(0, 35, (24, w))
    labels = rng.integers(0, C, 24)

    def model():
        return _window_params(dt, V, d, w, H, C, seed=9)

    make_loss = _window_loss

    # Adagrad behind a wrapper the plan does not know (as DistributedOptimizer is):
    # the plan runs in gradient mode and the wrapper's step applies the gradients
    class Wrapped(optim._Optimizer):
        def __init__(self, inner):
            self.inner, self.params = inner, inner.params

        @property
        def lr(self):
            return self.inner.lr

        @lr.setter
        def lr(self, v):
            self.inner.lr = v

        def step(self):
            self.inner.step()

    def run(compiled, nt=1):
        ps = model()
        o = Wrapped(optim.Adagrad(ps, lr=0.1))
        f = make_loss(*ps)
        if compiled:
            step = cg.compile(f, optimizer=o, strict=True, threads=nt)
            for _ in range(4):
                step(windows, labels)
            (plan,) = step._plans.values()
            assert plan.gradmode and plan.sparse_specs
        else:
            for _ in range(4):
                o.zero_grad()
                f(windows, labels).backward()
                o.step()
        return ps

    eager, c1, c2 = run(False), run(True, 1), run(True, 2)
    tight = dict(rtol=2e-5, atol=2e-6) if dt == np.float32 else dict(rtol=1e-11, atol=1e-13)
    for a, b, c in zip(eager, c1, c2):
        np.testing.assert_allclose(b.data, a.data, **tight)
        np.testing.assert_array_equal(b.data, c.data)
        assert b.grad is None
    np.testing.assert_array_equal(c1[0].data[35:], model()[0].data[35:])


def test_one_cycle_lr_rises_then_anneals_as_pytorch_defines_it():
    """max_lr / 25 -> max_lr over the first 30% (cosine), then down to
    max_lr / 25 / 1e4 at the last step; hand-computed for 10 steps."""
    import math
    p = [cg.tensor(np.ones(2), requires_grad=True)]
    o = cg.optim.SGD(p, lr=123.0)
    s = cg.optim.OneCycleLR(o, max_lr=1.0, total_steps=10)
    got = [o.lr] + [s.step() for _ in range(9)]
    lo, end = 0.04, 0.04 / 1e4
    want = [lo, end + 0 * lo, 0, 0, 0, 0, 0, 0, 0, 0]
    want[0], want[1], want[2] = lo, 1.0 + (lo - 1.0) * (1 + math.cos(math.pi / 2)) / 2, 1.0
    for t in range(3, 10):
        frac = (t - 2) / 7
        want[t] = end + (1.0 - end) * (1 + math.cos(math.pi * frac)) / 2
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert s.step() == pytest.approx(end)      # past the end: stays there
    with pytest.raises(ValueError, match="pct_start must be in"):
        cg.optim.OneCycleLR(o, max_lr=1.0, total_steps=10, pct_start=1.5)


def test_reduce_lr_on_plateau():
    p = [cg.tensor(np.ones(2), requires_grad=True)]
    o = cg.optim.Adam(p, lr=1.0)
    r = cg.optim.ReduceLROnPlateau(o, patience=1, factor=0.5)
    lrs = [r.step(m) for m in [5, 4, 4, 4, 4, 4, 3, 3, 3]]
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    # mode max, cooldown, the floor
    o2 = cg.optim.SGD(p, lr=1.0)
    r2 = cg.optim.ReduceLROnPlateau(o2, mode="max", patience=0, factor=0.1, cooldown=1,
                                    min_lr=0.05)
    assert [r2.step(m) for m in [0.5, 0.5, 0.5, 0.5, 0.5]] == [1.0, 0.1, 0.1, 0.05, 0.05]
    state = r.state_dict()
    r3 = cg.optim.ReduceLROnPlateau(cg.optim.SGD(p, lr=1.0), patience=1)
    r3.load_state_dict(state)
    assert (r3.best, r3.bad) == (r.best, r.bad)
    with pytest.raises(ValueError, match="the metric is nan"):
        r.step(float("nan"))


def _two_layer(seed, dt=np.float64):
    rng = np.random.default_rng(seed)
    return [cg.tensor(rng.normal(size=s).astype(dt), requires_grad=True)
            for s in ((6, 4), (6,), (3, 6), (3,))]


def _loss(ps, x, y):
    W, b, U, c = ps
    return cg.softmax_cross_entropy(cg.linear(cg.tanh(cg.linear(x, W, b)), U, c), y)


@pytest.mark.parametrize("make,groups", [
    (lambda ps: cg.optim.SGD(ps, lr=0.1), [{"lr": 0.3}, {"momentum": 0.9, "weight_decay": 0.01}]),
    (lambda ps: cg.optim.Adagrad(ps, lr=0.1), [{"lr": 0.02}, {"eps": 1e-3}]),
    (lambda ps: cg.optim.Adam(ps, lr=0.01), [{"betas": (0.5, 0.9)}, {"weight_decay": 0.1,
                                                                     "lr": 0.001}]),
    (lambda ps: cg.optim.AdamW(ps, lr=0.01), [{}, {"weight_decay": 0.3}]),
], ids=["sgd", "adagrad", "adam", "adamw"])
@pytest.mark.parametrize("compiled", [False, True])
def test_parameter_groups_train_as_one_optimiser_per_group(make, groups, compiled):
    """Two parameter groups with settings of their own train each group exactly as
    an optimiser of its own with those settings would (the oracle), eagerly and in
    a compiled step (which runs the optimiser's own step for groups)."""
    ps, ref = _two_layer(0), _two_layer(0)
    base = make([cg.tensor(np.zeros(1), requires_grad=True)])
    cls, kw = type(base), {"lr": base.lr, **{k: getattr(base, k) for k in base._hyper}}
    opt = cls([{"params": ps[:2], **groups[0]}, {"params": ps[2:], **groups[1]}], **kw)
    refs = [cls(ref[:2], **{**kw, **groups[0]}), cls(ref[2:], **{**kw, **groups[1]})]
    step = cg.compile(lambda x, y: _loss(ps, x, y), opt) if compiled else None
    rng = np.random.default_rng(1)
    for _ in range(4):
        x, y = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
        if compiled:
            step(x, y)
        else:
            opt.zero_grad()
            _loss(ps, x, y).backward()
            opt.step()
        for o in refs:
            o.zero_grad()
        _loss(ref, x, y).backward()
        for o in refs:
            o.step()
    for a, b in zip(ps, ref):
        np.testing.assert_array_equal(a.data, b.data)


def test_a_group_setting_changed_after_compiling_is_followed():
    ps, ref = _two_layer(0), _two_layer(0)
    opt = cg.optim.SGD(ps, lr=0.1)
    step = cg.compile(lambda x, y: _loss(ps, x, y), opt)
    oref = cg.optim.SGD(ref, lr=0.1)
    rng = np.random.default_rng(2)
    for k in range(4):
        if k == 2:      # the fused plain-SGD plan no longer fits: the step follows
            opt.param_groups[0]["momentum"] = 0.9
            oref.momentum = 0.9
        x, y = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
        step(x, y)
        oref.zero_grad()
        _loss(ref, x, y).backward()
        oref.step()
    for a, b in zip(ps, ref):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-14)


def test_parameter_groups_state_schedules_and_errors():
    ps = _two_layer(0)
    opt = cg.optim.Adam([{"params": ps[:2], "lr": 0.1}, {"params": ps[2:]}], lr=0.01)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.01
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)      # the optimiser's
    state = opt.state_dict()
    assert state["param_groups"] == [{"lr": 0.1, "params": [0, 1]}, {"params": [2, 3]}]
    again = cg.optim.Adam([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.01)
    again.load_state_dict(state)
    assert again.param_groups[0]["lr"] == 0.1 and "lr" not in dict(again.param_groups[1])
    with pytest.raises(ValueError, match="holds other parameters"):
        cg.optim.Adam([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.01).load_state_dict(state)
    # a schedule moves every group from its own base lr
    sched = cg.optim.StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    assert opt.lr == 0.005 and opt.param_groups[0]["lr"] == 0.05
    # settings are checked as the constructor checks them, and named
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        opt.param_groups[0]["lr"] = -1
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\)"):
        opt.param_groups[1]["betas"] = (0.9, 1.5)
    with pytest.raises(KeyError, match="has no setting 'momentum'"):
        opt.param_groups[0]["momentum"] = 0.9
    with pytest.raises(ValueError, match="group 1 has no 'params'"):
        cg.optim.SGD([{"params": ps[:2]}, {"lr": 0.1}], lr=0.1)
    with pytest.raises(TypeError, match="not a mix"):
        cg.optim.SGD([{"params": ps[:2]}, ps[2]], lr=0.1)
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        cg.optim.SGD([{"params": ps, "nesterov": True}], lr=0.1)
