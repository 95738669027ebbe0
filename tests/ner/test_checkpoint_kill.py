"""A resumed run is the run: the training process is killed at every point where
it writes a file (CYGRAD_KILL_AT_WRITE=n makes it exit at the n-th: after writing
a temporary file, after each rename, after each removal), then resumed; the
resumed run must end with the same best model and checkpoint, bit for bit, as a
run never interrupted, or refuse clearly (no checkpoint committed yet). It must
never continue from a mixed state."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cygrad.ner.model import WindowModel
from cygrad.ner.train import checkpoint_path

pytestmark = pytest.mark.slow     # kills training at every write point

EPOCHS = 2
SCRIPT = textwrap.dedent("""
    import sys
    from cygrad.ner import corpus
    from cygrad.ner.data import read_conll
    from cygrad.ner.model import Config
    from cygrad.ner.train import TrainConfig, train
    tr = read_conll(corpus.path("train"))[:120]
    dv = read_conll(corpus.path("test"))[:40]
    train(tr, dv, sys.argv[1], Config(hidden=(16,), dim=8, suffix_dim=4, case_dim=2),
          TrainConfig(epochs=%d, patience=9), resume=sys.argv[2] == "resume",
          log=lambda *a: None, progress=False)
""" % EPOCHS)


def run(out, mode, kill=None):
    env = dict(os.environ)
    env.pop("CYGRAD_KILL_AT_WRITE", None)
    if kill is not None:
        env["CYGRAD_KILL_AT_WRITE"] = str(kill)
    return subprocess.run([sys.executable, "-c", SCRIPT, str(out), mode], env=env,
                          capture_output=True, text=True, timeout=120)


def final_state(out):
    best = WindowModel.load(out)
    ckpt = checkpoint_path(os.path.join(out, "checkpoint"))
    with open(os.path.join(ckpt, "state.json")) as f:
        state = json.load(f)
    return best.params, WindowModel.load(os.path.join(ckpt, "model")).params, state


def assert_same(a, b):
    for pa, pb in zip(a[:2], b[:2]):
        assert pa.keys() == pb.keys()
        for k in pa:
            np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    sa, sb = a[2], b[2]
    assert sa["epoch"] == sb["epoch"] == EPOCHS
    assert sa["rng"] == sb["rng"]
    assert [h["loss"] for h in sa["history"]] == [h["loss"] for h in sb["history"]]


def test_kill_at_every_write_point_then_resume(tmp_path):
    ref_dir = tmp_path / "ref"
    r = run(ref_dir, "fresh")
    assert r.returncode == 0, r.stderr
    ref = final_state(ref_dir)
    # how many write points a whole run has: kill beyond the last one never fires
    n = 1
    resumed = refused = 0
    while True:
        out = tmp_path / f"k{n}"
        r = run(out, "fresh", kill=n)
        if r.returncode == 0:           # the run has fewer than n write points
            assert n > 10, "too few write points: the kill switch is not wired"
            break
        assert r.returncode == 86, r.stderr
        r = run(out, "resume")
        if r.returncode != 0:
            # only acceptable before the first checkpoint was committed
            assert "no checkpoint to resume from" in r.stderr, r.stderr
            assert checkpoint_path(os.path.join(out, "checkpoint")) is None
            refused += 1
        else:
            assert_same(final_state(out), ref)
            resumed += 1
        n += 1
    print(f"{n - 1} write points: {resumed} resumed to the identical run, {refused} refused")
    assert resumed > refused > 0
