"""cygrad.manual_seed (#33): one process-wide generator for every draw not given
its own (layer initialisers, nn.Dropout seeds and streams, data.batches), so
two runs of a script agree; the thread count changes nothing."""

import subprocess
import sys

import numpy as np
import pytest

import cygrad as cg
from cygrad import nn


@pytest.fixture(autouse=True)
def _unseeded_after():
    yield
    from cygrad import _random
    _random._state["rng"] = None        # the other tests run as without manual_seed


SCRIPT = r"""
import sys, numpy as np, cygrad as cg
from cygrad import nn
seed, threads = int(sys.argv[1]), int(sys.argv[2])
cg.set_num_threads(threads)
cg.manual_seed(seed)
model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Dropout(0.3), nn.Linear(32, 4))
opt = cg.optim.Adam(model.parameters(), lr=0.01)
X = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
y = (X[:, :4].argmax(axis=1)).astype(np.int64)
step = cg.compile(lambda xb, yb: cg.softmax_cross_entropy(model(xb), yb), opt)
for epoch in range(2):
    for xb, yb in cg.data.batches((X, y), 32):
        step(xb, yb)
sys.stdout.buffer.write(b"".join(p.data.tobytes() for p in model.parameters()))
"""


def _run(seed, threads):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(seed), str(threads)],
                       capture_output=True, check=True)
    return r.stdout


def test_two_processes_with_the_same_seed_train_the_same_parameters():
    a, b = _run(0, 1), _run(0, 2)       # another process, another thread count
    assert len(a) > 1000 and a == b
    assert _run(1, 1) != a


def _build_and_draw():
    m = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.5), nn.Linear(7, 2))
    batches = [b.copy() for b in cg.data.batches(np.arange(10), 4)]
    x = cg.tensor(np.ones((3, 5), np.float32))
    masks = m[1](m[0](x)).data
    return [p.data.copy() for p in m.parameters()], batches, masks, m[1].seed


def test_seeding_again_in_one_process_repeats_every_draw():
    cg.manual_seed(42)
    first = _build_and_draw()
    cg.manual_seed(42)
    again = _build_and_draw()
    for a, b in zip(first[0], again[0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first[1], again[1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first[2], again[2])   # the same dropout mask stream
    assert first[3] == again[3]
    cg.manual_seed(43)
    other = _build_and_draw()
    assert not np.array_equal(other[0][0], first[0][0])
    # an explicit generator or seed still wins
    g1 = nn.Linear(3, 3, generator=7).weight.data
    cg.manual_seed(0)
    np.testing.assert_array_equal(nn.Linear(3, 3, generator=7).weight.data, g1)


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True, None])
def test_a_bad_seed_is_refused(bad):
    with pytest.raises(ValueError, match="manual_seed: seed must be an integer >= 0"):
        cg.manual_seed(bad)
