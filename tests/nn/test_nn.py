"""cygrad.nn: registration and order, modes, state_dict, layers against NumPy
and gradcheck, initialisers' statistics, Dropout, save/load, batches."""

import os
import pickle

import numpy as np
import pytest

import cygrad as cg
from cygrad import nn
from cygrad.nn import init

rng = np.random.default_rng(11)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.WindowEncoder(20, 4, 3, generator=0, dtype=np.float64)
        self.hidden = nn.Linear(12, 8, generator=1, dtype=np.float64)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, 5, generator=2, dtype=np.float64)
        self.scale = 2.0            # a plain attribute: not a parameter

    def forward(self, windows):
        return self.out(self.drop(cg.tanh(self.hidden(self.emb(windows)))))


def test_parameters_are_registered_in_assignment_order():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["emb.weight", "hidden.weight", "hidden.bias", "out.weight", "out.bias"]
    assert [p.shape for p in net.parameters()] == [(20, 4), (8, 12), (8,), (5, 8), (5,)]
    assert list(net.state_dict()) == names
    net.out = nn.Linear(8, 2)            # reassignment replaces, keeps the slot order rule
    assert [n for n, _ in net.named_parameters()][-2:] == ["out.weight", "out.bias"]
    del net.drop
    assert "drop" not in dict(net.named_modules())
    shared = nn.Linear(3, 3)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(seq.parameters()) == 2       # a shared layer's parameters once

    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2))
    with pytest.raises(RuntimeError, match="super\\(\\).__init__"):
        Forgot()


def test_linear_matches_numpy_and_gradcheck():
    lin = nn.Linear(5, 3, generator=0, dtype=np.float64)
    x = rng.standard_normal((4, 5))
    np.testing.assert_allclose(lin(cg.tensor(x)).data,
                               x @ lin.weight.data.T + lin.bias.data, rtol=1e-13)
    x3 = rng.standard_normal((2, 4, 5))         # leading dimensions are kept
    np.testing.assert_allclose(lin(cg.tensor(x3)).data,
                               x3 @ lin.weight.data.T + lin.bias.data, rtol=1e-13)
    nb = nn.Linear(5, 3, bias=False, generator=0, dtype=np.float64)
    assert nb.bias is None and len(nb.parameters()) == 1
    xt = cg.tensor(x, requires_grad=True)
    assert cg.gradcheck(lambda x, w, b: (cg.tanh(lin(x)) ** 2).sum(),
                        [xt, lin.weight, lin.bias])
    assert cg.gradcheck(lambda x: nb(x).sum(), [xt])
    r = 1 / np.sqrt(5)
    assert np.abs(lin.weight.data).max() <= r
    with pytest.raises(ValueError, match="input has 4 features"):
        lin(cg.tensor(np.zeros((2, 4))))
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 3)


def test_embedding_and_window_encoder():
    emb = nn.Embedding(10, 3, generator=0, dtype=np.float64)
    ids = np.array([[1, 2], [2, 9]])
    np.testing.assert_array_equal(emb(ids).data, emb.weight.data[ids])
    np.testing.assert_array_equal(emb(np.array([4, 4])).data, emb.weight.data[[4, 4]])
    for mode in ("concat", "mean"):
        enc = nn.WindowEncoder(10, 3, 2, mode=mode, generator=0, dtype=np.float64)
        out = enc(ids).data
        rows = enc.weight.data[ids]
        want = rows.reshape(2, 6) if mode == "concat" else rows.mean(axis=1)
        np.testing.assert_allclose(out, want, rtol=1e-14)
        assert out.shape[1] == enc.output_size
        enc(ids).sum().backward()
        g = enc.weight.grad
        assert isinstance(g, cg.graph.SparseRows)     # sparse by default: rows of the windows
        dense = np.zeros((10, 3))
        np.add.at(dense, ids.reshape(-1), 1.0 if mode == "concat" else 0.5)
        np.testing.assert_allclose(g.to_dense(), dense)
    frozen = nn.Embedding.from_pretrained(np.eye(3), freeze=True)
    assert frozen.parameters()[0].requires_grad is False
    with pytest.raises(ValueError, match="windows must be \\(B, 2\\)"):
        enc(np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="indices must be integers"):
        emb(np.zeros(2))


def test_dropout_train_and_eval():
    drop = nn.Dropout(0.5, seed=1)
    x = cg.tensor(np.ones((200, 50)))
    y = drop(x).data
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.4 < (y == 0).mean() < 0.6
    assert not np.array_equal(drop(x).data, y)       # a new mask each call
    assert np.array_equal(nn.Dropout(0.5, seed=1, stream=drop._stream)(x).data, y)
    net = Net()
    net.eval()
    assert not any(m.training for m in net.modules())
    w = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(net(w).data, net(w).data)   # deterministic in eval
    assert net.drop(x) is x
    net.train()
    assert all(m.training for m in net.modules())


def test_dropout_without_a_key_compiles_and_draws_the_eager_masks():
    """drop(x) inside a model: the compiled step advances the layer's counter at every
    call as the eager layer does, so both train the same model (not one mask reused)."""
    nets = [Net(), Net()]
    for n in nets:
        n.drop.stream = 3           # both layers draw from one stream
    opts = [cg.optim.SGD(n.parameters(), lr=0.1) for n in nets]
    step = cg.compile(lambda w, y: cg.softmax_cross_entropy(nets[0](w), y), optimizer=opts[0],
                      strict=True)
    rng = np.random.default_rng(0)

    def both(w, y):         # the compiled step and the eager graph, then compare
        step(w, y)
        opts[1].zero_grad()
        cg.softmax_cross_entropy(nets[1](w), y).backward()
        opts[1].step()
        for p, q in zip(nets[0].parameters(), nets[1].parameters()):
            np.testing.assert_allclose(p.data, q.data, rtol=1e-10, atol=1e-12)
    for k in range(5):
        both(rng.integers(0, 20, (6, 3)), rng.integers(0, 5, 6))
    assert step.plans == 1 and nets[0].drop._count == nets[1].drop._count == 5
    nets[0].eval()          # no dropout: traced again, as the eager graph has none
    nets[1].eval()
    both(np.array([[1, 2, 3]]), np.array([1]))


def test_load_state_dict_checks_and_round_trips(tmp_path):
    a, b = Net(), Net()
    init.normal_(b.hidden.weight, generator=5)
    sd = a.state_dict()
    b.load_state_dict(sd)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    sd["hidden.weight"][0, 0] = 99.0            # a copy: the module is not changed
    assert a.hidden.weight.data[0, 0] != 99.0
    with pytest.raises(ValueError, match="'hidden.bias' has shape \\(3,\\)"):
        b.load_state_dict(dict(sd, **{"hidden.bias": np.zeros(3)}))
    with pytest.raises(TypeError, match="dtype float32"):
        b.load_state_dict(dict(sd, **{"hidden.bias": np.zeros(8, np.float32)}))
    with pytest.raises(KeyError, match="unexpected \\['extra'\\]"):
        b.load_state_dict(dict(sd, extra=np.zeros(1)))
    partial = {k: v for k, v in sd.items() if k != "out.bias"}
    with pytest.raises(KeyError, match="missing \\['out.bias'\\]"):
        b.load_state_dict(partial)
    assert b.load_state_dict(partial, strict=False) == (["out.bias"], [])
    cg.save(a.state_dict(), tmp_path / "m.cg")
    c = Net()
    c.load_state_dict(cg.load(tmp_path / "m.cg"))
    w = np.array([[1, 2, 3]])
    a.eval(), c.eval()
    np.testing.assert_array_equal(a(w).data, c(w).data)


def test_initialisers_have_their_variances():
    w = cg.tensor(np.zeros((400, 300)), requires_grad=True)
    n = w.size
    cases = [
        (init.xavier_uniform_, {}, 2 / 700),
        (init.xavier_normal_, {}, 2 / 700),
        (init.kaiming_uniform_, {"nonlinearity": "relu"}, 2 / 300),
        (init.kaiming_normal_, {"mode": "fan_out", "nonlinearity": "relu"}, 2 / 400),
    ]
    for fn, kw, var in cases:
        fn(w, generator=0, **kw)
        # the sample variance of n draws is within 5 standard errors of var
        assert abs(w.data.var() - var) < 5 * var * np.sqrt(2 / n), fn.__name__
    init.xavier_uniform_(w, generator=1)
    assert np.abs(w.data).max() <= np.sqrt(6 / 700)
    a = init.xavier_uniform_(cg.tensor(np.zeros((3, 4))), generator=7).data.copy()
    np.testing.assert_array_equal(init.xavier_uniform_(cg.tensor(np.zeros((3, 4))),
                                                       generator=7).data, a)
    init.zeros_(w)
    assert not w.data.any()
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.xavier_uniform_(cg.tensor(np.zeros(3)))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)


def test_save_refuses_foreign_corrupt_and_pickled_files(tmp_path):
    p = tmp_path / "s.cg"
    cg.save({"w": np.arange(6.0).reshape(2, 3), "step": 3, "betas": (0.9, 0.99),
             "name": "x", "none": None}, p)
    s = cg.load(p)
    assert s["step"] == 3 and s["betas"] == [0.9, 0.99] and s["none"] is None
    np.testing.assert_array_equal(s["w"], np.arange(6.0).reshape(2, 3))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]   # no temporary left
    data = p.read_bytes()
    (tmp_path / "trunc").write_bytes(data[: len(data) // 2])
    with pytest.raises(cg.FormatError, match="truncated or corrupt"):
        cg.load(tmp_path / "trunc")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(2))
    with pytest.raises(cg.FormatError, match="foreign"):
        cg.load(tmp_path / "foreign.npz")
    np.savez(tmp_path / "obj.npz", __cygrad__=np.array([{"x": 1}], dtype=object))
    with pytest.raises(cg.FormatError, match="not a cygrad archive"):
        cg.load(tmp_path / "obj.npz")          # a pickle inside is never unpickled
    (tmp_path / "pk").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(cg.FormatError):
        cg.load(tmp_path / "pk")
    # flip a byte inside an array: the checksum catches it even where zip's CRC is not read
    arr = np.frombuffer(data, np.uint8).copy()
    k = data.find(np.arange(6.0).tobytes())
    assert k > 0
    arr[k + 3] ^= 0xFF
    (tmp_path / "flip").write_bytes(arr.tobytes())
    with pytest.raises(cg.FormatError):
        cg.load(tmp_path / "flip")
    with pytest.raises(TypeError, match="dtype object"):
        cg.save({"x": np.array([object()])}, tmp_path / "bad")
    with pytest.raises(TypeError, match="keys must be strings"):
        cg.save({1: 2}, tmp_path / "bad")
    with pytest.raises(FileNotFoundError):
        cg.load(tmp_path / "missing")


def test_load_every_single_byte_flip_is_refused_or_harmless(tmp_path):
    """Flip each byte of a saved file in turn: cg.load raises FormatError, or (a byte of
    zip metadata that no reader uses, such as a timestamp) returns exactly what was saved;
    never another exception, never other values."""
    obj = {"w": np.arange(6.0).reshape(2, 3), "step": 7, "name": "run"}
    p = tmp_path / "s.cg"
    cg.save(obj, p)
    data = p.read_bytes()
    refused = 0
    for off in range(len(data)):
        b = bytearray(data)
        b[off] ^= 0xFF
        (tmp_path / "x").write_bytes(bytes(b))
        try:
            s = cg.load(tmp_path / "x")
        except cg.FormatError:
            refused += 1
            continue
        assert s["step"] == 7 and s["name"] == "run", off
        np.testing.assert_array_equal(s["w"], obj["w"])
    assert refused > len(data) // 2


def test_batches():
    X, y = np.arange(20).reshape(10, 2), np.arange(10)
    got = list(cg.data.batches((X, y), 4, seed=0))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    seen = np.concatenate([b[1] for b in got])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for xb, yb in got:
        np.testing.assert_array_equal(xb, X[yb])            # rows stay in step
    again = np.concatenate([b[1] for b in cg.data.batches((X, y), 4, seed=0)])
    np.testing.assert_array_equal(seen, again)
    plain = list(cg.data.batches(y, 3, shuffle=False, drop_last=True))
    assert [list(b) for b in plain] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="arrays\\[1\\] has 9 rows"):
        list(cg.data.batches((X, y[:9]), 2))
    with pytest.raises(ValueError, match="batch_size"):
        list(cg.data.batches(y, 0))


def test_dir_lists_the_public_names_only():
    """dir(cygrad.nn) and dir(cygrad.optim) show what the modules offer, not the
    modules they import (np, itertools, math, Tensor)."""
    import cygrad.nn as nn_mod
    import cygrad.optim as optim_mod
    for mod in (nn_mod, optim_mod):
        names = dir(mod)
        assert names == sorted(mod.__all__)
        assert not {"np", "itertools", "math", "Tensor", "writing"} & set(names)
        for n in names:
            getattr(mod, n)


def test_a_wrong_input_type_is_named_with_the_layer():
    """model([[...]]) (a Python list) or a string: TypeError naming the layer and
    what to pass, not an AttributeError from inside; an integer array: which
    dtypes are accepted."""
    import cygrad.nn as nn_mod
    m = nn_mod.Sequential(nn_mod.Linear(3, 4), nn_mod.Tanh(), nn_mod.Dropout(0.5),
                          nn_mod.Linear(4, 2))
    for bad, kind in (([[1.0, 2.0, 3.0]], "list"), ("abc", "str"), (3.0, "float")):
        with pytest.raises(TypeError, match=rf"Linear: the input is a {kind}; pass a NumPy "
                                            r"array or a cygrad Tensor"):
            m(bad)
    for layer, name in ((nn_mod.Tanh(), "Tanh"), (nn_mod.Dropout(0.2), "Dropout")):
        with pytest.raises(TypeError, match=rf"{name}: the input is a list"):
            layer([1.0])
    with pytest.raises(TypeError, match=r"an input is an array of uint8; inputs are cygrad "
                                        r"Tensors, float32 or float64 NumPy arrays"):
        m(np.ones((2, 3), np.uint8))
    assert m(np.ones((2, 3), np.float32)).shape == (2, 2)


def test_loss_modules_are_the_functional_losses():
    rng = np.random.default_rng(0)
    logits = cg.tensor(rng.normal(size=(6, 4)), requires_grad=True)
    labels = rng.integers(0, 4, 6)
    w = np.array([1.0, 2.0, 0.5, 1.0])
    for red in ("mean", "sum"):
        assert nn.CrossEntropyLoss(reduction=red)(logits, labels).item() == \
            cg.softmax_cross_entropy(logits, labels, reduction=red).item()
        assert nn.CrossEntropyLoss(weight=w, reduction=red)(logits, labels).item() == \
            cg.softmax_cross_entropy(logits, labels, reduction=red, weight=w).item()
        y = rng.normal(size=(6, 4))
        assert nn.MSELoss(red)(logits, y).item() == cg.mse_loss(logits, y, reduction=red).item()
        s = cg.tensor(rng.normal(size=6), requires_grad=True)
        t = rng.integers(0, 2, 6).astype(np.float64)
        assert nn.BCEWithLogitsLoss(red)(s, t).item() == \
            cg.sigmoid_binary_cross_entropy(s, t, reduction=red).item()
    # in a compiled step, as the functional loss
    model = nn.Linear(4, 3, dtype=np.float64, generator=0)
    ref = nn.Linear(4, 3, dtype=np.float64, generator=0)
    crit = nn.CrossEntropyLoss()
    step = cg.compile(lambda x, y: crit(model(x), y), cg.optim.SGD(model.parameters(), lr=0.1),
                      strict=True)
    opt = cg.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(3):
        x, y = rng.normal(size=(8, 4)), rng.integers(0, 3, 8)
        step(x, y)
        opt.zero_grad()
        cg.softmax_cross_entropy(ref(x), y).backward()
        opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        nn.MSELoss("none")


def test_batches_with_a_progress_bar(capsys):
    """progress=True shows tqdm's bar (on stderr) over the batches, and yields the
    same batches as without it."""
    X = np.arange(20.0).reshape(10, 2)
    plain = list(cg.data.batches(X, 3, seed=1))
    shown = list(cg.data.batches(X, 3, seed=1, progress="epoch 1"))
    assert all(np.array_equal(a, b) for a, b in zip(plain, shown)) and len(shown) == 4
    err = capsys.readouterr().err
    assert "epoch 1" in err and "/4 [" in err
