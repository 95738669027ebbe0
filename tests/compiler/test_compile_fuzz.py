"""Hypothesis drives the compiled step against the eager graph (issue 28): a random
model (dense or sparse table, activation, dropout layer with or without a key), loss
(reductions, class weights, (B, 1) scores, the mean squared error, max-margin),
optimiser (subclasses and an object of the user's included), dtype, clipping, dynamic
rows or not, and a
random sequence of batch sizes and changes made after compiling (train/eval,
freezing, hyper-parameters, the learning rate, a dropout rate). Every step must leave
both models with equal parameters (test_compile_guards.py's tolerance).

CYGRAD_COMPILE_FUZZ_EXAMPLES sets the number of examples (default 30)."""

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cygrad as cg
import test_compile_guards as G

EVENTS = {
    "eval": lambda m, o: m.all.eval(),
    "train": lambda m, o: m.all.train(),
    "freeze": lambda m, o: setattr(m.lin.weight, "requires_grad", False),
    "unfreeze": lambda m, o: setattr(m.lin.weight, "requires_grad", True),
    "lr": lambda m, o: setattr(o, "lr", o.lr * 0.5),
    "dropout_p": lambda m, o: setattr(m.drop, "p", 0.1),
    "momentum": lambda m, o: setattr(o, "momentum", 0.5),
    "weight_decay": lambda m, o: setattr(o, "weight_decay", 0.01),
}
LOSSES = ["softmax", "xent_sum", "xent_w", "xent_w_sum", "xent_on_tanh", "bce", "bce_col",
          "bce_col_sum", "mse", "mse_sum", "margin", "margin_sum"]


@st.composite
def cases(draw):
    sparse = draw(st.booleans())
    opts = sorted(k for k in G.OPTS if not (sparse and k == "sgd_momentum"))
    opt = draw(st.sampled_from(opts))
    loss = draw(st.sampled_from(LOSSES))
    if loss.endswith("_sum") and opt == "sgd":
        opt = "sgd_small"
    events = ["eval", "train", "freeze", "unfreeze", "lr", "dropout_p"]
    if opt in ("sgd", "sgd_small", "sgd_momentum") and not sparse:
        events += ["momentum", "weight_decay"]
    n = draw(st.integers(2, 7))
    steps = draw(st.lists(st.tuples(st.integers(1, 12),
                                    st.one_of(st.none(), st.sampled_from(events))),
                          min_size=n, max_size=n))
    return dict(
        dt=draw(st.sampled_from([np.float64, np.float32])), sparse=sparse, opt=opt,
        loss=loss, act=draw(st.sampled_from(["tanh", "leaky"])),
        drop_p=draw(st.sampled_from([0.0, 0.3])), keyless=draw(st.booleans()),
        clip=draw(st.sampled_from([None, ("clip_grad_norm", 0.5),
                                   ("clip_grad_value", 0.05)])),
        steps=steps, seed=draw(st.integers(0, 2 ** 16)), dynamic=draw(st.booleans()))


@settings(max_examples=int(os.environ.get("CYGRAD_COMPILE_FUZZ_EXAMPLES", "30")),
          deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_models_and_changes_train_as_the_eager_graph(case):
    rng = np.random.default_rng(case["seed"])
    batches, events = [], {}
    for k, (B, ev) in enumerate(case["steps"]):
        batches += G._batches(case["loss"], 1, B, case["dt"], rng)
        if ev is not None and k > 0:
            events[k] = EVENTS[ev]
    kw = {case["clip"][0]: case["clip"][1]} if case["clip"] else {}
    kw["dynamic_rows"] = case["dynamic"]
    step = G._side_by_side(case["opt"], dt=case["dt"], sparse=case["sparse"],
                           loss=case["loss"], events=events, batches=batches,
                           drop_p=case["drop_p"], act=case["act"], strict=False,
                           compile_kw=kw, keyless=case["keyless"], trained=False)
    assert step.fallbacks() == [] or not case["keyless"] and case["drop_p"] == 0.0
    assert isinstance(step, cg.CompiledStep)


@st.composite
def crf_cases(draw):
    return dict(dt=draw(st.sampled_from([np.float64, np.float32])),
                opt=draw(st.sampled_from(["sgd", "adagrad", "adam"])),
                reduction=draw(st.sampled_from(["token_mean", "sum", "mean"])),
                masked=draw(st.booleans()), dynamic=draw(st.booleans()),
                sentences=draw(st.lists(st.integers(1, 12), min_size=2, max_size=6)),
                maxlen=draw(st.integers(1, 30)), seed=draw(st.integers(0, 2 ** 16)))


@settings(max_examples=int(os.environ.get("CYGRAD_COMPILE_FUZZ_EXAMPLES", "30")),
          deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crf_cases())
def test_random_crf_models_and_sentence_batches_train_as_the_eager_graph(case):
    import test_compile_crf as T
    from cygrad import optim
    dt = case["dt"]
    ps = [T._model(dt), T._model(dt)]
    make = {"sgd": lambda p: optim.SGD(p, lr=0.01), "adagrad": lambda p: optim.Adagrad(p, lr=0.1),
            "adam": lambda p: optim.Adam(p, lr=0.01)}[case["opt"]]
    opts = [make(p) for p in ps]
    allowed = T.ALLOWED if case["masked"] else None
    step = cg.compile(T._loss_fn(ps[0], allowed, case["reduction"]), opts[0], strict=True,
                      dynamic_rows=case["dynamic"])
    ref = T._loss_fn(ps[1], allowed, case["reduction"])
    rng = np.random.default_rng(case["seed"])
    tol = 1e-9 if dt == np.float64 else 3e-4
    for S in case["sentences"]:
        bt = T._batch(rng, S, maxlen=case["maxlen"] + 1)
        got = step(*bt)
        opts[1].zero_grad()
        want = ref(*bt)
        want.backward()
        opts[1].step()
        assert abs(got - want.item()) <= tol * (1 + abs(want.item()))
        for a, b in zip(ps[0], ps[1]):
            np.testing.assert_allclose(a.data, b.data, rtol=tol, atol=tol * 0.1)
