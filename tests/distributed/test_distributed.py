"""Data-parallel training over MPI (cygrad.distributed), run with ``mpiexec -n 2`` on
this machine: two ranks with a global batch of 2 x 32 reach the parameters of one
process training on the 64 windows (float64 to 1e-10; float32 to rounding), with
SGD, Adagrad and Adam, with row-sparse embedding gradients whose rows the ranks
share, on the eager graph and in a compiled step; every rank ends with the same
bits; a rank that dies ends the job promptly. Skipped without mpi4py / mpiexec
(``pip install ".[mpi]"``)."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mpi_worker  # noqa: E402
from helpers import FakeComm, subprocess_env  # noqa: E402

pytestmark = [pytest.mark.mpi, pytest.mark.slow]     # (skipped without mpi4py, mpiexec)

try:
    import mpi4py
    HAVE_MPI4PY = mpi4py is not None
except ImportError:
    HAVE_MPI4PY = False


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(not (HAVE_MPI4PY and _mpiexec()),
                               reason="mpi4py or mpiexec is not installed "
                                      "(pip install \".[mpi]\")")


def _env():
    return subprocess_env()


def _mpirun(args, n=2, timeout=240):
    cmd = [_mpiexec(), "-n", str(n), sys.executable, os.path.join(HERE, "mpi_worker.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


CASES = [("sgd", "float64", "eager"), ("adagrad", "float64", "eager"),
         ("adam", "float64", "eager"), ("sgd", "float32", "eager"),
         ("adam", "float64", "compiled"), ("sgd", "float32", "compiled"),
         ("adagrad", "float64", "compiled-table"), ("adam", "float32", "compiled-table"),
         ("adagrad", "float64", "uneven"), ("sgd", "float64", "uneven")]


@needs_mpi
@pytest.mark.parametrize("opt,dtype,mode", CASES, ids=["-".join(c) for c in CASES])
def test_two_ranks_train_as_one_process(tmp_path, opt, dtype, mode):
    out = tmp_path / "params.npz"
    r = _mpirun(["train", opt, dtype, mode, "6", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(out) as z:
        got = [z[f"arr_{i}"] for i in range(len(z.files) - 1)]
    want = mpi_worker.train(opt, dtype, mode, 6)        # one process, batches of 64
    start = mpi_worker.train(opt, dtype, mode, 0)
    tol = dict(rtol=1e-10, atol=1e-13) if dtype == "float64" else dict(rtol=2e-5, atol=2e-6)
    moved = 0
    for g, w, s in zip(got, want, start):
        np.testing.assert_allclose(g, w.data, **tol)
        moved += int(not np.array_equal(w.data, s.data))
    assert moved == len(got)                     # every parameter trained
    if mode != "compiled":                       # the table's untouched rows stayed put
        np.testing.assert_array_equal(got[0][25:], start[0].data[25:])


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_the_kept_exchange_buffers_follow_changing_gradient_kinds(tmp_path, n):
    """DistributedOptimizer keeps its exchange buffers from step to step and checks the
    gradients' kinds by counts riding on the exchange: steps whose kinds change (a
    gradient missing on one rank, dense turned row-sparse and back) still give the
    mean of every rank's gradient, and a clash is refused on every rank."""
    out = tmp_path / "r.txt"
    r = _mpirun(["kinds", str(out)], n=n)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.read_text() == "ok"


@needs_mpi
def test_a_rank_that_dies_ends_the_job(tmp_path):
    t0 = time.monotonic()
    r = _mpirun(["die"], timeout=120)
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert "rank 1 fails on purpose" in r.stderr and "aborting the job" in r.stderr
    assert took < 60, f"the job took {took:.0f} s to end"


def test_import_without_mpi_names_the_extra(monkeypatch):
    import builtins

    from cygrad import distributed
    real = builtins.__import__

    def no_mpi(name, *a, **kw):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_mpi)
    monkeypatch.setitem(distributed._state, "comm", None)
    with pytest.raises(ImportError, match=r"cygrad\[mpi\]"):
        distributed.rank()


@needs_mpi
def test_readme_mpi_example_runs(tmp_path):
    import re
    readme = os.path.join(os.path.dirname(os.path.dirname(HERE)), "docs", "distributed.md")
    if not os.path.isfile(readme):
        pytest.skip("docs/distributed.md is not beside tests/")
    code = re.search(r"<!-- readme-mpi-example[^>]*-->\s*```python\n(.*?)```",
                     open(readme, encoding="utf-8").read(), re.S).group(1)
    script = tmp_path / "train.py"
    script.write_text(code + "\nopen(f'digest{rank}', 'w').write("
                              "dist.check_identical(model.parameters()))\n")
    r = subprocess.run([_mpiexec(), "-n", "2", sys.executable, str(script)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    digests = [(tmp_path / f"digest{r}").read_text() for r in (0, 1)]   # (ranks' stdout interleave)
    assert len(digests[0]) == 64 and digests[0] == digests[1]


def _cli(args, n=None, **kw):
    cmd = [sys.executable, "-m", "cygrad", "train", *args]
    if n:
        cmd = [_mpiexec(), "-n", str(n)] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), **kw)


def _epoch_of(out):
    import json
    with open(os.path.join(out, "checkpoint", "current.json")) as f:
        return json.load(f)["epoch"]


@needs_mpi
def test_cli_distributed_trains_and_resumes_with_any_rank_count(tmp_path):
    out = str(tmp_path / "m")
    common = ["--out", out, "--loss", "softmax", "--no-progress", "--distributed"]
    r = _cli(common + ["--epochs", "2"], n=2, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("epoch   1 ") == 1            # rank 0 alone reports
    assert "2 ranks (global batch" in r.stdout and os.path.isfile(os.path.join(out, "model.json"))
    assert _epoch_of(out) == 2
    r = _cli(common + ["--epochs", "3", "--resume"], timeout=300)        # 1 rank
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming after epoch 2" in r.stdout and _epoch_of(out) == 3
    r = _cli(common + ["--epochs", "4", "--resume"], n=2, timeout=300)   # 2 ranks again
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming after epoch 3" in r.stdout and _epoch_of(out) == 4


@needs_mpi
def test_cli_a_killed_rank_ends_the_job_and_the_checkpoint_resumes(tmp_path):
    import signal
    out = str(tmp_path / "m")
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "cygrad", "train", "--out", out,
           "--loss", "softmax", "--epochs", "200", "--patience", "1000", "--no-progress",
           "--distributed"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_env())
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(out, "checkpoint", "current.json")):
            assert job.poll() is None, job.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.2)
        ranks = subprocess.run(["pgrep", "-f", f"cygrad train --out {out}"], capture_output=True,
                               text=True).stdout.split()
        ranks = [int(p) for p in ranks if int(p) != job.pid]
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGKILL)
        t0 = time.monotonic()
        _, err = job.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert took < 30, f"the job took {took:.0f} s to end after a rank was killed"
    done = _epoch_of(out)
    r = _cli(["--out", out, "--loss", "softmax", "--no-progress", "--distributed", "--resume",
              "--epochs", str(done + 1)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming after epoch {done}" in r.stdout and _epoch_of(out) == done + 1


@pytest.mark.parametrize("loss", ["crf", "softmax"])
@pytest.mark.parametrize("size", [2, 3, 5])
def test_shards_cover_every_global_batch_once(loss, size):
    """The ranks take the global batches of one process with N x the batch size, every
    one of them: the shares of one global batch are disjoint, make it up whole (whole
    sentences for the CRF), and are non-empty unless the batch has fewer windows
    (sentences) than there are ranks, whatever the sentence lengths."""
    from cygrad.ner import corpus
    from cygrad.ner.data import Vocab, read_conll
    from cygrad.ner.model import Config, WindowModel
    from cygrad.ner.train import TrainConfig, Trainer
    sents = read_conll(corpus.path("train"))[:300]
    tcfg = TrainConfig(batch_size=40)
    model = WindowModel(Config(loss=loss), Vocab.build(sents), seed=0)
    enc = model.encode(sents)
    shares = []
    for r in range(size):
        tr = Trainer(model, tcfg, FakeComm(r, size))
        shares.append(list(tr.batches(enc, np.random.default_rng(4))))
    # one process with the global batch size groups the windows the same way
    one = [(idx, lens) for idx, lens, _ in Trainer(model, TrainConfig(batch_size=40 * size))
           .batches(enc, np.random.default_rng(4))]
    assert len({len(s) for s in shares}) == 1       # every rank takes as many steps
    assert len(shares[0]) == len(one)
    for k in range(len(shares[0])):
        parts = [shares[r][k] for r in range(size)]
        units = len(one[k][0]) if loss != "crf" else len(one[k][1])
        assert all(len(idx) for idx, _, _ in parts) or units < size
        one_k = one[k][0]
        got = np.concatenate([idx for idx, _, _ in parts])
        assert len(np.unique(got)) == len(got)
        np.testing.assert_array_equal(np.sort(got), np.sort(one_k))
        if loss == "crf":
            assert all(lens.sum() == len(idx) for idx, lens, _ in parts)
        # each rank's share: the global batch's rows, its first row, and (window
        # batches) the positive windows before it and in all
        rows = [len(idx) for idx, _, _ in parts]
        pos = [int(tr.positive_tag[enc.labels[idx]].sum()) for idx, _, _ in parts]
        for r, (_, _, share) in enumerate(parts):
            assert share[:2] == (len(one_k), sum(rows[:r]))
            if loss != "crf":
                assert share[2:] == (sum(pos[:r]), sum(pos))


@needs_mpi
@pytest.mark.parametrize("other,named", [
    (["--hidden", "16"], "model hidden = [16]"), (["--seed", "3"], "seed = 3"),
    (["--loss", "softmax"], "model loss = 'softmax'"),
    (["--optimizer", "sgd", "--lr", "0.06"], "optimizer = 'sgd'")])
def test_ranks_started_with_different_commands_are_refused_by_name(tmp_path, other, named):
    """Every rank must run the same job: a different setting on one rank is named at
    the start on every rank (it used to train silently, fail deep inside mpi4py, or
    hang)."""
    out = str(tmp_path / "m")
    base = [sys.executable, "-m", "cygrad", "train", "--out", out, "--no-progress",
            "--distributed", "--epochs", "1"]
    cmd = [_mpiexec(), "-n", "1", *base, ":", "-n", "1", *base, *other]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
    assert r.returncode != 0
    assert f"rank 1 was started with {named}" in r.stderr, r.stderr[-2000:]


@needs_mpi
def test_ranks_that_read_other_data_are_refused(tmp_path):
    from cygrad.ner import corpus
    lines = open(corpus.path("train"), encoding="utf-8").read().split("\n\n")
    (tmp_path / "a.conll").write_text("\n\n".join(lines), encoding="utf-8")
    (tmp_path / "b.conll").write_text("\n\n".join(lines[::-1]), encoding="utf-8")
    base = [sys.executable, "-m", "cygrad", "train", "--out", str(tmp_path / "m"),
            "--no-progress", "--distributed", "--epochs", "1", "--train"]
    cmd = [_mpiexec(), "-n", "1", *base, str(tmp_path / "a.conll"), ":", "-n", "1", *base,
           str(tmp_path / "b.conll")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
    assert r.returncode != 0 and "rank 1 read other training data than rank 0" in r.stderr


@needs_mpi
@pytest.mark.parametrize("loss,n", [("crf", 2), ("softmax", 2), ("logistic", 2),
                                    ("max-margin", 2), ("crf", 3)])
def test_n_ranks_train_the_model_of_one_process(tmp_path, loss, n):
    """N ranks x 32 windows and one process x 32N, shuffled, with input and hidden
    dropout, word dropout and corrupt windows (every random part: the ranks draw
    what one process draws, the dropout masks of their rows of the global batch),
    SGD: the same parameters to float32 rounding, the epoch's last global batch
    (fewer sentences than ranks, on the bundled corpus) included."""
    from cygrad.ner.model import WindowModel
    args = ["--epochs", "1", "--no-progress", "--optimizer", "sgd", "--lr", "0.1",
            "--hidden-dropout", "0.3", "--no-average-params", "--loss", loss]
    r = _cli(args + ["--batch-size", "32", "--distributed", "--out", str(tmp_path / "n")],
             n=n, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli(args + ["--batch-size", str(32 * n), "--out", str(tmp_path / "one")], timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a = WindowModel.load(str(tmp_path / "one")).params
    b = WindowModel.load(str(tmp_path / "n")).params
    worst = max(float(np.abs(a[k] - b[k]).max() / (np.abs(a[k]).max() + 1e-30)) for k in a)
    assert worst < 2e-4, worst


@needs_mpi
@pytest.mark.parametrize("opt", [["--optimizer", "sgd", "--lr", "0.1", "--loss", "softmax"],
                                 []], ids=["sgd-softmax", "defaults"])
def test_a_resumed_two_rank_run_is_the_uninterrupted_run_bit_for_bit(tmp_path, opt):
    """Same seed, same result: 2 epochs on 2 ranks, and 1 epoch then --resume for the
    second, give the same parameters bit for bit (the ranks draw the process's random
    stream, restored from the checkpoint; every compiled step runs its plan, the
    first one of a run too)."""
    from cygrad.ner.model import WindowModel
    common = ["--no-progress", "--distributed", "--no-average-params"] + opt
    r = _cli(common + ["--epochs", "2", "--out", str(tmp_path / "a")], n=2, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for args in (["--epochs", "1"], ["--epochs", "2", "--resume"]):
        r = _cli(common + args + ["--out", str(tmp_path / "b")], n=2, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    a = WindowModel.load(str(tmp_path / "a")).params
    b = WindowModel.load(str(tmp_path / "b")).params
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@needs_mpi
@pytest.mark.parametrize("loss", ["softmax", "max-margin"])
def test_frozen_vectors_stay_frozen_on_every_rank(tmp_path, loss):
    """--freeze-vectors with 2 ranks: each rank applies every rank's gradient rows, so
    each puts back every rank's touched rows (it used to put back only its own: the
    ranks' parameters parted after the first epoch). The rows from the vectors end
    as the vectors' rows; the model trains."""
    from cygrad.ner import corpus
    from cygrad.ner.data import read_conll, word_key
    from cygrad.ner.model import WindowModel
    words = sorted({word_key(t) for s in read_conll(corpus.path("train")) for t in s.tokens})
    table = np.random.default_rng(0).normal(size=(len(words), 8)).astype(np.float32)
    vec = tmp_path / "v.txt"
    with open(vec, "w", encoding="utf-8") as f:
        for w, row in zip(words, table):
            f.write(w + " " + " ".join(repr(float(x)) for x in row) + "\n")
    out = str(tmp_path / "m")
    r = _cli(["--epochs", "2", "--no-progress", "--dim", "8", "--hidden", "16",
              "--loss", loss, "--vectors", str(vec), "--freeze-vectors", "--distributed",
              "--batch-size", "64", "--out", out], n=2, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = WindowModel.load(out)
    has = m.vector_rows >= 0
    assert has.sum() > 100
    np.testing.assert_array_equal(m.params["E"][has], table[m.vector_rows[has]])
