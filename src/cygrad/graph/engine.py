"""The graph's engine: Tensor, the op protocol (Op, Context), topological
backward, grad mode and backends, and the tracing hooks of cygrad.compile.
See cygrad.graph for the whole picture."""

import contextlib
import threading

import numpy as np

from cygrad import kernels as _kernels
from cygrad import reference as _reference
from cygrad.graph import _guard
from cygrad.graph._guard import Context, is_protected, written  # noqa: F401
from cygrad.graph._guard import protect as _protect

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# ------------------------------------------------------------------ state

_state = threading.local()
_BACKENDS = {"cygrad": _kernels, "kernels": _kernels, "numpy": _reference,
             "reference": _reference}
_backend = [_kernels]   # process-wide, like cygrad.set_num_threads


def is_grad_enabled():
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def no_grad():
    """Inside this block, operations record no graph (inference, SGD updates)."""
    old = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = old


class use_backend:
    """Run graph ops on ``"cygrad"`` (compiled kernels, the default) or ``"numpy"``.

    Takes effect at once; used as a context manager, the previous backend is
    restored on exit::

        cygrad.use_backend("numpy")            # from now on
        with cygrad.use_backend("numpy"):      # only inside the block
            ...
    """

    def __init__(self, name):
        if name not in _BACKENDS:
            raise ValueError(f"use_backend: unknown backend {name!r}; "
                             f"choose 'cygrad' or 'numpy'")
        self._previous = _backend[0]
        _backend[0] = _BACKENDS[name]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _backend[0] = self._previous
        return False


def get_backend():
    """``"cygrad"`` or ``"numpy"``: where graph ops run now."""
    return "numpy" if _backend[0] is _reference else "cygrad"


# ------------------------------------------------------------------ tracing

class TraceRefused(Exception):
    """loss_fn did something with a traced argument that a plan cannot replay."""


_TRACE_HINT = ("; a compiled plan replays cygrad ops only: compute it outside loss_fn and "
               "pass the result as an argument")


class Traced:
    """An argument of a step being compiled (cygrad.compile): the array, which
    cygrad's ops accept as they would the array itself, but which refuses to be
    converted, indexed or computed on with NumPy (that computation would not be
    replayed by the plan: JAX's tracers refuse it likewise)."""

    __slots__ = ("array", "name")

    def __init__(self, array, name):
        self.array, self.name = array, name

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)
    ndim = property(lambda self: self.array.ndim)
    size = property(lambda self: self.array.size)

    def __len__(self):
        return len(self.array)

    def __repr__(self):
        return f"Traced({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def _refuse(self, what):
        raise TraceRefused(f"loss_fn {what} its argument {self.name!r}" + _TRACE_HINT)

    def __array__(self, *args, **kw):
        self._refuse("converts to a NumPy array")

    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        self._refuse(f"applies numpy.{ufunc.__name__} to")

    def __array_function__(self, func, types, args, kwargs):
        self._refuse(f"calls numpy.{func.__name__} on")

    def __getitem__(self, key):
        self._refuse("indexes")

    def __setitem__(self, key, value):
        self._refuse("writes into")

    def __iter__(self):
        self._refuse("iterates over")

    def __bool__(self):
        self._refuse("takes the truth value of")

    def __getattr__(self, name):        # only for names the slots above do not define
        if hasattr(np.ndarray, name):   # labels.max(), x.astype(...), x.reshape(...)
            self._refuse(f"calls the NumPy method .{name}() (or reads .{name}) of")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __index__(self):
        self._refuse("uses as an integer")

    __int__ = __float__ = __index__

    def _arith(self, *other):
        self._refuse("computes arithmetic on")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _arith
    __rtruediv__ = __floordiv__ = __mod__ = __pow__ = __neg__ = __eq__ = __ne__ = _arith
    __lt__ = __le__ = __gt__ = __ge__ = __and__ = __or__ = __invert__ = __matmul__ = _arith
    __hash__ = object.__hash__


def _untraced(x):
    return x.array if type(x) is Traced else x


@contextlib.contextmanager
def _trace():
    """While cygrad.compile traces loss_fn: yields (the ids of tensors made from
    NumPy data, the modules called, the LiveKeys of dropouts without a key
    argument), which the plan's guards and its per-call keys use."""
    old = (getattr(_state, "tracing", False), getattr(_state, "made", None),
           getattr(_state, "modules", None), getattr(_state, "live_keys", None))
    _state.tracing, _state.made, _state.modules, _state.live_keys = True, set(), [], []
    try:
        yield _state.made, _state.modules, _state.live_keys
    finally:
        _state.tracing, _state.made, _state.modules, _state.live_keys = old


class LiveKey:
    """A dropout key that a compiled step advances itself at every call (nn.Dropout
    without a key): ``array`` (int64, shape (1,)) holds the key of the call being
    traced; ``advance()`` writes the next one (as the eager layer would draw it) and
    ``undo()`` takes it back when a step fails before updating anything."""

    __slots__ = ("array", "advance", "undo")

    def __init__(self, array, advance, undo):
        self.array, self.advance, self.undo = array, advance, undo


def _live_key(key):
    """ops.dropout while tracing: the plan reads this key array at every call."""
    keys = getattr(_state, "live_keys", None)
    if keys is not None and getattr(_state, "tracing", False):
        keys.append(key)


def _traced_module(m):
    """Module.__call__ while tracing: the plan guards the module's settings."""
    mods = getattr(_state, "modules", None)
    if mods is not None and getattr(_state, "tracing", False):
        mods.append(m)


# ------------------------------------------------------------------ tensor

def _axis(fn, axis, n):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -n <= axis < n:
        raise ValueError(f"{fn}: axis {axis!r} is out of range for {n} dimensions")
    return int(axis) % n


class Tensor:
    """A node of the graph: a float32 or float64 NumPy array and, after
    ``backward()``, its gradient ``.grad`` (a NumPy array of the same shape).

    An integer (or bool) tensor holds labels, ids or masks: it can be passed
    wherever an op takes those (``labels``, ``windows``, ``tags``), never
    requires a gradient, and is refused as an input of arithmetic (no silent
    upcast: convert it with ``cg.tensor(t, dtype=np.float64)``)."""

    __slots__ = ("data", "grad", "requires_grad", "_op", "_parents", "_ctx", "_retain",
                 "name", "__weakref__")
    __array_priority__ = 1000   # ndarray <op> Tensor defers to Tensor's reflected op

    def __init__(self, data, requires_grad=False, name=None):
        made = getattr(_state, "made", None)
        if made is not None:         # compile: tensors made while loss_fn is traced
            made.add(id(self))
        data = _as_array(data, None)
        if requires_grad and data.dtype not in _FLOATS:
            raise TypeError(f"tensor: only float32 and float64 tensors can require "
                            f"gradients, got dtype {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._op = None
        self._parents = ()
        self._ctx = None
        self._retain = False
        self.name = name

    # -- array facts
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def is_leaf(self):
        return self._op is None

    def numpy(self):
        return self.data

    def item(self):
        return self.data.item()

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self._op.name or self._op.__name__}" if self._op is not None else ""
        return f"Tensor({np.array2string(self.data, precision=4)}, dtype={self.dtype}{extra}{op})"

    def retain_grad(self):
        """Keep ``.grad`` for this (non-leaf) tensor too, e.g. to look at delta."""
        self._retain = True
        return self

    def zero_grad(self):
        self.grad = None

    def detach(self):
        return Tensor(self.data)

    # -- operators
    def __add__(self, other):
        return _ops.Add.apply(self, other)

    def __radd__(self, other):
        return _ops.Add.apply(other, self)

    def __sub__(self, other):
        return _ops.Sub.apply(self, other)

    def __rsub__(self, other):
        return _ops.Sub.apply(other, self)

    def __mul__(self, other):
        return _ops.Mul.apply(self, other)

    def __rmul__(self, other):
        return _ops.Mul.apply(other, self)

    def __truediv__(self, other):
        return _ops.Div.apply(self, other)

    def __rtruediv__(self, other):
        return _ops.Div.apply(other, self)

    def __neg__(self):
        return _ops.Neg.apply(self)

    def __matmul__(self, other):
        return _ops.MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return _ops.MatMul.apply(other, self)

    def __pow__(self, other):
        return _ops.Pow.apply(self, other)

    def __rpow__(self, other):
        return _ops.Pow.apply(other, self)

    def __abs__(self):
        return _ops.Abs.apply(self)

    def __getitem__(self, key):
        return _ops.Index.apply(self, key=_ops._index_key(key))

    @property
    def T(self):
        return _ops.Transpose.apply(self)

    def exp(self):
        return _ops.Exp.apply(self)

    def log(self):
        return _ops.Log.apply(self)

    def abs(self):
        return _ops.Abs.apply(self)

    def softmax(self, axis=-1):
        return _ops.Softmax.apply(self, axis=axis)

    def log_softmax(self, axis=-1):
        return _ops.LogSoftmax.apply(self, axis=axis)

    def sum(self, axis=None, keepdims=False):
        return _ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops.Mean.apply(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.Reshape.apply(self, shape=shape)

    view = reshape      # PyTorch's name (a reshape here: the graph has no aliasing views)

    def flatten(self, start=0, end=-1):
        """Dimensions ``start`` to ``end`` (inclusive) merged into one."""
        n = self.data.ndim
        a, b = start % max(n, 1), end % max(n, 1)
        if n == 0:
            return self.reshape(1)
        if a > b:
            raise ValueError(f"flatten: start {start} is after end {end} for {n} dimensions")
        shape = self.data.shape
        return self.reshape(shape[:a] + (-1,) + shape[b + 1:])

    def squeeze(self, axis=None):
        """Without the dimensions of size 1 (or only ``axis``, which must be 1)."""
        shape = self.data.shape
        if axis is None:
            return self.reshape(tuple(d for d in shape if d != 1))
        ax = _axis("squeeze", axis, len(shape))
        if shape[ax] != 1:
            raise ValueError(f"squeeze: dimension {axis} has size {shape[ax]}, not 1")
        return self.reshape(shape[:ax] + shape[ax + 1:])

    def unsqueeze(self, axis):
        """With a new dimension of size 1 at ``axis``."""
        shape = self.data.shape
        ax = _axis("unsqueeze", axis, len(shape) + 1)
        return self.reshape(shape[:ax] + (1,) + shape[ax:])

    def max(self, axis=None, keepdims=False):
        """The largest values (along ``axis``); the gradient goes to the largest
        element (split equally among ties): the lecture's "max routes it"."""
        return _ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        """The smallest values (along ``axis``); the gradient goes to the smallest."""
        return _ops.Min.apply(self, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None):
        """Indices of the largest values, a NumPy int64 array (not part of the graph)."""
        return np.argmax(self.data, axis=axis)

    def argmin(self, axis=None):
        """Indices of the smallest values, a NumPy int64 array (not part of the graph)."""
        return np.argmin(self.data, axis=axis)

    def astype(self, dtype):
        """This tensor in another dtype (float32 <-> float64; integers to floats); the
        gradient comes back in this tensor's dtype."""
        dtype = np.dtype(dtype)
        if dtype not in _FLOATS and not (dtype.kind in "iub" and self.data.dtype.kind in "iub"):
            raise TypeError(f"astype: float32 and float64 tensors (or integer to integer); "
                            f"got {self.data.dtype} to {dtype}")
        if dtype == self.data.dtype:
            return self
        return _ops.Cast.apply(self, dtype=dtype)

    def to(self, dtype):
        """PyTorch's name for :meth:`astype` (dtypes only: there is one device)."""
        return self.astype(dtype)

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` in place (a leaf's), and return this tensor."""
        if requires_grad and self.data.dtype not in _FLOATS:
            raise TypeError(f"requires_grad_: only float32 and float64 tensors can require "
                            f"gradients, got dtype {self.data.dtype}")
        if not self.is_leaf and not requires_grad:
            raise ValueError("requires_grad_(False) on a tensor computed by an op: use "
                             "detach()")
        self.requires_grad = bool(requires_grad)
        return self

    # -- backprop
    def backward(self, grad=None, retain_graph=False):
        """Backpropagate from this tensor to every tensor that requires a gradient.

        Parameters
        ----------
        grad : array-like, optional
            The upstream gradient, shaped like this tensor. Required unless the
            tensor holds a single element (then it is 1).
        retain_graph : bool
            Keep what the graph's nodes saved for backward, so that backward can
            run through them again (as in PyTorch). By default it is freed, and
            the tensors it held become writable again.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require a gradient (no input "
                               "of the graph that made it has requires_grad=True)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward: grad must be given for a non-scalar tensor "
                                   f"(shape {self.shape}); only scalars start from 1")
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape}, the tensor has "
                                 f"shape {self.shape}")
            grad = grad.astype(self.dtype, copy=False)
        _backprop(self, grad, retain_graph)


def tensor(data, requires_grad=False, dtype=None, name=None):
    """Make a :class:`Tensor` holding a copy of ``data`` (as torch.tensor does:
    optimisers update ``.data`` in place, which must not write into the caller's array).

    Floating arrays keep their dtype (float32 or float64, either byte order);
    other float types (float16, longdouble) raise TypeError unless ``dtype`` says
    which to convert to. Integer and bool data keep their dtype (an integer
    tensor, for labels and ids, which cannot require a gradient); pass
    ``dtype=np.float64`` (or float32) to make numbers of them.
    """
    if isinstance(data, Tensor):
        data = data.data
    if type(data) is Traced:    # compile: the argument itself, so the plan reads it
        if data.dtype not in _FLOATS:
            raise TraceRefused(f"loss_fn makes an integer tensor of its argument "
                               f"{data.name!r}: pass the argument itself to the op that "
                               f"takes labels or ids (a plan reads it at every call)")
        if dtype is not None and np.dtype(dtype) != data.dtype:
            data._refuse("converts the dtype of")
        return Tensor(data.array, requires_grad=requires_grad, name=name)
    arr = _as_array(data, dtype)
    if isinstance(data, np.ndarray) and np.may_share_memory(arr, data):
        arr = arr.copy()
    return Tensor(arr, requires_grad=requires_grad, name=name)


def _bad_data(t, where):
    """The error for a tensor whose ``.data`` was replaced by something that is not a
    NumPy array (``p.data = [1, 2]``)."""
    return TypeError(f"{where}: the tensor's .data is a {type(t.data).__name__}, not a NumPy "
                     f"array (assign an array: t.data = np.asarray(value, dtype=np.float32))")


def _as_array(data, dtype):
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind in "iub":
            arr = np.asarray(data)
            if arr.dtype.kind not in "iub":
                raise TypeError(f"tensor: dtype {dtype} asked for data of dtype {arr.dtype}; "
                                f"an integer tensor is made from integer data only")
            out = np.array(arr, dtype=dtype.newbyteorder("="))
            if out.size and not np.array_equal(out, arr):
                raise ValueError(f"tensor: the data do not fit dtype {dtype} (values "
                                 f"{arr.min()}..{arr.max()})")
            return out
        if dtype not in _FLOATS:
            raise TypeError(f"tensor: dtype must be float32, float64 or an integer type, "
                            f"got {dtype}")
        return np.array(data, dtype=dtype)
    arr = np.asarray(data)
    if arr.dtype in _FLOATS:
        return arr
    if arr.dtype.kind == "f":
        if arr.dtype.newbyteorder("=") in _FLOATS:
            return arr.astype(arr.dtype.newbyteorder("="))     # byte-swapped: same precision
        raise TypeError(f"tensor: {arr.dtype} is not supported (float32 or float64); "
                        f"convert explicitly, e.g. with dtype=np.float32")
    if arr.dtype.kind in "biu":     # integers and bools: an integer tensor, native order
        return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    raise TypeError(f"tensor: cannot make a tensor from dtype {arr.dtype}")


def _backprop(root, grad, retain_graph=False):
    order = _topological_order(root)
    for node in order:
        ctx = node._ctx
        if ctx is not None:
            if ctx.saved is _FREED:
                raise RuntimeError(
                    f"backward: the graph was already backpropagated through "
                    f"{node._op.name or node._op.__name__} and what it saved was freed; "
                    f"pass retain_graph=True to the first backward() to run it twice")
            _check_versions(node)
    grads = {id(root): grad}
    try:
        _backward_walk(order, grads)
    finally:
        if not retain_graph:
            for node in order:
                ctx = node._ctx
                if ctx is not None and ctx.saved and ctx.saved is not _FREED:
                    ctx.release()
                    ctx.saved = _FREED


def _backward_walk(order, grads):
    for node in reversed(order):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if node._op is None or node._retain:
            node.grad = g if node.grad is None else node.grad + g
        if node._op is None:
            continue
        in_grads = node._op.backward(node._ctx, g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        if len(in_grads) != len(node._parents):
            raise RuntimeError(f"{node._op.name or node._op.__name__}: backward returned "
                               f"{len(in_grads)} gradients for {len(node._parents)} inputs")
        for parent, pg in zip(node._parents, in_grads):
            if pg is None or not isinstance(parent, Tensor) or not parent.requires_grad:
                continue
            key = id(parent)
            prev = grads.get(key)
            grads[key] = pg if prev is None else prev + pg


def _topological_order(root, every=False):
    """Nodes that lead to root and require a gradient (``every``: all of them, also
    through tensors without gradients, as cygrad.compile needs), parents before
    children. Iterative depth-first search: a chain of 10^5 nodes is fine."""
    order, seen = [], {id(root)}
    stack = [(root, iter(root._parents))]
    while stack:
        node, parents = stack[-1]
        for p in parents:
            if isinstance(p, Tensor) and (every or p.requires_grad) and id(p) not in seen:
                seen.add(id(p))
                stack.append((p, iter(p._parents)))
                break
        else:
            stack.pop()
            order.append(node)
    return order


# ------------------------------------------------------------------ op protocol

# Context (what a forward saves for its backward) and the write protection of the
# saved arrays, PyTorch's version counters for NumPy, live in cygrad.graph._guard.

_FREED = ("freed",)     # ctx.saved once backward ran through the node


def _check_versions(node):
    changed = node._ctx.changed()
    if changed is None:
        return
    i, then, now = changed
    op = node._op
    t = node._parents[i] if i >= 0 else node
    what = f"{t.name!r} " if t.name else ""
    role = "an input" if i >= 0 else "the output"
    raise RuntimeError(
        f"backward: {role} of {op.name or op.__name__} (tensor {what}of shape {t.shape}, "
        f"{t.dtype}) that it saved for backward was updated in place after the forward "
        f"pass (version {then}, now {now}: an optimiser or a compiled step wrote it); "
        f"backward would use the new values. Call backward before updating, or run the "
        f"forward again")


@contextlib.contextmanager
def writing(tensors):
    """cygrad's in-place writers (optimisers) update tensors inside this: a tensor
    that a live graph saved is written all the same, and its version is bumped so
    that a backward through that graph refuses to run."""
    opened = _guard.open_for_writing(tensors)
    try:
        yield
    finally:
        if opened:
            _guard.close_for_writing(opened)


class Op:
    """One operation: ``forward(ctx, *arrays, **kw) -> array`` beside
    ``backward(ctx, grad) -> one gradient per input`` (None where an input
    needs none; ``ctx.needs[i]`` says whether input i requires a gradient).

    ``Op.apply(*inputs, **kw)`` checks and converts the inputs (Python scalars
    take the dtype of the tensor inputs; mixing float32 and float64 tensors is
    an error), runs forward, and records the node when a gradient is needed.
    """

    name = None
    n_tensor_args = None   # trailing positional arguments beyond this are non-tensor
    int_ok = False         # True: integer tensors pass (ops that move, not compute)

    @classmethod
    def apply(cls, *inputs, **kw):
        # one pass over the inputs: this runs for every node of every step
        dtype = None
        for i, x in enumerate(inputs):
            if type(x) is Tensor or isinstance(x, Tensor):
                try:
                    d = x.data.dtype
                except AttributeError:      # (free on the fast path)
                    raise _bad_data(x, f"{cls.name or cls.__name__}: input {i}") from None
                if dtype is None:
                    if d not in _FLOATS and not cls.int_ok:
                        raise TypeError(
                            f"{cls.name or cls.__name__}: an input is an integer tensor "
                            f"({d}); convert it explicitly, e.g. cg.tensor(t, "
                            f"dtype=np.float64) (no silent upcast)")
                    dtype, first = d, i
                elif d != dtype:
                    raise TypeError(f"{cls.name or cls.__name__}: inputs mix {dtype} (input "
                                    f"{first}) and {d} (input {i}); convert one explicitly, "
                                    f"e.g. t.astype(np.{dtype}) (no silent upcast)")
        if dtype is None:
            raise TypeError(f"{cls.name or cls.__name__}: at least one input must be a Tensor")
        arrays = []
        needs = []
        for x in inputs:
            if type(x) is Tensor or isinstance(x, Tensor):
                arrays.append(x.data)
                needs.append(x.requires_grad)
            else:
                arrays.append(_constant(cls, x, dtype))
                needs.append(False)
        ctx = Context()
        ctx.needs = needs
        result = Tensor.__new__(Tensor)
        result.data = cls.forward(ctx, *arrays, **kw)
        result.grad = None
        result._retain = False
        result.name = None
        if is_grad_enabled() and any(needs):
            result.requires_grad = True
            result._op = cls
            result._parents = inputs
            result._ctx = ctx
            if ctx.saved and not getattr(_state, "tracing", False):
                _protect(ctx, inputs, result.data, Tensor)
        elif getattr(_state, "tracing", False):     # compile records every op
            result.requires_grad = False
            result._op = cls
            result._parents = inputs
            result._ctx = ctx
        else:
            result.requires_grad = False
            result._op = None
            result._parents = ()
            result._ctx = None
        return result

    @staticmethod
    def forward(ctx, *arrays, **kw):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError


def _constant(cls, x, dtype):
    """A non-tensor input: a Python number takes the tensors' dtype; a float array
    must already have it."""
    x = _untraced(x)
    if isinstance(x, (int, float, np.number)) and not isinstance(x, bool):
        return np.asarray(x, dtype=dtype)
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        if x.dtype != dtype and x.dtype.newbyteorder("=") == dtype:
            x = x.astype(dtype)             # the same numbers in the other byte order
        if x.dtype != dtype:
            raise TypeError(f"{cls.name or cls.__name__}: inputs mix {dtype} and {x.dtype}; "
                            f"convert one explicitly (no silent upcast)")
        return x
    what = f"an array of {x.dtype}" if isinstance(x, np.ndarray) else \
        f"a {type(x).__name__}"
    raise TypeError(f"{cls.name or cls.__name__}: an input is {what}; inputs are cygrad "
                    f"Tensors, float32 or float64 NumPy arrays, or Python numbers (convert "
                    f"with np.asarray(x, dtype=np.float32))")


def _B():
    return _backend[0]


def _broadcast_shape(name, a, b):
    try:
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{name}: shapes {a.shape} and {b.shape} do not broadcast") from None


def _unbroadcast(g, shape):
    """Sum g down to ``shape``: the backward of NumPy broadcasting."""
    if g.shape == shape:
        return g
    if len(shape) == 1 and g.ndim == 2 and g.shape[1] == shape[0]:
        return _B().bias_grad(g)            # the bias case: column sums, in double
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape)
                                      if n == 1 and g.shape[i + lead] != 1)
    out = g.sum(axis=axes, keepdims=False).reshape(shape) if axes else g.reshape(shape)
    return np.asarray(out)          # (a sum over every axis is a NumPy scalar)


from cygrad.graph import ops as _ops  # noqa: E402  (the ops import this module)
