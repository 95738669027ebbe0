"""The process-wide random generator of ``cygrad.manual_seed``.

Until ``manual_seed`` is called, nothing here is used: layer initialisers draw
from a fresh unseeded generator and ``data.batches`` from its ``seed`` argument,
as before. After ``manual_seed(n)``, every draw that is not given its own
generator (layer initialisers, ``nn.init`` functions, ``data.batches(seed=None)``,
the seeds of ``nn.Dropout`` layers built without one) comes from one generator
seeded with n, in program order, so two runs of the same script agree. The
draws happen in Python, before any kernel runs: the thread count changes no
result.
"""

import numpy as np

_state = {"rng": None}
_resets = []        # callbacks run by manual_seed (nn.Dropout's stream counter)


def manual_seed(seed):
    """Seed cygrad's process-wide generator with ``seed`` (an int >= 0) and return
    it: every random draw not given its own generator comes from it from now on
    (initialisers, ``nn.Dropout`` seeds and mask streams, ``data.batches``)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be an integer >= 0, got {seed!r}")
    _state["rng"] = np.random.default_rng(int(seed))
    for reset in _resets:
        reset()
    return _state["rng"]


def default_generator():
    """The generator ``manual_seed`` set, or None when it was never called."""
    return _state["rng"]
