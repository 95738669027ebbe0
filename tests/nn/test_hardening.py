"""Issue 31's classes of defects, each swept over its neighbours: files that never
lose a checkpoint (a snapshot written whole, 0-d arrays, permissions kept, every
foreign or malformed file refused by FormatError, odd paths), optimiser state that
would poison the next step refused, and a fork while a compiled step runs."""

import io
import json
import os
import stat
import sys
import threading
import zipfile

import numpy as np
import pytest

import cygrad as cg
from cygrad import nn, optim

# ---------------------------------------------------------------- saving and loading

def test_save_while_another_thread_writes_the_array_writes_a_loadable_snapshot(tmp_path):
    a = np.zeros((256, 256))
    stop = threading.Event()

    def writer():
        k = 0.0
        while not stop.is_set():
            a[...] = k
            k += 1.0
    t = threading.Thread(target=writer)
    t.start()
    try:
        for i in range(20):
            cg.save({"a": a}, tmp_path / "s.npz")
            got = cg.load(tmp_path / "s.npz")["a"]      # never refused: one snapshot
            assert got.shape == a.shape
    finally:
        stop.set()
        t.join()


@pytest.mark.parametrize("value", [np.array(1.5), np.array(3, np.int64), np.array(True),
                                   np.zeros((0,)), np.zeros((2, 0, 3), np.float32)])
def test_arrays_of_any_shape_come_back_with_it(value, tmp_path):
    cg.save({"x": value, "l": [value]}, tmp_path / "v.npz")
    back = cg.load(tmp_path / "v.npz")
    for got in (back["x"], back["l"][0]):
        assert got.shape == value.shape and got.dtype == value.dtype
        np.testing.assert_array_equal(got, value)


def test_a_module_with_a_scalar_parameter_and_its_adam_state_round_trip(tmp_path):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2, dtype=np.float64, generator=0)
            self.temperature = nn.Parameter(np.array(2.0))

        def forward(self, x):
            return self.lin(x) * self.temperature

    m = Scaled()
    opt = optim.Adam(m.parameters(), lr=0.1)
    loss = cg.softmax_cross_entropy(m(cg.tensor(np.ones((4, 3)))), np.array([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    cg.save({"model": m.state_dict(), "optim": opt.state_dict()}, tmp_path / "c.npz")
    ck = cg.load(tmp_path / "c.npz")
    m2 = Scaled()
    opt2 = optim.Adam(m2.parameters(), lr=0.1)
    m2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["optim"])
    assert m2.temperature.shape == ()
    np.testing.assert_array_equal(m2.temperature.data, m.temperature.data)
    np.testing.assert_array_equal(opt2.exp_avg[-1], opt.exp_avg[-1])


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o755])
def test_saving_over_a_file_keeps_its_permissions(mode, tmp_path):
    p = tmp_path / "keep.npz"
    cg.save({"a": 1}, p)
    os.chmod(p, mode)
    cg.save({"a": 2}, p)
    assert stat.S_IMODE(os.stat(p).st_mode) == mode and cg.load(p) == {"a": 2}


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _header(meta):
    return _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))


@pytest.mark.parametrize("kind", ["npy", "non_npy_member", "non_npy_header", "no_tree",
                                  "deep_tree", "torch", "foreign_npz", "text", "empty",
                                  "header_names_non_npy"])
def test_foreign_and_malformed_files_are_refused_by_format_error(kind, tmp_path):
    p = tmp_path / "bad.npz"
    if kind == "npy":
        np.save(p.with_suffix(".npy"), np.arange(3))
        os.replace(p.with_suffix(".npy"), p)
    elif kind == "non_npy_member":
        _zip(p, {"__cygrad__.npy": _header({"format": "cygrad-state", "version": 1,
                                             "tree": {"__array__": "a0", "shape": [1],
                                                      "dtype": "<f8", "sha256": "x"}}),
                 "a0": b"not an array"})
    elif kind == "non_npy_header":
        _zip(p, {"__cygrad__": b"{}"})
    elif kind == "no_tree":
        _zip(p, {"__cygrad__.npy": _header({"format": "cygrad-state", "version": 1})})
    elif kind == "deep_tree":
        tree = []
        for _ in range(5000):
            tree = [tree]
        _zip(p, {"__cygrad__.npy": _header({"format": "cygrad-state", "version": 1,
                                             "tree": "x"})[:0] or
                 _npy(np.frombuffer(('{"format": "cygrad-state", "version": 1, "tree": '
                                     + "[" * 5000 + "]" * 5000 + "}").encode(), np.uint8))})
    elif kind == "torch":
        _zip(p, {"archive/data.pkl": b"\x80\x02}q\x00.", "archive/version": b"3"})
    elif kind == "foreign_npz":
        np.savez(p, x=np.arange(3))
    elif kind == "text":
        p.write_text("hello")
    elif kind == "empty":
        p.write_bytes(b"")
    else:
        _zip(p, {"__cygrad__.npy": _header({"format": "cygrad-state", "version": 1,
                                             "tree": {"__array__": "a0", "shape": [],
                                                      "dtype": "<f8", "sha256": ""}}),
                 "a0.npy": b"garbage"})
    with pytest.raises(cg.FormatError) as e:
        cg.load(p)
    if kind == "torch":
        assert "PyTorch checkpoint" in str(e.value)


def test_cycles_and_deep_nesting_are_refused_by_name(tmp_path):
    a = [1]
    a.append(a)
    with pytest.raises(ValueError, match=r"obj\[1\] contains itself"):
        cg.save(a, tmp_path / "c.npz")
    d = {}
    d["self"] = {"again": d}
    with pytest.raises(ValueError, match="contains itself"):
        cg.save(d, tmp_path / "c.npz")
    deep = 0
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ValueError, match="nested more than 64 levels"):
        cg.save(deep, tmp_path / "c.npz")
    shared = [1, 2]
    cg.save({"a": shared, "b": shared}, tmp_path / "ok.npz")     # shared, not a cycle
    assert cg.load(tmp_path / "ok.npz") == {"a": [1, 2], "b": [1, 2]}
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))   # no temporary left


def test_odd_paths(tmp_path):
    long_name = "m" * 249 + ".npz"                # a legal 253-byte name
    cg.save({"a": 1}, tmp_path / long_name)
    assert cg.load(tmp_path / long_name) == {"a": 1}
    bpath = os.fsencode(tmp_path / "b.npz")
    cg.save({"b": 2}, bpath)
    assert cg.load(bpath) == {"b": 2}
    with pytest.raises(IsADirectoryError, match="is a directory"):
        cg.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        cg.load(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="path must be a str, bytes or os.PathLike"):
        cg.save({"a": 1}, 3.5)


# ---------------------------------------------------------------- optimiser state

@pytest.mark.parametrize("opt_name,key,bad", [
    ("adagrad", "sum", -1.0), ("adagrad", "sum", np.nan), ("adagrad", "sum", np.inf),
    ("adam", "exp_avg_sq", -1e-3), ("adam", "exp_avg", np.nan), ("adamw", "exp_avg_sq", np.nan),
    ("sgd", "momentum_buffer", np.inf)])
def test_state_that_would_poison_the_next_step_is_refused(opt_name, key, bad):
    p = cg.tensor(np.ones((3, 2)), requires_grad=True)
    make = {"adagrad": lambda: optim.Adagrad([p], lr=0.1),
            "adam": lambda: optim.Adam([p], lr=0.1),
            "adamw": lambda: optim.AdamW([p], lr=0.1),
            "sgd": lambda: optim.SGD([p], lr=0.1, momentum=0.9)}[opt_name]
    opt = make()
    p.grad = np.ones((3, 2))
    opt.step()
    state = opt.state_dict()
    before = opt.state_dict()
    state["state"][0][key] = state["state"][0][key].copy()
    state["state"][0][key][1, 0] = bad
    with pytest.raises(ValueError, match=rf"parameter 0 '{key}'\[1, 0\] = .*finite number"):
        opt.load_state_dict(state)
    after = opt.state_dict()
    for k, v in before["state"][0].items():
        np.testing.assert_array_equal(after["state"][0][k], v)


# ---------------------------------------------------------------- fork

@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_fork_while_a_compiled_step_holds_its_lock_does_not_block_the_child():
    W = cg.tensor(np.ones((4, 3)), requires_grad=True)
    b = cg.tensor(np.zeros(4), requires_grad=True)
    opt = optim.SGD([W, b], lr=0.1)
    step = cg.compile(lambda x, y: cg.softmax_cross_entropy(cg.linear(x, W, b), y),
                      optimizer=opt, strict=True)
    x, y = np.ones((2, 3)), np.array([0, 1])
    step(x, y)
    step._lock.acquire()            # as if another thread were inside a step
    try:
        pid = os.fork()
        if pid == 0:                # the child: the step must run
            code = 1
            try:
                step(x, y)
                code = 0
            finally:
                os._exit(code)
        deadline = 30
        import time
        t0 = time.time()
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() - t0 > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the child blocked on the step's lock")
            time.sleep(0.05)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        step._lock.release()


# ---------------------------------------------------------------- the command line

def _cli(args, tmp_path):
    import subprocess
    return subprocess.run([sys.executable, "-m", "cygrad", *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("option,value", [
    ("--hidden", "16"), ("--window", "1"), ("--dim", "8"), ("--activation", "relu"),
    ("--loss", "softmax"), ("--average", None), ("--prefix-dim", "3"),
    ("--decode", "greedy"), ("--doc-context", "0.25"), ("--suffix-dim", "5")])
def test_resume_refuses_every_changed_model_option_by_name(option, value, tmp_path):
    base = ["train", "--out", "m", "--no-progress", "--epochs", "1", "--hidden", "12",
            "--dim", "6", "--suffix-dim", "4", "--prefix-dim", "2", "--shape-dim", "2"]
    r = _cli(base, tmp_path)
    assert r.returncode == 0, r.stderr
    again = ["train", "--out", "m", "--no-progress", "--epochs", "2", "--resume"]
    r = _cli(again + [option] + ([value] if value else []), tmp_path)
    assert r.returncode != 0
    field = {"--window": "k", "--hidden": "hidden"}.get(option, option[2:].replace("-", "_"))
    assert f"built with {field}=" in r.stderr, r.stderr[-800:]
    r = _cli(again + ["--hidden", "12"], tmp_path)      # the checkpoint's own: resumes
    assert r.returncode == 0, r.stderr[-800:]


def test_patience_and_positive_are_checked_by_name(tmp_path):
    r = _cli(["train", "--out", "m", "--no-progress", "--patience", "0"], tmp_path)
    assert r.returncode != 0 and "patience must be an integer >= 1" in r.stderr
    r = _cli(["train", "--out", "m2", "--no-progress", "--epochs", "1", "--loss", "logistic",
              "--positive", "FOO"], tmp_path)
    assert r.returncode != 0 and "'FOO': no tag of that type" in r.stderr
    assert "LOC" in r.stderr


# ---------------------------------------------------------------- text

ODD = ["New\u00a0York", "Tokyo\u3000Station", "a\u2028b", "c\u0085d", "e\x0cf", "g\x0bh"]


def test_a_token_keeps_its_odd_whitespace_and_lines_stay_lines(tmp_path):
    from cygrad.ner.cli import read_tokenized
    from cygrad.ner.data import read_conll
    p = tmp_path / "odd.conll"
    p.write_text("".join(f"{tok} B-LOC\n" for tok in ODD) + "\nplain O\n", encoding="utf-8")
    sents = read_conll(str(p))
    assert [s.tokens for s in sents] == [ODD, ["plain"]]
    toks = read_tokenized("".join(f"{tok}\n" for tok in ODD) + "\r\nplain\r\n")
    assert [s.tokens for s in toks] == [ODD, ["plain"]]


def test_tag_input_with_a_byte_order_mark_and_odd_tokens(tmp_path):
    r = _cli(["train", "--out", "m", "--no-progress", "--epochs", "1", "--hidden", "8",
              "--dim", "4"], tmp_path)
    assert r.returncode == 0, r.stderr[-800:]
    (tmp_path / "in.txt").write_bytes("\ufeffJordan said hello .\n".encode("utf-8"))
    r = _cli(["tag", "--model", "m", "--input", "in.txt", "--format", "inline"], tmp_path)
    assert r.returncode == 0 and "\ufeff" not in r.stdout, r.stdout
    assert r.stdout.split("said")[0].replace("[PER", "").replace("[LOC", "").replace(
        "[ORG", "").replace("[MISC", "").replace("]", "").strip() == "Jordan", r.stdout
    (tmp_path / "tok.txt").write_text("\ufeff" + "\n".join(ODD) + "\n", encoding="utf-8")
    r = _cli(["tag", "--model", "m", "--input", "tok.txt", "--tokenized"], tmp_path)
    assert r.returncode == 0, r.stderr[-800:]
    rows = [ln.split("\t") for ln in r.stdout.split("\n") if ln]
    assert [row[0] for row in rows] == ODD      # one output row per input token, intact


@pytest.mark.slow
def test_two_trainings_into_one_directory_the_second_is_refused_by_name(tmp_path):
    import subprocess
    first = subprocess.Popen([sys.executable, "-m", "cygrad", "train", "--out", "m",
                              "--no-progress", "--epochs", "3"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import time
        t0 = time.time()
        while not (tmp_path / "m" / ".lock").exists() or \
                not (tmp_path / "m" / ".lock").read_text().strip():
            assert time.time() - t0 < 60 and first.poll() is None
            time.sleep(0.05)
        r = _cli(["train", "--out", "m", "--no-progress", "--epochs", "1"], tmp_path)
        assert r.returncode != 0
        assert f"another training run (pid {first.pid}) is writing this directory" in r.stderr
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-800:]
    r = _cli(["train", "--out", "m", "--no-progress", "--epochs", "1"], tmp_path)
    assert r.returncode == 0, r.stderr[-800:]       # the lock went with the first run


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_vectors_are_blamed_on_the_vectors_file(bad, tmp_path):
    from cygrad.ner.cli import read_vectors  # (the old name: vectors.load)
    from cygrad.ner.vectors import load
    assert read_vectors is load
    p = tmp_path / "v.txt"
    p.write_text(f"the 0.1 0.2\ncity 0.3 {bad}\n")
    with pytest.raises(ValueError, match=r"v.txt:2: the vector of 'city' holds NaN or infinity"):
        load(str(p))


@pytest.mark.parametrize("bad", [[1.0, 2.0], "ab", 3.0, None])
def test_tensor_data_replaced_by_a_non_array_is_named_at_every_entry(bad):
    """``p.data = [1, 2]``: the forward pass, an optimiser (made or stepping) and a
    compiled step each raise a TypeError that names the tensor's .data and how to
    assign it; never a deep AttributeError."""
    import cygrad as cg
    from cygrad import nn
    m = nn.Linear(3, 2, generator=0)
    opt = cg.optim.Adam(m.parameters(), lr=0.1)
    x, y = np.ones((4, 3), np.float32), np.zeros(4, np.int64)
    step = cg.compile(lambda xb, yb: cg.softmax_cross_entropy(m(xb), yb), opt)
    step(x, y)
    cg.softmax_cross_entropy(m(x), y).backward()
    m.weight.data = bad
    msg = r"the tensor.s \.data is a \w+, not a NumPy array \(assign an array"
    for call in (lambda: m(x), opt.step, lambda: cg.optim.SGD(m.parameters(), lr=0.1),
                 lambda: step(x, y)):
        with pytest.raises(TypeError, match=msg):
            call()
