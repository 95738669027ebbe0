"""Issue 13's bad-input probe, re-run against the installed package: every
reproducer class of the issue, each case in its own child process, classified as

  correct      the call works and gives the right answer (checked in the child)
  clean error  an exception (or a CLI `error:` line and a non-zero exit) that
               names the problem; nothing changed
  crash        the child died of a signal
  hang         the child did not finish in time
  wrong        an answer that is wrong, a traceback from the CLI, a refusal
               without a message, or success where an error was due

    python tests/kernels/probe_robustness.py [--big]   (--big: arrays past 2**31 elements, ~17 GB)

Prints a table and the totals; exits 1 unless there are 0 crashes, hangs and
wrong answers. The kernel fuzzer (tests/kernels/fuzz_kernels.py) is the random half of
the probe; this is the hand-written half.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

PRE = """
import numpy as np, cygrad as cg, cygrad.kernels as K, cygrad.kernels.reference as R, threading
rng = np.random.default_rng(0)
def refuse(f, *words):
    try:
        f()
    except Exception as e:
        msg = str(e)
        assert msg and all(w in msg for w in words), (type(e).__name__, msg)
        print("CLEAN", type(e).__name__, msg[:100])
        return
    raise AssertionError("accepted")
"""

# (name, code): code prints CLEAN for a clean refusal, anything else that exits 0 is
# "correct"; an AssertionError or any other exception is "wrong".
PY = [
    ("set_num_threads(10**6)", "refuse(lambda: cg.set_num_threads(10**6), '256')"),
    ("set_num_threads(2**31)", "refuse(lambda: cg.set_num_threads(2**31), '256')"),
    ("set_num_threads(0)", "refuse(lambda: cg.set_num_threads(0))"),
    ("WindowTrainer(threads=10**6)",
     "from cygrad.ner import WindowTrainer\n"
     "refuse(lambda: WindowTrainer(np.ones((5, 2)), np.ones((3, 6)), np.zeros(3), "
     "np.ones((2, 3)), np.zeros(2), threads=10**6), '256')"),
    ("threads() entered from two threads",
     "n0 = cg.get_num_threads()\n"
     "def f():\n    with cg.threads(1):\n        K.tanh(np.ones(10))\n"
     "ts = [threading.Thread(target=f) for _ in range(8)]\n"
     "[t.start() for t in ts]; [t.join() for t in ts]\n"
     "assert cg.get_num_threads() == n0, (cg.get_num_threads(), n0)"),
    ("windows changed by another thread during gather",
     "table = rng.standard_normal((50, 4)); win = np.zeros((4000, 5), np.int64)\n"
     "stop = False\n"
     "def flip():\n    while not stop:\n        win[7, 3] = 10**9; win[7, 3] = 3\n"
     "t = threading.Thread(target=flip); t.start()\n"
     "for _ in range(300):\n"
     "    try:\n        out = K.embedding_gather(table, win)\n"
     "    except IndexError:\n        continue\n"
     "    assert np.isfinite(out).all()\n"
     "stop = True; t.join()"),
    ("int64 windows that view the table being updated",
     "table = np.zeros((6, 4)); iv = table.view(np.int64); iv[0, :2] = [1, 2]\n"
     "win = iv[0:1, 0:2]; ids = win.copy(); dX = np.ones((1, 8))\n"
     "want = table.copy(); R.embedding_sgd_update(want, ids, dX, 0.5)\n"
     "K.embedding_sgd_update(table, win, dX, 0.5)\n"
     "np.testing.assert_array_equal(table[1:], want[1:])"),
    ("tanh of big-endian",
     "np.testing.assert_allclose(K.tanh(np.array([.5, 1., 2.], '>f8')), np.tanh([.5, 1, 2]))"),
    ("matmul of big-endian and misaligned",
     "a = rng.standard_normal((5, 3)).astype('>f4')\n"
     "buf = np.zeros(4 * 12 + 1, np.uint8); "
     "b = np.frombuffer(buf, np.float32, 12, 1).reshape(3, 4)\n"
     "b[...] = rng.standard_normal((3, 4))\n"
     "np.testing.assert_allclose(K.matmul(a, b), a.astype(np.float64) @ b, rtol=1e-5)"),
    ("tanh out partly overlapping z",
     "buf = np.arange(10.)\nrefuse(lambda: K.tanh(buf[:-1], out=buf[1:]), 'overlap')"),
    ("add_bias(Z, Z[0], out=Z)",
     "Z = rng.standard_normal((4, 3)); want = Z + Z[0]\n"
     "try:\n    K.add_bias(Z, Z[0], out=Z)\nexcept ValueError as e:\n    print('CLEAN', e)\n"
     "else:\n    np.testing.assert_allclose(Z, want)"),
    ("embedding_gather out inside the table",
     "T = rng.standard_normal((10, 4))\n"
     "refuse(lambda: K.embedding_gather(T, np.array([[1, 2]]), out=T[:1, :8].reshape(1, 8)"
     " if False else T.reshape(-1)[:8].reshape(1, 8)), 'overlap')"),
    ("adagrad_update(p, p, g)",
     "p = np.ones(5)\nrefuse(lambda: K.adagrad_update(p, p, np.ones(5), 0.1), 'overlap')"),
    ("embedding_adagrad_update with dX inside the table",
     "T = np.ones((6, 4)); G = np.ones((6, 4))\n"
     "refuse(lambda: K.embedding_adagrad_update(T, G, np.array([[0, 1]]), "
     "T.reshape(-1)[:8].reshape(1, 8), 0.1), 'overlap')"),
    ("softmax CE with out partly overlapping logits",
     "buf = rng.standard_normal(13); L = buf[:12].reshape(4, 3)\n"
     "refuse(lambda: K.softmax_cross_entropy(L, np.array([0, 1, 2, 0]), "
     "out=buf[1:].reshape(4, 3)), 'overlap')"),
    ("softmax CE in place (out is logits)",
     "L = rng.standard_normal((4, 3)); y = np.array([0, 1, 2, 0])\n"
     "want = R.softmax_cross_entropy(L.copy(), y)\n"
     "got = K.softmax_cross_entropy(L, y, out=L)\n"
     "assert abs(got[0] - want[0]) < 1e-12; np.testing.assert_allclose(L, want[1], atol=1e-15)"),
    ("constrained_viterbi with a float mask",
     "refuse(lambda: K.constrained_viterbi(np.zeros((2, 2)), np.array([0, 2]), "
     "np.full((2, 2), 0.5), np.ones(2, bool)), 'bool')"),
    ("graph: saved array written before backward",
     "x = cg.tensor(np.ones(3), requires_grad=True); "
     "w = cg.tensor(np.ones(3) * 2, requires_grad=True)\n"
     "y = (x * w).sum()\n"
     "refuse(lambda: w.data.__setitem__(Ellipsis, 0), 'read-only')\n"
     "y.backward(); np.testing.assert_array_equal(x.grad, 2)"),
    ("graph: optimiser step before a stale backward",
     "w = cg.tensor(np.ones(3), requires_grad=True); opt = cg.optim.SGD([w], lr=0.1)\n"
     "stale = (w * w).sum(); (w * 1.0).sum().backward(); opt.step()\n"
     "refuse(lambda: stale.backward(), 'updated in place')"),
    ("graph: backward twice",
     "x = cg.tensor(np.ones(3), requires_grad=True); y = (x * x).sum(); y.backward()\n"
     "refuse(lambda: y.backward(), 'retain_graph')"),
    ("gradcheck(eps=0)",
     "refuse(lambda: cg.gradcheck(lambda a: (a * a).sum(), "
     "[cg.tensor(np.ones(2), requires_grad=True)], eps=0), 'eps')"),
    ("max_margin / sigmoid BCE on read-only (mmap) inputs",
     "import tempfile, os\n"
     "d = tempfile.mkdtemp(); p = os.path.join(d, 'a.npy'); np.save(p, np.array([0.5, -1., 2.]))\n"
     "a = np.load(p, mmap_mode='r'); t = np.array([1., 0., 1.]); t.flags.writeable = False\n"
     "np.testing.assert_allclose(K.max_margin(a, a[::-1].copy())[0], "
     "R.max_margin(np.array(a), np.array(a[::-1]))[0])\n"
     "np.testing.assert_allclose(K.sigmoid_binary_cross_entropy(a, t)[0], "
     "R.sigmoid_binary_cross_entropy(np.array(a), t)[0])"),
    ("ndarray + SparseRows and SparseRows + ndarray",
     "from cygrad.graph import SparseRows\n"
     "s = SparseRows(np.array([1, 1]), np.ones((2, 3)), (4, 3)); d = np.ones((4, 3))\n"
     "np.testing.assert_array_equal(d + s, s + d); assert (d + s)[1, 0] == 3"),
    ("fork after two threads, kernel in the child",
     "import os\ncg.set_num_threads(2); K.matmul(np.ones((300, 300)), np.ones((300, 300)))\n"
     "pid = os.fork()\n"
     "if pid == 0:\n    K.matmul(np.ones((300, 300)), np.ones((300, 300))); os._exit(0)\n"
     "_, st = os.waitpid(pid, 0); assert st == 0, st"),
    ("CoNLL file starting with a UTF-8 BOM",
     "import tempfile, os\nfrom cygrad.ner.data import read_conll\n"
     "p = os.path.join(tempfile.mkdtemp(), 'a.conll')\n"
     "open(p, 'wb').write('\\ufeffEU NNP B-NP B-ORG\\nrejects VBZ B-VP O\\n'.encode('utf-8'))\n"
     "sents = read_conll(p); assert sents[0].tokens == ['EU', 'rejects'], sents"),
    ("tensor of big-endian float32 keeps float32",
     "assert cg.tensor(np.ones(2, '>f4')).dtype == np.float32"),
    ("compiled step, bad ids: nothing updated",
     "E = cg.tensor(rng.standard_normal((10, 3)), requires_grad=True)\n"
     "W = cg.tensor(rng.standard_normal((4, 6)), requires_grad=True)\n"
     "opt = cg.optim.SGD([E, W], lr=0.1)\n"
     "step = cg.compile(lambda win, y: "
     "cg.softmax_cross_entropy(cg.embedding_windows(E, win) @ W.T, y), optimizer=opt)\n"
     "win = rng.integers(0, 10, (5, 2)); y = rng.integers(0, 4, 5)\n"
     "import warnings\nwith warnings.catch_warnings():\n    warnings.simplefilter('ignore')\n"
     "    step(win, y); step(win, y)\n"
     "    before = E.data.copy(), W.data.copy(); bad = win.copy(); bad[2, 1] = 10\n"
     "    refuse(lambda: step(bad, y), 'out of range')\n"
     "np.testing.assert_array_equal(E.data, before[0]); "
     "np.testing.assert_array_equal(W.data, before[1])"),
    ("compiled step, NaN lr",
     "W = cg.tensor(np.ones((2, 3)), requires_grad=True); opt = cg.optim.SGD([W], lr=0.1)\n"
     "refuse(lambda: setattr(opt, 'lr', float('nan')), 'lr')"),
]

BIG = [
    ("tanh in place on 2**31 + 7 float32",
     "z = np.full(2**31 + 7, 0.5, np.float32); K.tanh(z, out=z)\n"
     "assert abs(z[0] - np.tanh(0.5)) < 1e-7 and (z == z[0]).all(), (z[0], z[-1])"),
    ("sgd_update on 2**31 + 7 float32",
     "p = np.ones(2**31 + 7, np.float32); g = np.ones_like(p)\n"
     "K.sgd_update(p, g, 0.5); assert (p == 0.5).all()"),
]


def run_py(code, timeout):
    src = PRE + "\n" + code
    try:
        p = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return "hang", ""
    if p.returncode < 0:
        return "crash", f"signal {-p.returncode}"
    if p.returncode != 0:
        return "wrong", p.stderr.strip().splitlines()[-1][:160]
    return ("clean error" if "CLEAN" in p.stdout else "correct"), p.stdout.strip()[:160]


def cli(*args, timeout=300):
    try:
        p = subprocess.run([sys.executable, "-m", "cygrad.ner.cli", *args],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "hang", ""
    if p.returncode < 0:
        return "crash", f"signal {-p.returncode}"
    err = p.stderr.strip()
    if "Traceback" in err:
        return "wrong", err.splitlines()[-1][:160]
    if p.returncode == 0:
        return "wrong", "exit 0"
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    if not lines:
        return "wrong", f"exit {p.returncode} without an error line"
    return "clean error", lines[-1][:160]


def cli_cases(work):
    """Malformed files and CLI calls: each must end in one `error:` line, exit != 0."""
    import hashlib

    base = os.path.join(work, "model")
    subprocess.run([sys.executable, "-m", "cygrad.ner.cli", "train", "--out", base,
                    "--epochs", "1", "--no-progress"], check=True, capture_output=True)
    text = os.path.join(work, "in.txt")
    with open(text, "w") as f:
        f.write("Police in Jordan arrested 12 people .\n")

    def variant(name, edit):
        d = os.path.join(work, name)
        shutil.copytree(base, d)
        edit(d)
        return d

    def meta(d):
        with open(os.path.join(d, "model.json")) as f:
            return json.load(f)

    def write_meta(d, m):
        with open(os.path.join(d, "model.json"), "w") as f:
            json.dump(m, f)

    def params_path(d):
        return os.path.join(d, meta(d)["params_file"])

    def set_params_bytes(d, data):
        m = meta(d)
        with open(params_path(d), "wb") as f:
            f.write(data)
        m["params_sha256"] = hashlib.sha256(data).hexdigest()
        write_meta(d, m)

    def k_float(d):
        m = meta(d)
        m["config"]["k"] = 2.0
        write_meta(d, m)

    def no_unk(d):
        m = meta(d)
        m["vocab"]["words"].remove("<unk>")
        write_meta(d, m)

    def truncated(d):
        with open(params_path(d), "rb") as f:
            data = f.read()
        set_params_bytes(d, data[: len(data) // 2])

    def nan_params(d):
        import io

        import numpy as np
        with np.load(params_path(d)) as z:
            arrs = {k: z[k] for k in z.files}
        k0 = sorted(arrs)[0]
        arrs[k0] = arrs[k0].copy()
        arrs[k0].flat[0] = np.nan
        buf = io.BytesIO()
        np.savez(buf, **arrs)
        set_params_bytes(d, buf.getvalue())

    def state_missing_key(d):
        p = os.path.join(d, "checkpoint", "epoch-0001", "state.json")
        with open(p) as f:
            s = json.load(f)
        s.pop("best_f1")
        with open(p, "w") as f:
            json.dump(s, f)

    empty = os.path.join(work, "empty.conll")
    open(empty, "w").close()
    docstart = os.path.join(work, "docstart.conll")
    with open(docstart, "w") as f:
        f.write("-DOCSTART- -X- -X- O\n\n")
    cases = [
        ("cli: train --threads 0", ("train", "--out", os.path.join(work, "t0"), "--threads", "0")),
        ("cli: train --threads -2", ("train", "--out", os.path.join(work, "t1"),
                                     "--threads", "-2")),
        ("cli: train on an empty file", ("train", "--train", empty, "--out",
                                         os.path.join(work, "e"))),
        ("cli: train on -DOCSTART- only", ("train", "--train", docstart, "--out",
                                            os.path.join(work, "e2"))),
        ("cli: tag, model missing", ("tag", "--model", os.path.join(work, "nope"),
                                     "--input", text)),
        ("cli: tag, model.json k: 2.0", ("tag", "--model", variant("k", k_float), "--input", text)),
        ("cli: tag, vocabulary without <unk>", ("tag", "--model", variant("u", no_unk),
                                                "--input", text)),
        ("cli: tag, truncated params, digest matching", ("tag", "--model",
                                                         variant("tr", truncated),
                                                         "--input", text)),
        ("cli: tag, empty params, digest matching", ("tag", "--model", variant(
            "em", lambda d: set_params_bytes(d, b"")), "--input", text)),
        ("cli: tag, NaN parameter", ("tag", "--model", variant("nan", nan_params),
                                     "--input", text)),
        ("cli: resume, state.json missing a key", ("train", "--out", variant(
            "st", state_missing_key), "--resume", "--epochs", "2", "--no-progress")),
        ("cli: tag, input file missing", ("tag", "--model", base, "--input",
                                          os.path.join(work, "no.txt"))),
    ]
    return [(name, lambda a=a: cli(*a)) for name, a in cases]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cygrad-probe-")
    try:
        cases = [(n, lambda c=c: run_py(textwrap.dedent(c), args.timeout)) for n, c in PY]
        if args.big:
            cases += [(n, lambda c=c: run_py(c, 600)) for n, c in BIG]
        cases += cli_cases(work)
        totals = {}
        for name, fn in cases:
            kind, detail = fn()
            totals[kind] = totals.get(kind, 0) + 1
            print(f"{kind:12s} {name:52s} {detail}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cases": len(cases), **totals}))
    bad = sum(totals.get(k, 0) for k in ("crash", "hang", "wrong"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
