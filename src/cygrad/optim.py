"""Optimisers for graph parameters, after PyTorch's ``torch.optim``: SGD (the
lecture's update, with momentum, Nesterov and weight decay), Adagrad, Adam and
AdamW; gradient clipping by global norm; learning-rate schedules.

Every update is one fused, in-place kernel pass over the parameter, its
gradient and its state (``cygrad.kernels.sgd_update``, ``sgd_momentum_update``,
``adagrad_update``, ``adam_update``), threaded by fixed chunks of elements, so
the result is the same for any thread count.

Row-sparse gradients (``embedding_windows(..., sparse=True)``, or
``nn.Embedding(..., sparse=True)``) touch only the rows of the batch: their
rows of repeated ids are summed first (in order of appearance), then plain SGD
and Adagrad update those rows in place. Adam and AdamW are *lazy* on them, as
PyTorch's ``SparseAdam``: only the touched rows' moments decay and move, and
weight decay reaches only those rows; a row's bias correction uses the
parameter's step count. SGD with momentum or weight decay refuses a sparse
gradient (the momentum of untouched rows would be silently wrong).

``lr`` may be changed between steps (a schedule does it; compiled steps read it
at every call). ``state_dict()`` / ``load_state_dict()`` give and take the
optimiser's hyper-parameters and state as plain numbers and NumPy arrays (save
them with :func:`cygrad.save`).
"""

import math

import numpy as np

from cygrad import kernels as _K
from cygrad.graph import SparseRows, Tensor
from cygrad.graph.engine import _bad_data, is_protected, writing

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "clip_grad_norm", "StepLR", "CosineAnnealingLR",
           "LinearWarmup", "OneCycleLR", "ReduceLROnPlateau"]


def __dir__():      # the public names, not the modules this one imports
    return sorted(__all__)


def _coalesce(g):
    """(unique row ids, summed rows) of a SparseRows, rows summed in order of appearance."""
    rows, inverse = np.unique(g.indices.reshape(-1), return_inverse=True)
    summed = np.zeros((len(rows),) + g.rows.shape[1:], dtype=g.rows.dtype)
    np.add.at(summed, inverse.reshape(-1), g.rows)
    return rows, summed


def _dense(p, g):
    # (np.ascontiguousarray would make a 0-d gradient 1-d)
    return np.require(np.asarray(g, dtype=p.dtype), requirements="C")


class _Group(dict):
    """A parameter group of an optimiser (``opt.param_groups[i]``): ``"params"`` and
    the settings it overrides. Reading a setting it does not override gives the
    optimiser's (``g["lr"]`` is ``opt.lr`` then); assigning one is checked, and
    counts as a change of the optimiser (a compiled step asks its fused_update()
    again)."""

    __slots__ = ("_opt",)

    def __missing__(self, key):
        if key in self._opt._group_keys():
            return getattr(self._opt, key)
        raise KeyError(key)

    def __setitem__(self, key, value):
        opt = self._opt
        if key == "params":
            raise ValueError(f"{type(opt).__name__}: a parameter group's params are fixed")
        dict.__setitem__(self, key, opt._check_setting(key, value, self))
        opt._bump()

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        self._opt._bump()


class _Optimizer:
    _hyper = ()        # names of the hyper-parameters state_dict carries besides lr

    def __setattr__(self, name, value):
        # every assignment (a hyper-parameter, a class change...) bumps _version, so
        # that a compiled step asks fused_update() again only after one
        object.__setattr__(self, name, value)
        object.__setattr__(self, "_version", self.__dict__.get("_version", 0) + 1)

    def __init__(self, params, lr):
        # params: Tensors, or parameter groups (PyTorch's form): dicts with "params" and
        # settings of their own ({"params": [...], "lr": 0.01}), checked once the
        # subclass has set its own (_finish_groups)
        params = list(params)
        groups = []
        if params and all(isinstance(g, dict) for g in params):
            for gi, g in enumerate(params):
                if "params" not in g:
                    raise ValueError(f"{type(self).__name__}: parameter group {gi} has no "
                                     f"'params'")
                ps = g["params"]
                ps = [ps] if isinstance(ps, Tensor) else list(ps)
                if not ps:
                    raise ValueError(f"{type(self).__name__}: parameter group {gi} is empty")
                groups.append((ps, {k: v for k, v in g.items() if k != "params"}))
        elif any(isinstance(g, dict) for g in params):
            raise TypeError(f"{type(self).__name__}: params must be all Tensors or all "
                            f"parameter groups (dicts), not a mix")
        else:
            groups.append((params, {}))
        self.params = [p for ps, _ in groups for p in ps]
        object.__setattr__(self, "_pending_groups", groups)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        seen = set()
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor) or not p.requires_grad or not p.is_leaf:
                raise TypeError(f"{type(self).__name__}: parameters must be leaf Tensors "
                                f"with requires_grad=True, got {p!r}")
            if not isinstance(p.data, np.ndarray):
                raise _bad_data(p, f"{type(self).__name__}: parameter {i}")
            if id(p) in seen:
                raise ValueError(f"{type(self).__name__}: a parameter appears twice in the list")
            seen.add(id(p))
            if not p.data.flags.c_contiguous or not (p.data.flags.writeable
                                                     or is_protected(p.data)):
                p.data = np.array(p.data, order="C", copy=True)    # (0-d stays 0-d)
        self.lr = lr

    @property
    def lr(self):
        """The learning rate: a finite number >= 0 (0 leaves the parameters as they
        are); a schedule may change it between steps (compiled steps read it at
        every call)."""
        return self._lr

    @lr.setter
    def lr(self, lr):
        try:
            lr = float(lr)
        except (TypeError, ValueError):
            raise TypeError(f"{type(self).__name__}: lr must be a number, got {lr!r}") from None
        if not np.isfinite(lr) or lr < 0:
            raise ValueError(f"{type(self).__name__}: lr must be a finite number >= 0, got {lr}")
        self._lr = lr

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    # -- parameter groups
    def _bump(self):
        object.__setattr__(self, "_version", self.__dict__.get("_version", 0) + 1)

    def _group_keys(self):
        return ("lr",) + tuple(self._hyper)

    def _finish_groups(self):
        """The parameter groups, once the subclass's own settings are set: each
        group's overrides checked by the constructor's rules."""
        groups = self.__dict__.pop("_pending_groups", None)
        if groups is None:
            return
        out, gi = [], []
        for n, (ps, over) in enumerate(groups):
            g = _Group()
            g._opt = self
            dict.__setitem__(g, "params", ps)
            out.append(g)
            gi += [n] * len(ps)
        object.__setattr__(self, "param_groups", out)
        object.__setattr__(self, "_gi", gi)
        for g, (_, over) in zip(out, groups):
            for k, v in over.items():
                dict.__setitem__(g, k, self._check_setting(k, v, g))

    def _check_setting(self, key, value, group):
        """A group's setting checked as the constructor checks it; its stored form."""
        name = type(self).__name__
        if key not in self._group_keys():
            raise KeyError(f"{name}: a parameter group has no setting {key!r} (its settings: "
                           f"{', '.join(self._group_keys())})")
        if key == "lr":         # (the common case, at every step of a schedule: no copy)
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"{name}: lr must be a number, got {value!r}") from None
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name}: lr must be a finite number >= 0, got {v}")
            return v
        merged = {k: group[k] for k in self._hyper}
        merged[key] = value
        # checked by cygrad's own class of this optimiser (a subclass may take other
        # arguments)
        own = next(c for c in type(self).__mro__ if c.__module__ == __name__
                   and not c.__name__.startswith("_"))
        try:
            own(list(dict.__getitem__(group, "params")), lr=group["lr"], **merged)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{name}: parameter group setting {key}: {e}") from None
        if key == "betas":
            return tuple(float(b) for b in value)
        return bool(value) if key == "nesterov" else float(value)

    def _overrides(self):
        """Whether a parameter group sets anything of its own."""
        return any(len(g) > 1 for g in self.__dict__.get("param_groups", ()))

    def _settings(self):
        """Per parameter, its group's settings ({"lr", hyper-parameters...})."""
        keys = self._group_keys()
        per = [{k: g[k] for k in keys} for g in self.param_groups]
        return [per[g] for g in self._gi]

    def fused_update(self):
        """The update a compiled plan may fuse into its backward pass, as a hashable
        description of its form, or None.

        None (the default, and the answer of any subclass that overrides ``step``)
        makes a compiled step run in *gradient mode*: the plan leaves each gradient
        in ``p.grad`` and calls :meth:`step`, so a subclass's own step always runs.
        A compiled plan records this answer and compares it at every call: when it
        changes (momentum set after compiling, say), the step is traced again.
        Only what changes the update's form belongs here; values a plan reads at
        every call (``lr``, betas, eps, weight decay of Adam) do not.
        """
        return None

    def _with_grads(self):
        out = [(i, p, p.grad) for i, p in enumerate(self.params) if p.grad is not None]
        for i, p, _ in out:
            if type(p.data) is not np.ndarray and not isinstance(p.data, np.ndarray):
                raise _bad_data(p, f"{type(self).__name__}.step: parameter {i}")
        return out

    # -- state
    def _state_arrays(self):
        """[{name: array}] per parameter (the arrays updated in place)."""
        return [{} for _ in self.params]

    def _state_numbers(self):
        return [{} for _ in self.params]

    def _set_state(self, i, numbers):
        pass

    def state_dict(self):
        """``{"type", "lr", hyper-parameters..., "state": [per parameter {name: value}]}``:
        numbers and copies of the state arrays, in parameter order."""
        state = []
        for arrays, numbers in zip(self._state_arrays(), self._state_numbers()):
            entry = {k: a.copy() for k, a in arrays.items()}
            entry.update(numbers)
            state.append(entry)
        out = {"type": type(self).__name__, "lr": self.lr}
        out.update({k: getattr(self, k) for k in self._hyper})
        out["state"] = state
        # the groups: their parameters (indices into params) and their own settings
        start, groups = 0, []
        for g in self.param_groups:
            n = len(dict.__getitem__(g, "params"))
            entry = {k: (list(v) if k == "betas" else v) for k, v in g.items() if k != "params"}
            entry["params"] = list(range(start, start + n))
            groups.append(entry)
            start += n
        out["param_groups"] = groups
        return out

    def _entries(self, state):
        name = type(self).__name__
        if not isinstance(state, dict) or "state" not in state or "type" not in state:
            raise TypeError(f"{name}.load_state_dict: expected the dict of state_dict(), got "
                            f"{type(state).__name__}")
        if state["type"] != name:
            raise ValueError(f"{name}.load_state_dict: the state is of a {state['type']}")
        entries = list(state["state"])
        if len(entries) != len(self.params):
            raise ValueError(f"{name}.load_state_dict: the state has {len(entries)} "
                             f"parameters, the optimiser {len(self.params)}")
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise TypeError(f"{name}.load_state_dict: parameter {i}'s state must be a dict")
        return entries

    def _load_hyper(self, state):
        """lr and the hyper-parameters, checked by the constructor's own rules."""
        name = type(self).__name__
        if "lr" not in state:
            raise KeyError(f"{name}.load_state_dict: the state has no 'lr'")
        hyper = {k: state[k] for k in self._hyper if k in state}
        try:
            type(self)(self.params, lr=state["lr"], **hyper)     # validates, changes nothing
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}.load_state_dict: {e}") from None
        self.lr = state["lr"]
        for k, v in hyper.items():
            setattr(self, k, tuple(float(b) for b in v) if k == "betas" else
                    (bool(v) if k == "nesterov" else float(v)))

    def load_state_dict(self, state):
        """Take the hyper-parameters and state of :meth:`state_dict` (same optimiser
        type, same parameters' shapes and dtypes); checked whole before anything changes."""
        name = type(self).__name__
        entries = self._entries(state)
        want = self._state_arrays()
        nums = self._state_numbers()
        for i, (entry, arrays, numbers) in enumerate(zip(entries, want, nums)):
            for k in list(arrays) + list(numbers):
                if k not in entry:
                    raise KeyError(f"{name}.load_state_dict: parameter {i} has no {k!r}")
            for k, a in arrays.items():
                _check_state_array(name, i, k, entry[k], a)
            self._check_numbers(i, {k: entry[k] for k in numbers})
        groups = self._check_groups(state)
        self._load_hyper(state)
        self._load_groups(groups)
        for i, (entry, arrays, numbers) in enumerate(zip(entries, want, nums)):
            for k, a in arrays.items():
                a[...] = entry[k]
            self._set_state(i, {k: entry[k] for k in numbers})

    def _check_groups(self, state):
        """The state's parameter groups (a list of override dicts), checked against
        this optimiser's partition; None when the state has none (older files)."""
        name = f"{type(self).__name__}.load_state_dict"
        groups = state.get("param_groups")
        if groups is None:
            return None
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            have = len(groups) if isinstance(groups, list) else "no list of"
            raise ValueError(f"{name}: the state has {have} parameter groups, the optimiser "
                             f"{len(self.param_groups)}")
        start, out = 0, []
        for gi, (e, g) in enumerate(zip(groups, self.param_groups)):
            n = len(dict.__getitem__(g, "params"))
            if not isinstance(e, dict) or list(e.get("params", ())) != list(
                    range(start, start + n)):
                raise ValueError(f"{name}: parameter group {gi} holds other parameters than "
                                 f"the optimiser's")
            bad = set(e) - set(self._group_keys()) - {"params"}
            if bad:
                raise ValueError(f"{name}: parameter group {gi} has unknown settings "
                                 f"{sorted(bad)}")
            out.append({k: v for k, v in e.items() if k != "params"})
            start += n
        return out

    def _load_groups(self, groups):
        if groups is None:
            return
        for g, over in zip(self.param_groups, groups):
            for k in [k for k in g if k != "params"]:
                dict.__delitem__(g, k)
            for k, v in over.items():
                dict.__setitem__(g, k, self._check_setting(k, v, g))
        self._bump()

    def _check_numbers(self, i, numbers):
        pass


# state arrays that hold sums of squares: a negative or NaN entry would make the next
# step's parameters NaN (sqrt of a negative)
_NONNEGATIVE = ("sum", "exp_avg_sq")


def _check_state_array(name, i, k, v, like):
    if not isinstance(v, np.ndarray) or v.shape != like.shape or \
            v.dtype.newbyteorder("=") != like.dtype:
        raise ValueError(f"{name}.load_state_dict: parameter {i} {k!r} must be a {like.dtype} "
                         f"array of shape {like.shape}, got "
                         f"{getattr(v, 'dtype', type(v).__name__)} {getattr(v, 'shape', '')}")
    bad = ~np.isfinite(v)
    if k in _NONNEGATIVE:
        bad |= v < 0
    if bad.any():
        j = np.unravel_index(int(np.flatnonzero(bad)[0]), v.shape)
        what = "a finite number >= 0" if k in _NONNEGATIVE else "a finite number"
        raise ValueError(f"{name}.load_state_dict: parameter {i} {k!r}{[int(q) for q in j]} = "
                         f"{v[j]}; "
                         f"every entry must be {what}")


class SGD(_Optimizer):
    """Stochastic gradient descent, PyTorch's rule.

    ``g = grad + weight_decay * theta``; with ``momentum``,
    ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` on the first step)
    and ``g = buf`` (``g + momentum * buf`` with ``nesterov``); then
    ``theta -= lr * g``. With the defaults it is the lecture's
    ``theta <- theta - lr * grad``, which compiled plans fold into backward.
    """

    _hyper = ("momentum", "dampening", "nesterov", "weight_decay")

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0):
        super().__init__(params, lr)
        momentum, dampening, weight_decay = float(momentum), float(dampening), float(weight_decay)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1], got {momentum}")
        if not 0.0 <= dampening <= 1.0:
            raise ValueError(f"SGD: dampening must be in [0, 1], got {dampening}")
        if not (np.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"SGD: weight_decay must be a finite number >= 0, got {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening 0")
        self.momentum, self.dampening = momentum, dampening
        self.nesterov, self.weight_decay = bool(nesterov), weight_decay
        self.buffers = [None] * len(self.params)
        self._finish_groups()

    def fused_update(self):
        """``("sgd",)``, the lecture's rule, when neither momentum nor weight decay is
        set, no parameter group sets its own, and ``step`` is SGD's own; else None
        (gradient mode)."""
        if type(self).step is not SGD.step or self.momentum != 0 or self.weight_decay != 0 \
                or self._overrides():
            return None
        return ("sgd",)

    def step(self):
        work = self._with_grads()
        hp = self._settings()
        for i, p, g in work:        # refused before any parameter changes
            h = hp[i]
            if (h["momentum"] or h["weight_decay"]) and isinstance(g, SparseRows):
                raise ValueError(f"SGD: parameter {i} has a row-sparse gradient; "
                                 f"momentum and weight_decay need dense gradients "
                                 f"(use sparse=False, or Adam for lazy rows)")
        with writing([p for _, p, _ in work]):
            for i, p, g in work:
                h = hp[i]
                lr, mom = h["lr"], h["momentum"]
                if isinstance(g, SparseRows):
                    _K.embedding_sgd_update(p.data, g.indices.reshape(-1, 1), g.rows, lr)
                elif mom == 0 and h["weight_decay"] == 0:
                    _K.sgd_update(p.data, _dense(p, g), lr)
                else:        # (no momentum: no buffer, the kernel applies weight decay alone)
                    first = mom and self.buffers[i] is None
                    if first:
                        self.buffers[i] = np.zeros_like(p.data)
                    _K.sgd_momentum_update(p.data, self.buffers[i], _dense(p, g), lr, mom,
                                           h["dampening"], h["weight_decay"], h["nesterov"],
                                           first)

    def _state_arrays(self):
        return [{} if b is None else {"momentum_buffer": b} for b in self.buffers]

    def load_state_dict(self, state):
        entries = self._entries(state)
        bufs = []
        for i, (e, p) in enumerate(zip(entries, self.params)):
            if "momentum_buffer" in e:
                _check_state_array(type(self).__name__, i, "momentum_buffer",
                                   e["momentum_buffer"], p.data)
                bufs.append(np.array(e["momentum_buffer"], dtype=p.dtype, copy=True))
            else:
                bufs.append(None)
        groups = self._check_groups(state)
        self._load_hyper(state)
        self._load_groups(groups)
        self.buffers = bufs


class Adagrad(_Optimizer):
    """Adagrad: ``G += g²; theta -= lr * g / (sqrt(G) + eps)``, per element.

    For row-sparse gradients the rows of repeated indices are summed first, and
    only the touched rows of ``theta`` and ``G`` change.
    """

    _hyper = ("eps",)

    def __init__(self, params, lr=0.05, eps=1e-8, initial_accumulator=0.0):
        super().__init__(params, lr)
        self.eps = float(eps)
        if not (np.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"Adagrad: eps must be a positive number, got {eps}")
        self.state = [np.full_like(p.data, initial_accumulator) for p in self.params]
        self._finish_groups()

    def fused_update(self):
        """``("adagrad",)`` unless a subclass overrides ``step`` or a parameter group
        sets its own lr or eps."""
        return ("adagrad",) if type(self).step is Adagrad.step and not self._overrides() \
            else None

    def step(self):
        work = self._with_grads()
        hp = self._settings()
        with writing([p for _, p, _ in work]):
            for i, p, g in work:
                G = self.state[i]
                lr, eps = hp[i]["lr"], hp[i]["eps"]
                if lr == 0:        # the accumulator still grows
                    if isinstance(g, SparseRows):
                        rows, summed = _coalesce(g)
                        G[rows] += summed * summed
                    else:
                        gd = _dense(p, g)
                        G += gd * gd
                elif isinstance(g, SparseRows):
                    _K.embedding_adagrad_update(p.data, G, g.indices.reshape(-1, 1), g.rows,
                                                lr, eps)
                else:
                    _K.adagrad_update(p.data, G, _dense(p, g), lr, eps)

    def _state_arrays(self):
        return [{"sum": G} for G in self.state]


class Adam(_Optimizer):
    """Adam (Kingma and Ba, 2015), bias-corrected, PyTorch's arrangement:
    ``g = grad + weight_decay * theta`` (L2, coupled); ``m = b1 m + (1 - b1) g``;
    ``v = b2 v + (1 - b2) g²``;
    ``theta -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    ``t`` counts the steps in which the parameter had a gradient. Lazy on
    row-sparse gradients (see the module's note).
    """

    _hyper = ("betas", "eps", "weight_decay")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        name = type(self).__name__
        try:
            b1, b2 = (float(b) for b in betas)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: betas must be two numbers, got {betas!r}") from None
        for k, b in (("betas[0]", b1), ("betas[1]", b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name}: {k} must be in [0, 1), got {b}")
        self.betas = (b1, b2)
        self.eps = float(eps)
        if not (np.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"{name}: eps must be a positive number, got {eps}")
        self.weight_decay = float(weight_decay)
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"{name}: weight_decay must be a finite number >= 0, got "
                             f"{weight_decay}")
        self.exp_avg = [np.zeros_like(p.data) for p in self.params]
        self.exp_avg_sq = [np.zeros_like(p.data) for p in self.params]
        self.steps = [0] * len(self.params)
        self._finish_groups()

    def fused_update(self):
        """``("adam", decoupled)`` (AdamW: decoupled weight decay) unless a subclass
        overrides ``step`` or a parameter group sets its own settings."""
        return ("adam", self._decoupled) if type(self).step is Adam.step \
            and not self._overrides() else None

    def step(self):
        work = self._with_grads()
        hp = self._settings()
        with writing([p for _, p, _ in work]):
            for i, p, g in work:
                h = hp[i]
                b1, b2 = h["betas"]
                self.steps[i] += 1
                t = self.steps[i]
                m, v = self.exp_avg[i], self.exp_avg_sq[i]
                if isinstance(g, SparseRows):       # lazy: only the touched rows
                    _K.embedding_adam_update(p.data, m, v, g.indices.reshape(-1, 1), g.rows,
                                             t, h["lr"], b1, b2, h["eps"], h["weight_decay"],
                                             self._decoupled)
                else:
                    _K.adam_update(p.data, m, v, _dense(p, g), t, h["lr"], b1, b2, h["eps"],
                                   h["weight_decay"], self._decoupled)

    def _state_arrays(self):
        return [{"exp_avg": m, "exp_avg_sq": v} for m, v in zip(self.exp_avg, self.exp_avg_sq)]

    def _state_numbers(self):
        return [{"step": t} for t in self.steps]

    def _check_numbers(self, i, numbers):
        t = numbers["step"]
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"{type(self).__name__}.load_state_dict: parameter {i} step must "
                             f"be an integer >= 0, got {t!r}")

    def _set_state(self, i, numbers):
        self.steps[i] = int(numbers["step"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter, 2019):
    ``theta *= 1 - lr * weight_decay`` before the Adam step, instead of adding
    ``weight_decay * theta`` to the gradient. Default weight_decay 0.01, as PyTorch."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# ------------------------------------------------------------------ clipping

def clip_grad_norm(parameters, max_norm, norm_type=2.0):
    """Scale the gradients of ``parameters`` in place so that their global norm
    is at most ``max_norm`` (PyTorch's ``clip_grad_norm_``: the factor is
    ``max_norm / (norm + 1e-6)``, applied only when it is below 1).

    The norm is taken over all gradients as one vector, in float64; a row-sparse
    gradient's repeated rows are summed first (its norm is the dense one's).

    Parameters
    ----------
    parameters : iterable of Tensor (those without a gradient are skipped)
    max_norm : float > 0
    norm_type : float >= 1 or inf

    Returns
    -------
    float
        The global norm before clipping (inf or nan if a gradient holds one:
        then nothing is scaled, and the caller decides).
    """
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not (np.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"clip_grad_norm: max_norm must be a positive number, got {max_norm}")
    if not norm_type >= 1:
        raise ValueError(f"clip_grad_norm: norm_type must be >= 1 or inf, got {norm_type}")
    params = [p for p in parameters if isinstance(p, Tensor) and p.grad is not None]
    parts = []
    for p in params:
        if isinstance(p.grad, SparseRows):
            rows, summed = _coalesce(p.grad)
            p.grad = SparseRows(rows, summed, p.grad.shape)
            a = summed
        else:
            a = np.asarray(p.grad)
        parts.append(np.abs(a.astype(np.float64, copy=False)).ravel())
    if not parts:
        return 0.0
    if norm_type == math.inf:
        total = max(float(x.max(initial=0.0)) for x in parts)
    else:
        total = float(sum(float(np.sum(x ** norm_type)) for x in parts)) ** (1.0 / norm_type)
    if not np.isfinite(total):
        return total
    factor = max_norm / (total + 1e-6)
    if factor < 1.0:
        for p in params:
            g = p.grad
            if isinstance(g, SparseRows):
                p.grad = SparseRows(g.indices, g.rows * g.rows.dtype.type(factor), g.shape)
            else:
                p.grad = np.asarray(g) * np.asarray(g).dtype.type(factor)
    return total


# ------------------------------------------------------------------ schedules

class _Schedule:
    """A learning-rate schedule: it sets ``optimizer.lr`` from the lr the
    optimiser had when the schedule was made (``base_lr``) and a step count;
    call :meth:`step` once per epoch (or per batch: your choice of unit)."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, _Optimizer):
            raise TypeError(f"{type(self).__name__}: optimizer must be a cygrad optimiser, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        # parameter groups with an lr of their own follow the schedule from theirs
        self.base_lrs = [dict.get(g, "lr") for g in optimizer.param_groups]
        self.last_step = 0
        self._apply(0)

    def lr_at(self, t):
        raise NotImplementedError

    def _apply(self, t):
        self.optimizer.lr = self.lr_at(t)
        base = self.base_lr
        try:
            for g, b in zip(self.optimizer.param_groups, self.base_lrs):
                if b is not None:
                    self.base_lr = b
                    g["lr"] = self.lr_at(t)
        finally:
            self.base_lr = base

    def step(self):
        """Advance one step and set the optimiser's lr (and each parameter group's
        that has its own); returns the optimiser's new lr."""
        self.last_step += 1
        self._apply(self.last_step)
        return self.optimizer.lr

    def get_last_lr(self):
        return self.optimizer.lr

    def state_dict(self):
        return {"type": type(self).__name__, "base_lr": self.base_lr,
                "last_step": self.last_step}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.get("type") != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: not the state of a "
                             f"{type(self).__name__}")
        name = f"{type(self).__name__}.load_state_dict"
        for k in ("base_lr", "last_step"):
            if k not in state:
                raise ValueError(f"{name}: the state has no {k!r}")
        base, last = state["base_lr"], state["last_step"]
        if isinstance(base, bool) or not isinstance(base, (int, float, np.integer, np.floating)) \
                or not (np.isfinite(base) and base >= 0):
            raise ValueError(f"{name}: base_lr must be a finite number >= 0, got {base!r}")
        if isinstance(last, bool) or not isinstance(last, (int, np.integer)) or last < 0:
            raise ValueError(f"{name}: last_step must be an integer >= 0, got {last!r}")
        self.base_lr, self.last_step = float(base), int(last)
        self._apply(self.last_step)


def _positive_int(cls, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{cls}: {name} must be a positive integer, got {v!r}")
    return int(v)


class StepLR(_Schedule):
    """``lr = base_lr * gamma ** (t // step_size)``."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _positive_int("StepLR", "step_size", step_size)
        self.gamma = float(gamma)
        if not 0 < self.gamma <= 1:
            raise ValueError(f"StepLR: gamma must be in (0, 1], got {gamma}")
        super().__init__(optimizer)

    def lr_at(self, t):
        return self.base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(_Schedule):
    """``lr = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2`` for
    t <= T_max, then ``eta_min`` (no restart)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):   # noqa: N803 (PyTorch's name)
        self.T_max = _positive_int("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = float(eta_min)
        if not (np.isfinite(self.eta_min) and self.eta_min >= 0):
            raise ValueError(f"CosineAnnealingLR: eta_min must be a number >= 0, got {eta_min}")
        super().__init__(optimizer)

    def lr_at(self, t):
        t = min(t, self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t /
                                                                           self.T_max)) / 2


class LinearWarmup(_Schedule):
    """Linear warm-up: ``lr = base_lr * (start_factor + (1 - start_factor) t / warmup_steps)``
    for t < warmup_steps, then ``base_lr`` (PyTorch's ``LinearLR`` with end factor 1)."""

    def __init__(self, optimizer, warmup_steps, start_factor=1.0 / 3):
        self.warmup_steps = _positive_int("LinearWarmup", "warmup_steps", warmup_steps)
        self.start_factor = float(start_factor)
        if not 0 < self.start_factor <= 1:
            raise ValueError(f"LinearWarmup: start_factor must be in (0, 1], got {start_factor}")
        super().__init__(optimizer)

    def lr_at(self, t):
        if t >= self.warmup_steps:
            return self.base_lr
        return self.base_lr * (self.start_factor
                               + (1 - self.start_factor) * t / self.warmup_steps)


class OneCycleLR(_Schedule):
    """The one-cycle policy (Smith & Topin 2017; PyTorch's ``OneCycleLR`` with its
    defaults, cosine annealing, two phases): from ``max_lr / div_factor`` up to
    ``max_lr`` over the first ``pct_start`` of ``total_steps``, then down to
    ``max_lr / div_factor / final_div_factor`` at the last step. Step it once per
    batch; the optimiser's lr is set at once to the first value."""

    def __init__(self, optimizer, max_lr, total_steps, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4):
        self.max_lr = float(max_lr)
        if not (np.isfinite(self.max_lr) and self.max_lr > 0):
            raise ValueError(f"OneCycleLR: max_lr must be a positive number, got {max_lr!r}")
        self.total_steps = _positive_int("OneCycleLR", "total_steps", total_steps)
        if self.total_steps < 2:
            raise ValueError("OneCycleLR: total_steps must be at least 2")
        self.pct_start = float(pct_start)
        if not 0 < self.pct_start < 1:
            raise ValueError(f"OneCycleLR: pct_start must be in (0, 1), got {pct_start!r}")
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        if not (self.div_factor >= 1 and self.final_div_factor >= 1):
            raise ValueError("OneCycleLR: div_factor and final_div_factor must be >= 1")
        super().__init__(optimizer)

    def lr_at(self, t):
        lo = self.max_lr / self.div_factor
        end = lo / self.final_div_factor
        up = self.pct_start * self.total_steps - 1      # the step at max_lr
        last = self.total_steps - 1
        t = min(t, last)
        if t <= up:
            a, b, frac = lo, self.max_lr, (t / up if up > 0 else 1.0)
        else:
            a, b, frac = self.max_lr, end, (t - up) / (last - up)
        return b + (a - b) * (1 + math.cos(math.pi * frac)) / 2


class ReduceLROnPlateau:
    """Multiply the optimiser's lr by ``factor`` when a metric (a validation loss:
    ``mode="min"``, or an accuracy: ``"max"``) has not improved by more than
    ``threshold`` (relative) for ``patience`` calls of :meth:`step`; then wait
    ``cooldown`` calls; never below ``min_lr``. PyTorch's semantics."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 cooldown=0, min_lr=0.0):
        if not isinstance(optimizer, _Optimizer):
            raise TypeError(f"ReduceLROnPlateau: optimizer must be a cygrad optimiser, got "
                            f"{type(optimizer).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) \
                or patience < 0:
            raise ValueError(f"ReduceLROnPlateau: patience must be an integer >= 0, got "
                             f"{patience!r}")
        self.optimizer, self.mode, self.factor = optimizer, mode, float(factor)
        self.patience, self.threshold = int(patience), float(threshold)
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self.best = math.inf if mode == "min" else -math.inf
        self.bad = 0
        self.cooling = 0

    def _better(self, x):
        if self.mode == "min":
            return x < self.best * (1 - self.threshold) if self.best != math.inf else True
        return x > self.best * (1 + self.threshold) if self.best != -math.inf else True

    def step(self, metric):
        """Record this epoch's metric; returns the (possibly reduced) lr."""
        x = float(metric)
        if not math.isfinite(x):
            raise ValueError(f"ReduceLROnPlateau.step: the metric is {metric!r}")
        if self._better(x):
            self.best, self.bad = x, 0
        else:
            self.bad += 1
        if self.cooling > 0:
            self.cooling -= 1
            self.bad = 0
        if self.bad > self.patience:
            new = max(self.optimizer.lr * self.factor, self.min_lr)
            if self.optimizer.lr - new > 1e-12 * self.optimizer.lr:
                self.optimizer.lr = new
            self.cooling, self.bad = self.cooldown, 0
        return self.optimizer.lr

    def get_last_lr(self):
        return self.optimizer.lr

    def state_dict(self):
        return {"type": "ReduceLROnPlateau", "best": self.best, "bad": self.bad,
                "cooling": self.cooling}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or state.get("type") != "ReduceLROnPlateau":
            raise ValueError("ReduceLROnPlateau.load_state_dict: not the state of a "
                             "ReduceLROnPlateau")
        for k in ("best", "bad", "cooling"):
            if k not in state:
                raise ValueError(f"ReduceLROnPlateau.load_state_dict: the state has no {k!r}")
        self.best, self.bad, self.cooling = float(state["best"]), int(state["bad"]), \
            int(state["cooling"])
