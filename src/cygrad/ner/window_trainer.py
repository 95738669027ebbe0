"""``WindowTrainer``: the lecture's window model (one table, tanh, softmax, SGD) as
one compiled training step per call.

A thin front over :func:`cygrad.compile`: the model is the graph of
:func:`cygrad.ner.model.window_logits`, the step its compiled plan. Its NumPy twin
is :class:`cygrad.kernels.reference.WindowTrainer`.
"""

import math

import numpy as np

import cygrad as cg
from cygrad import _config
from cygrad.ner.model import window_logits


def _as_param(x, name, dtype, ndim):
    fn = "WindowTrainer"
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: {name} must be float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{fn}: {name} has dtype {x.dtype} but E has {dtype}; "
                        f"all five arrays must have one dtype")
    if x.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {x.shape}")
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{fn}: {name} holds NaN or infinity")
    return np.array(x, dtype=x.dtype.newbyteorder("="), order="C", copy=True)


class WindowTrainer:
    """The window model's training step (tanh hidden layer, softmax
    cross-entropy, SGD on every parameter), compiled into one call.

    Parameters
    ----------
    E : ndarray (V, d)
        Word vectors; the rows of each window's words are updated in place.
    W : ndarray (H, w*d)
        Hidden weights for windows of w words (the window width is W.shape[1] / d).
    b : ndarray (H,)
    U : ndarray (C, H)
        Output weights, one row per class.
    c : ndarray (C,)
    threads : int or None
        Threads to use; None follows cygrad.get_num_threads() at every step.
        Small batches run on one thread whatever the setting.

    Notes
    -----
    All five arrays must be float32, or all float64; they are copied in, so the
    caller's arrays are never modified. ``arrays()`` returns copies of the
    current values.

    The step, for windows (B, w) of word ids and labels (B,):
    x = concatenated rows of E, h = tanh(W x + b), s = U h + c,
    loss = mean softmax cross-entropy; then every parameter p -= lr * dloss/dp,
    the gradients all taken before any update. A word that occurs several times
    in the batch gets the sum of its gradients. The result is bitwise the same
    for any thread count.
    """

    def __init__(self, E, W, b, U, c, threads=None):
        fn = "WindowTrainer"
        E = _as_param(E, "E", None, 2)
        dt = E.dtype
        W = _as_param(W, "W", dt, 2)
        b = _as_param(b, "b", dt, 1)
        U = _as_param(U, "U", dt, 2)
        c = _as_param(c, "c", dt, 1)
        V, d = E.shape
        H, D = W.shape
        if V < 1 or d < 1:
            raise ValueError(f"{fn}: E must have at least one row and one column, got {E.shape}")
        if H < 1 or D < 1 or D % d:
            raise ValueError(f"{fn}: W must be H x (w*d) with d = E.shape[1] = {d}, "
                             f"got shape {W.shape}")
        if b.shape != (H,):
            raise ValueError(f"{fn}: b must have shape ({H},) to match W {W.shape}, "
                             f"got {b.shape}")
        if U.ndim != 2 or U.shape[1] != H or U.shape[0] < 1:
            raise ValueError(f"{fn}: U must have shape (C, {H}) to match W {W.shape}, "
                             f"got {U.shape}")
        C = U.shape[0]
        if c.shape != (C,):
            raise ValueError(f"{fn}: c must have shape ({C},) to match U {U.shape}, "
                             f"got {c.shape}")
        self.dtype = dt
        self.V, self.d, self.w, self.H, self.C = V, d, D // d, H, C
        self._t = {k: cg.tensor(a, requires_grad=True)
                   for k, a in zip("EWbUc", (E, W, b, U, c))}
        t = self._t
        self._opt = cg.optim.SGD(t.values(), lr=1.0)

        def loss_fn(windows, labels):
            s = window_logits([t["E"]], [windows], [(t["W"], t["b"]), (t["U"], t["c"])])
            return cg.softmax_cross_entropy(s, labels)

        self._step = cg.compile(loss_fn, optimizer=self._opt, strict=True)
        self.threads = threads

    @property
    def threads(self):
        """The thread setting: an int, or None to follow cygrad.get_num_threads()."""
        return self._step.threads

    @threads.setter
    def threads(self, n):
        self._step.threads = None if n is None else _config._check(n)

    def arrays(self):
        """Copies of the current parameters: a dict with keys E, W, b, U, c."""
        return {k: t.data.copy() for k, t in self._t.items()}

    def step(self, windows, labels, lr):
        """One SGD step on a batch, in place; returns the batch's mean loss
        (computed before the update).

        Parameters
        ----------
        windows : integer ndarray (B, w), word ids in [0, V)
        labels : integer ndarray (B,), classes in [0, C)
        lr : float, the learning rate (finite, >= 0)
        """
        fn = "WindowTrainer.step"
        for name, x, nd in (("windows", windows, 2), ("labels", labels, 1)):
            if not isinstance(x, np.ndarray):
                raise TypeError(f"{fn}: {name} must be a numpy.ndarray of integers, "
                                f"got {type(x).__name__}")
            if x.dtype.kind not in "iu":
                raise TypeError(f"{fn}: {name} must have an integer dtype, got {x.dtype}")
            if x.ndim != nd:
                raise ValueError(f"{fn}: {name} must be {nd}-D, got shape {x.shape}")
        if windows.shape[1] != self.w:
            raise ValueError(f"{fn}: windows must have shape (B, {self.w}) for W "
                             f"{self._t['W'].shape} and d = {self.d}, got {windows.shape}")
        if labels.shape[0] != windows.shape[0]:
            raise ValueError(f"{fn}: labels must have shape ({windows.shape[0]},) to match "
                             f"windows {windows.shape}, got {labels.shape}")
        if windows.shape[0] == 0:
            raise ValueError(f"{fn}: the batch is empty (windows has shape {windows.shape})")
        try:
            rate = float(lr)
        except (TypeError, ValueError):
            raise TypeError(f"{fn}: lr must be a number, got {lr!r}") from None
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"{fn}: lr must be finite and >= 0, got {lr!r}")
        self._opt._lr = rate        # 0 is allowed here: the loss without an update
        return self._step(windows, labels)
