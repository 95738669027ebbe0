"""Embedding bags in compiled steps (issue 28): cg.embedding_bag_windows has a
plan task (forward: the kernel's own loop; backward: every item of a slot's bag
gets the slot's gradient over the bag's size, as the graph op's row-sparse
gradient). Each test runs the compiled step beside the eager graph, step by step:
Adagrad and lazy Adam equal bit for bit (the rows of a bag table summed in the
order the eager optimiser sums them), SGD to rounding (its -lr rides on the loss
gradient), the optimisers a plan does not fuse through .grad; a bag table read
twice (max-margin's true and corrupt windows), batches smaller than the first,
and 1 or 2 threads."""

import numpy as np
import pytest

import cygrad as cg
from cygrad import optim


def _bags(rng, V=30, nbags=12):
    sizes = rng.integers(0, 6, nbags)
    sizes[0] = 0                                    # an empty bag
    ptr = np.r_[0, np.cumsum(sizes)]
    items = rng.integers(0, V, ptr[-1])
    items[1:3] = items[0]                           # a row twice in one bag
    return ptr, items


def _model(dt, seed=0, V=30, d=4, w=3, Vw=20, dw=5, H=7, C=4):
    rng = np.random.default_rng(seed)
    shapes = [(V, d), (Vw, dw), (H, w * (d + dw)), (H,), (C, H), (C,)]
    return [cg.tensor((rng.standard_normal(s) * 0.3).astype(dt), requires_grad=True)
            for s in shapes]


def _loss(params, ptr, items, kind):
    N, E, W, b, U, c = params

    def logits(words, bags):
        x = cg.concat([cg.embedding_windows(E, words, sparse=True),
                       cg.embedding_bag_windows(N, bags, ptr, items)], axis=1)
        return cg.linear(cg.tanh(cg.linear(x, W, b)), U, c)

    if kind == "xent":
        def fn(words, bags, labels):
            return cg.softmax_cross_entropy(logits(words, bags), labels)
    else:   # max-margin: the bag table read twice (true and corrupt windows)
        def fn(words, bags, cwords, cbags):
            n = words.shape[0]
            return cg.max_margin(logits(words, bags).reshape(n),
                                 logits(cwords, cbags).reshape(n))
    return fn


def _batch(rng, B, kind, nbags=12, Vw=20, w=3, C=4):
    one = (rng.integers(0, Vw, (B, w)), rng.integers(0, nbags, (B, w)))
    if kind == "xent":
        return one + (rng.integers(0, C, B),)
    return one + (rng.integers(0, Vw, (B, w)), rng.integers(0, nbags, (B, w)))


OPTS = {
    "adagrad": lambda p: optim.Adagrad(p, lr=0.1),
    "adam": lambda p: optim.Adam(p, lr=0.01),
    "sgd": lambda p: optim.SGD(p, lr=0.1),
    "clip": lambda p: optim.Adagrad(p, lr=0.1),       # gradient mode (clipping)
}


@pytest.mark.parametrize("ids", [np.int64, np.int32])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["xent", "margin"])
@pytest.mark.parametrize("opt", sorted(OPTS))
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_a_compiled_bag_step_trains_as_the_eager_graph(dt, opt, kind, threads, ids,
                                                       threaded_plans):
    rng = np.random.default_rng(1)
    ptr, items = _bags(rng)
    ms = [_model(dt, C=4 if kind == "xent" else 1) for _ in range(2)]
    opts = [OPTS[opt](m) for m in ms]
    fns = [_loss(m, ptr, items, kind) for m in ms]
    kw = {"clip_grad_norm": 0.5} if opt == "clip" else {}
    step = cg.compile(fns[0], optimizer=opts[0], strict=True, **kw)
    exact = opt != "sgd"
    with cg.threads(threads):
        for k, B in enumerate([16, 16, 5, 16, 9]):
            bt = tuple(a.astype(ids) if a.ndim == 2 else a for a in _batch(rng, B, kind))
            got = step(*bt)
            opts[1].zero_grad()
            loss = fns[1](*bt)
            loss.backward()
            if opt == "clip":
                optim.clip_grad_norm(ms[1], 0.5)
            opts[1].step()
            np.testing.assert_allclose(got, float(loss.data), rtol=1e-5)
            for i, (a, b) in enumerate(zip(ms[0], ms[1])):
                if exact:
                    np.testing.assert_array_equal(a.data, b.data,
                                                  err_msg=f"parameter {i}, step {k}")
                else:
                    np.testing.assert_allclose(a.data, b.data, rtol=1e-5 if dt == np.float32
                                               else 1e-12, atol=1e-6 if dt == np.float32
                                               else 1e-13, err_msg=f"parameter {i}, step {k}")
    assert step.plans >= 1 and not step.fallbacks()


def test_the_bag_step_runs_on_its_plan_and_is_the_same_for_any_thread_count(threaded_plans):
    rng = np.random.default_rng(3)
    ptr, items = _bags(rng, V=300, nbags=200)
    runs = []
    for nt in (1, 2, 3):
        m = _model(np.float32, V=300)
        fn = _loss(m, ptr, items, "xent")
        step = cg.compile(fn, optimizer=optim.Adagrad(m, lr=0.1), strict=True)
        r = np.random.default_rng(4)
        with cg.threads(nt):
            for _ in range(4):
                step(r.integers(0, 20, (256, 3)), r.integers(0, 200, (256, 3)),
                     r.integers(0, 4, 256))
        runs.append([p.data.copy() for p in m])
        assert step.plans == 1 and not step.fallbacks()
        assert "bag" in step.describe(np.zeros((256, 3), np.int64), np.zeros((256, 3), np.int64),
                                      np.zeros(256, np.int64))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


def test_bag_ids_out_of_range_are_refused_before_any_update():
    rng = np.random.default_rng(5)
    ptr, items = _bags(rng)
    m = _model(np.float64)
    step = cg.compile(_loss(m, ptr, items, "xent"), optimizer=optim.Adagrad(m, lr=0.1),
                      strict=True)
    bt = _batch(rng, 8, "xent")
    step(*bt)
    before = [p.data.copy() for p in m]
    bad = bt[1].copy()
    bad[3, 1] = len(ptr) - 1                        # one past the last bag
    with pytest.raises((IndexError, ValueError), match="embedding_bag_windows|windows|bags"):
        step(bt[0], bad, bt[2])
    for a, b in zip(before, m):
        np.testing.assert_array_equal(a, b.data)


def test_ptr_and_items_as_step_arguments_are_refused_by_name():
    rng = np.random.default_rng(6)
    ptr, items = _bags(rng)
    m = _model(np.float64)
    N = m[0]

    def fn(bags, p, it):
        return cg.mse_loss(cg.embedding_bag_windows(N, bags, p, it), np.zeros((4, 12)))

    step = cg.compile(fn, optimizer=optim.SGD(m[:1], lr=0.1), strict=True)
    with pytest.raises(cg.CompileError, match="ptr or items"):
        step(rng.integers(0, 12, (4, 3)), ptr, items)
