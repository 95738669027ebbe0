"""Layers for building networks (``cygrad.nn``), after PyTorch's ``torch.nn``.

A :class:`Module` registers the :class:`Parameter` s and sub-modules assigned
to it as attributes, in assignment order, so ``parameters()`` and
``state_dict()`` list them in a fixed order. Its ``forward`` is written with
cygrad's graph ops, so a loss built from modules trains eagerly with
``loss.backward()`` and compiles with :func:`cygrad.compile` (ops the plan does
not know fall back to the graph, with a warning).

Modules: :class:`Linear`, :class:`Embedding`, :class:`WindowEncoder` (the
lecture's concatenated or averaged word windows), :class:`Dropout`,
:class:`Sequential`, and the activations :class:`Tanh`, :class:`ReLU`,
:class:`Sigmoid`, :class:`LeakyReLU`, :class:`Hardtanh`, :class:`GELU`,
:class:`SiLU`. Initialisers are in :mod:`cygrad.nn.init`.
"""

import itertools

import numpy as np

from cygrad import _random
from cygrad import graph as _g
from cygrad.graph import Tensor
from cygrad.graph.engine import writing
from cygrad.nn import init

__all__ = ["Parameter", "Module", "Linear", "Embedding", "WindowEncoder", "Dropout",
           "Sequential", "Tanh", "ReLU", "Sigmoid", "LeakyReLU", "Hardtanh", "GELU", "SiLU",
           "Identity", "LayerNorm", "CrossEntropyLoss", "MSELoss", "BCEWithLogitsLoss",
           "init"]


def __dir__():      # the public names, not the modules this one imports
    return sorted(__all__)


class Parameter(Tensor):
    """A leaf :class:`~cygrad.Tensor` with ``requires_grad=True`` that a
    :class:`Module` registers when it is assigned as an attribute.

    ``Parameter(data)`` copies ``data`` (float32 or float64; a Tensor's array).
    """

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        if isinstance(data, Tensor):
            data = data.data
        kind = np.asarray(data).dtype
        if kind not in (np.float32, np.float64) and kind.newbyteorder("=") not in (
                np.float32, np.float64):
            raise TypeError(f"Parameter: data must be float32 or float64, got {kind}")
        super().__init__(np.array(data, copy=True) if isinstance(data, np.ndarray)
                         else data, requires_grad=requires_grad)
        if not self.data.dtype.isnative or not self.data.flags.c_contiguous:
            self.data = np.ascontiguousarray(self.data, dtype=self.data.dtype.newbyteorder("="))

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


def _dtype(fn, dtype):
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{fn}: dtype must be float32 or float64, got {dt}")
    return dt


# bumped by every change of any module's attributes (assignment, deletion, train/eval):
# a compiled step compares it at every call and, when it moved, the settings of the
# modules it traced (cygrad.compiler's guards)
_version = [0]


class Module:
    """Base class of every layer: subclasses set their parameters and
    sub-modules as attributes in ``__init__`` (after ``super().__init__()``)
    and define ``forward``; calling the module calls ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    # -- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before "
                               f"assigning attributes (setting {name!r})")
        _version[0] += 1
        params, mods = self.__dict__["_parameters"], self.__dict__["_modules"]
        params.pop(name, None)
        mods.pop(name, None)
        self.__dict__.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            mods[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):       # only called when normal lookup fails
        d = self.__dict__
        if name in d.get("_parameters", ()):
            return d["_parameters"][name]
        if name in d.get("_modules", ()):
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        _version[0] += 1
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._modules:
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter, or None to remove it) as ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None, got "
                            f"{type(param).__name__}")
        if param is None:
            self._parameters.pop(name, None)
        else:
            setattr(self, name, param)

    def add_module(self, name, module):
        """Register ``module`` as the sub-module ``name``."""
        if not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module, got "
                            f"{type(module).__name__}")
        setattr(self, name, module)

    # -- traversal
    def named_modules(self, prefix=""):
        """(name, module) for this module and every sub-module, depth first, each once."""
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            kids = [(f"{name}.{k}" if name else k, v) for k, v in m._modules.items()]
            stack.extend(reversed(kids))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def children(self):
        return iter(self._modules.values())

    def apply(self, fn):
        """``fn(module)`` for every sub-module (each once, the deepest first) and then
        this one, as PyTorch does (``model.apply(init_weights)``); returns self."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` of every parameter (freeze with False); returns self."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def named_parameters(self, prefix="", recurse=True):
        """(dotted name, Parameter) in registration order, depth first; a
        parameter shared by two modules is listed once, under its first name."""
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for pname, p in m._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self, recurse=True):
        """The parameters, in the order of :meth:`named_parameters` (pass them to an optimiser)."""
        return [p for _, p in self.named_parameters(recurse=recurse)]

    # -- modes
    def train(self, mode=True):
        """Training mode (dropout active) for this module and its sub-modules."""
        _version[0] += 1
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode: ``train(False)`` (dropout is the identity)."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # -- state
    def state_dict(self):
        """``{dotted name: copy of the parameter's array}``, in parameter order."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` into the parameters, in place.

        Every array is checked before any is copied: its shape and dtype must
        be the parameter's. With ``strict`` (the default), a missing or an
        unexpected name is an error too; otherwise both are returned.

        Returns
        -------
        (missing, unexpected) : lists of names
        """
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict: state must be a dict of arrays, got "
                            f"{type(state).__name__}")
        named = dict(self.named_parameters())
        missing = [k for k in named if k not in state]
        unexpected = [k for k in state if k not in named]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if unexpected:
                parts.append(f"unexpected {unexpected}")
            raise KeyError(f"load_state_dict: {type(self).__name__} state does not match: "
                           + "; ".join(parts))
        arrays = {}
        for k, p in named.items():
            if k not in state:
                continue
            a = state[k]
            if isinstance(a, Tensor):
                a = a.data
            if not isinstance(a, np.ndarray):
                raise TypeError(f"load_state_dict: {k!r} must be a numpy array, got "
                                f"{type(a).__name__}")
            if a.shape != p.shape:
                raise ValueError(f"load_state_dict: {k!r} has shape {a.shape}, the parameter "
                                 f"{p.shape}")
            if a.dtype.newbyteorder("=") != p.dtype:
                raise TypeError(f"load_state_dict: {k!r} has dtype {a.dtype}, the parameter "
                                f"{p.dtype}")
            arrays[k] = a
        with writing([named[k] for k in arrays]):
            for k, a in arrays.items():
                named[k].data[...] = a
        return missing, unexpected

    # -- calls
    def forward(self, *args, **kw):
        """The module's computation, as graph ops (a subclass defines it; calling the
        module calls it)."""
        raise NotImplementedError(f"{type(self).__name__} defines no forward")

    def __call__(self, *args, **kw):
        if _g.engine._state.__dict__.get("tracing", False):
            _g.engine._traced_module(self)
        return self.forward(*args, **kw)

    def extra_repr(self):
        """The settings ``repr(module)`` shows between its parentheses."""
        return ""

    def __repr__(self):
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for k, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({k}): {sub}")
        return "\n".join(lines) + "\n)"


class Linear(Module):
    """``y = x Wᵀ + b``: weight (out_features, in_features), bias (out_features,).

    Initialised as PyTorch's ``nn.Linear``: both ``U(-1/sqrt(in), 1/sqrt(in))``.
    Input (..., in_features), output (..., out_features).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, generator=None):
        super().__init__()
        for n, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Linear: {n} must be a positive integer, got {v!r}")
        dt = _dtype("Linear", dtype)
        rng = init.as_generator(generator, "Linear")
        self.in_features, self.out_features = int(in_features), int(out_features)
        r = 1.0 / np.sqrt(in_features)
        self.weight = Parameter(rng.uniform(-r, r, (out_features, in_features)).astype(dt))
        if bias:
            self.bias = Parameter(rng.uniform(-r, r, out_features).astype(dt))
        else:
            self.bias = None

    def forward(self, x):
        x = _input("Linear", x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: input has {x.shape[-1]} features (shape {x.shape}), the "
                             f"layer {self.in_features}")
        lead = x.shape[:-1]
        x2 = x if x.ndim == 2 else x.reshape(-1, self.in_features)
        if self.bias is not None:
            y = _g.linear(x2, self.weight, self.bias)
        else:
            y = x2 @ self.weight.T
        return y if x.ndim == 2 else y.reshape(*lead, self.out_features)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def _input(layer, x):
    """A layer's float input: a Tensor, an array, or a step argument being traced;
    anything else (a list, a string) is refused naming the layer."""
    if isinstance(x, (np.ndarray, Tensor, _g.Traced)):
        return x
    raise TypeError(f"{layer}: the input is a {type(x).__name__}; pass a NumPy array or a "
                    f"cygrad Tensor (e.g. np.asarray(x, dtype=np.float32))")


def _ids(fn, ids):
    """An integer index array (a step argument being traced passes through)."""
    if isinstance(ids, _g.Traced):
        return ids
    if isinstance(ids, Tensor):
        ids = ids.data          # an integer tensor of ids (a float one is refused below)
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{fn}: indices must be integers, got {a.dtype}")
    return a


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of ``embedding_dim``; ``emb(ids)``
    gives ``ids.shape + (embedding_dim,)``.

    ``sparse=True`` makes the table's gradient a :class:`cygrad.graph.SparseRows`
    of the rows used (the optimisers update only those rows). Initialised
    ``N(0, 1)`` as PyTorch's.
    """

    def __init__(self, num_embeddings, embedding_dim, sparse=False, dtype=np.float32,
                 generator=None, _weight=None):
        super().__init__()
        for n, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{type(self).__name__}: {n} must be a positive integer, "
                                 f"got {v!r}")
        dt = _dtype(type(self).__name__, dtype)
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.sparse = bool(sparse)
        if _weight is None:
            rng = init.as_generator(generator, type(self).__name__)
            _weight = rng.standard_normal((num_embeddings, embedding_dim)).astype(dt)
        self.weight = Parameter(_weight)

    @classmethod
    def from_pretrained(cls, embeddings, freeze=False, sparse=False):
        """An Embedding holding a copy of ``embeddings`` (V, d); ``freeze`` keeps it fixed."""
        a = np.asarray(embeddings.data if isinstance(embeddings, Tensor) else embeddings)
        if a.ndim != 2:
            raise ValueError(f"from_pretrained: embeddings must be 2-D (V, d), got shape "
                             f"{a.shape}")
        m = cls(a.shape[0], a.shape[1], sparse=sparse, dtype=a.dtype, _weight=a)
        m.weight.requires_grad = not freeze
        return m

    def forward(self, ids):
        ids = _ids("Embedding", ids)
        if ids.ndim == 2:        # (B, k): one gather, the plan's op
            x = _g.embedding_windows(self.weight, ids, sparse=self.sparse)
            return x.reshape(ids.shape[0], ids.shape[1], self.embedding_dim)
        if isinstance(ids, _g.Traced):
            raise _g.TraceRefused(f"Embedding: compiled steps take 2-D index arguments (B, k); "
                                  f"{ids.name!r} has shape {ids.shape}; pass it as (B, 1)")
        flat = ids.reshape(-1, 1)
        x = _g.embedding_windows(self.weight, flat, sparse=self.sparse)
        return x.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self):
        return (f"{self.num_embeddings}, {self.embedding_dim}"
                + (", sparse=True" if self.sparse else ""))


class WindowEncoder(Embedding):
    """The lecture's window input: for windows (B, w) of word ids, the
    concatenation of their vectors (B, w*d) (``mode="concat"``), or their mean
    (B, d) (``mode="mean"``: position is lost). ``sparse=True`` by default:
    only the windows' rows are updated."""

    def __init__(self, num_embeddings, embedding_dim, window, mode="concat", sparse=True,
                 dtype=np.float32, generator=None):
        super().__init__(num_embeddings, embedding_dim, sparse=sparse, dtype=dtype,
                         generator=generator)
        if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
            raise ValueError(f"WindowEncoder: window must be a positive integer, got {window!r}")
        if mode not in ("concat", "mean"):
            raise ValueError(f"WindowEncoder: mode must be 'concat' or 'mean', got {mode!r}")
        self.window, self.mode = int(window), mode

    @property
    def output_size(self):
        return self.embedding_dim * (self.window if self.mode == "concat" else 1)

    def forward(self, windows):
        windows = _ids("WindowEncoder", windows)
        if windows.ndim != 2 or windows.shape[1] != self.window:
            raise ValueError(f"WindowEncoder: windows must be (B, {self.window}), got shape "
                             f"{windows.shape}")
        x = _g.embedding_windows(self.weight, windows, sparse=self.sparse)
        if self.mode == "mean":
            x = x.reshape(windows.shape[0], self.window, self.embedding_dim).mean(axis=1)
        return x

    def extra_repr(self):
        return (f"{self.num_embeddings}, {self.embedding_dim}, window={self.window}, "
                f"mode={self.mode!r}, sparse={self.sparse}")


_streams = itertools.count(1 << 20)


def _reset_streams():       # cygrad.manual_seed: the next Dropout gets the first stream
    global _streams
    _streams = itertools.count(1 << 20)


_random._resets.append(_reset_streams)


class Dropout(Module):
    """Inverted dropout (:func:`cygrad.dropout`): active in training mode, the
    identity after ``eval()``.

    The mask comes from a key: ``drop(x, key)`` uses the given key (in a
    compiled step, pass it as one of the step's arguments so that each step
    draws a new mask); ``drop(x)`` draws the next key from the module's own
    counter (seeded by ``seed``), in a compiled step too: the step advances the
    counter at every call as the eager layer would, so both train the same
    model. ``seed=None`` (the default) draws the seed from
    ``cygrad.manual_seed``'s generator when it was called, else uses 0.
    """


    def __init__(self, p=0.5, seed=None, stream=None):
        super().__init__()
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        if seed is None:        # cygrad.manual_seed's generator draws it, else 0
            from cygrad._random import default_generator
            g = default_generator()
            seed = 0 if g is None else int(g.integers(0, 2 ** 31))
        self.seed = int(seed)
        self.stream = stream
        self._stream = next(_streams)    # each Dropout its own masks, in construction order
        # the masks drawn so far (an array, changed in place: no setting of the layer);
        # a compiled step advances it at every call as the eager layer does
        self._counter = np.zeros(1, np.int64)

    @property
    def _count(self):
        return int(self._counter[0])

    def _next_key(self):
        key = (self.seed * 1_000_003 + int(self._counter[0])) % (2 ** 62)
        self._counter[0] += 1
        return key

    def _undo(self):
        self._counter[0] -= 1

    def forward(self, x, key=None):
        x = _input("Dropout", x)
        if not self.training or self.p == 0.0:
            return x
        stream = self._stream if self.stream is None else self.stream
        if key is None:
            key = self._next_key()
            if _g.engine._state.__dict__.get("tracing", False):
                # compiled: the plan reads this call's own key array, which the step
                # advances at every call, in call order (as eagerly: a layer called
                # twice in a step draws two keys)
                live = np.array([key], np.int64)

                def advance():
                    live[0] = self._next_key()
                key = _g.engine.LiveKey(live, advance, self._undo)
        return _g.dropout(x, self.p, key, stream=stream)

    def extra_repr(self):
        return f"p={self.p}"


class Sequential(Module):
    """Modules applied in order: ``Sequential(Linear(4, 8), Tanh(), Linear(8, 3))``;
    they are registered as ``"0"``, ``"1"``, ..."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {i} must be a Module, got {type(m).__name__}")
            self.add_module(str(i), m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        mods = list(self._modules.values())
        return Sequential(*mods[i]) if isinstance(i, slice) else mods[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class Identity(Module):
    def forward(self, x):
        return x


def _activation(cls_name, fn_name, doc, **defaults):
    def __init__(self, **kw):
        Module.__init__(self)
        bad = set(kw) - set(defaults)
        if bad:
            raise TypeError(f"{cls_name}: unknown argument(s) {sorted(bad)}")
        self.kw = {**defaults, **kw}

    def forward(self, x):
        return _g.ACTIVATIONS[fn_name](_input(cls_name, x), **self.kw)

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.kw.items())

    return type(cls_name, (Module,), {"__init__": __init__, "forward": forward,
                                      "extra_repr": extra_repr, "__doc__": doc})


Tanh = _activation("Tanh", "tanh", "``tanh(x)``, elementwise.")
ReLU = _activation("ReLU", "relu", "``max(0, x)``, elementwise.")
Sigmoid = _activation("Sigmoid", "sigmoid", "``1 / (1 + exp(-x))``, elementwise.")
GELU = _activation("GELU", "gelu", "GELU (the kernels' form), elementwise.")
SiLU = _activation("SiLU", "silu", "``x * sigmoid(x)``, elementwise.")
LeakyReLU = _activation("LeakyReLU", "leaky_relu", "``x`` for x > 0, ``negative_slope * x`` "
                        "otherwise.", negative_slope=0.01)
Hardtanh = _activation("Hardtanh", "hardtanh", "``clip(x, -1, 1)``, elementwise.")


class LayerNorm(Module):
    """Layer normalisation over the last axis (:func:`cygrad.layer_norm`), with a
    learned scale (ones) and shift (zeros) of ``normalized_shape`` values."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, dtype=np.float32):
        super().__init__()
        if isinstance(normalized_shape, (tuple, list)):
            if len(normalized_shape) != 1:
                raise ValueError("LayerNorm: normalises over the last axis only: "
                                 f"normalized_shape must be one size, got {normalized_shape}")
            normalized_shape = normalized_shape[0]
        if isinstance(normalized_shape, bool) or not isinstance(
                normalized_shape, (int, np.integer)) or normalized_shape < 1:
            raise ValueError(f"LayerNorm: normalized_shape must be a positive integer, got "
                             f"{normalized_shape!r}")
        self.normalized_shape, self.eps = int(normalized_shape), float(eps)
        if not self.eps > 0:
            raise ValueError(f"LayerNorm: eps must be a positive number, got {eps!r}")
        dt = np.dtype(dtype)
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dt))
            self.bias = Parameter(np.zeros(self.normalized_shape, dt))
        else:           # no parameters: the identity scale and no shift
            self.weight = self.bias = None
            self._unit = (Tensor(np.ones(self.normalized_shape, dt)),
                          Tensor(np.zeros(self.normalized_shape, dt)))

    def forward(self, x):
        w, b = (self.weight, self.bias) if self.elementwise_affine else self._unit
        return _g.layer_norm(_input("LayerNorm", x), w, b, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}"
                + ("" if self.elementwise_affine else ", elementwise_affine=False"))


class _Loss(Module):
    fn = None

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean' or 'sum', got "
                             f"{reduction!r}")
        self.reduction = reduction

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    """``loss(logits, labels)``: :func:`cygrad.softmax_cross_entropy` (logits (B, C),
    integer labels (B,)); ``weight``: per-class weights (C,)."""

    def __init__(self, weight=None, reduction="mean"):
        super().__init__(reduction)
        self.weight = weight

    def forward(self, logits, labels):
        return _g.softmax_cross_entropy(logits, labels, reduction=self.reduction,
                                        weight=self.weight)


class MSELoss(_Loss):
    """``loss(pred, target)``: :func:`cygrad.mse_loss`."""

    def forward(self, pred, target):
        return _g.mse_loss(pred, target, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """``loss(scores, targets)``: :func:`cygrad.sigmoid_binary_cross_entropy` (scores
    (B,) or (B, 1), targets in [0, 1] of their shape)."""

    def forward(self, scores, targets):
        return _g.sigmoid_binary_cross_entropy(scores, targets, reduction=self.reduction)
