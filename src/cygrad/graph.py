"""A computation graph with local gradients: the second half of CS224N lecture 3.

A :class:`Tensor` holds a NumPy array. Every operation on tensors is an
:class:`Op`: one class holding its ``forward`` and its local ``backward`` side
by side; ``forward`` saves what ``backward`` needs on a context object. Calling
``loss.backward()`` orders the graph topologically (iteratively: no recursion
limit), walks it in reverse, and at each node turns the upstream gradient into
one gradient per input with the node's local gradient. Gradients meeting at a
value used twice are summed. Each node's upstream gradient is computed once and
handed to every input below it (the lecture's delta, reused).

The ops run on the compiled kernels (``cygrad.kernels``) by default; inside
``use_backend("numpy")`` they run on ``cygrad.reference`` instead, with the
same results.

Gradient bookkeeping follows PyTorch: ``.grad`` is kept for leaves (tensors
created by the user with ``requires_grad=True``) and for tensors that called
:meth:`Tensor.retain_grad`. Calling ``backward()`` again (on the same or another
graph) *adds* into ``.grad``; set ``.grad = None`` (or call ``zero_grad``)
between steps.
"""

import contextlib
import threading

import numpy as np

from cygrad import kernels as _kernels
from cygrad import reference as _reference

__all__ = [
    "Tensor", "tensor", "Op", "SparseRows", "no_grad", "is_grad_enabled", "use_backend", "get_backend",
    "maximum", "minimum", "concat", "linear", "embedding_windows", "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy", "max_margin", "gradcheck", "GradcheckError",
    "sigmoid", "tanh", "relu", "leaky_relu", "hardtanh", "gelu", "silu", "ACTIVATIONS",
]

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
    """While cygrad.compile traces loss_fn."""
    old = getattr(_state, "tracing", False), getattr(_state, "made", None)
    _state.tracing, _state.made = True, set()
    try:
        yield _state.made
    finally:
        _state.tracing, _state.made = old


# ------------------------------------------------------------------ tensor

class Tensor:
    """A node of the graph: a float32 or float64 NumPy array and, after
    ``backward()``, its gradient ``.grad`` (a NumPy array of the same shape)."""

    __slots__ = ("data", "grad", "requires_grad", "_op", "_parents", "_ctx", "_retain",
                 "name", "__weakref__")
    __array_priority__ = 1000   # ndarray <op> Tensor defers to Tensor's reflected op

    def __init__(self, data, requires_grad=False, name=None):
        made = getattr(_state, "made", None)
        if made is not None:         # compile: tensors made while loss_fn is traced
            made.add(id(self))
        data = _as_float_array(data, None)
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
        op = f", op={type(self._op).__name__}" if self._op is not None else ""
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
        return Add.apply(self, other)

    def __radd__(self, other):
        return Add.apply(other, self)

    def __sub__(self, other):
        return Sub.apply(self, other)

    def __rsub__(self, other):
        return Sub.apply(other, self)

    def __mul__(self, other):
        return Mul.apply(self, other)

    def __rmul__(self, other):
        return Mul.apply(other, self)

    def __truediv__(self, other):
        return Div.apply(self, other)

    def __rtruediv__(self, other):
        return Div.apply(other, self)

    def __neg__(self):
        return Neg.apply(self)

    def __matmul__(self, other):
        return MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return MatMul.apply(other, self)

    @property
    def T(self):
        return Transpose.apply(self)

    def sum(self, axis=None, keepdims=False):
        return Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return Mean.apply(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    # -- backprop
    def backward(self, grad=None):
        """Backpropagate from this tensor to every tensor that requires a gradient.

        Parameters
        ----------
        grad : array-like, optional
            The upstream gradient, shaped like this tensor. Required unless the
            tensor holds a single element (then it is 1).
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
        _backprop(self, grad)


def tensor(data, requires_grad=False, dtype=None, name=None):
    """Make a :class:`Tensor` holding a copy of ``data`` (as torch.tensor does:
    optimisers update ``.data`` in place, which must not write into the caller's array).

    Floating arrays keep their dtype (float32 or float64); other data becomes
    float64 unless ``dtype`` says otherwise.
    """
    if isinstance(data, Tensor):
        data = data.data
    if type(data) is Traced:    # compile: the argument itself, so the plan reads it
        if data.dtype not in _FLOATS or (dtype is not None and np.dtype(dtype) != data.dtype):
            data._refuse("converts the dtype of")
        return Tensor(data.array, requires_grad=requires_grad, name=name)
    arr = _as_float_array(data, dtype)
    if isinstance(data, np.ndarray) and np.may_share_memory(arr, data):
        arr = arr.copy()
    return Tensor(arr, requires_grad=requires_grad, name=name)


def _as_float_array(data, dtype):
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in _FLOATS:
            raise TypeError(f"tensor: dtype must be float32 or float64, got {dtype}")
        return np.array(data, dtype=dtype)
    arr = np.asarray(data)
    if arr.dtype in _FLOATS:
        return arr
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64)
    raise TypeError(f"tensor: cannot make a float tensor from dtype {arr.dtype}")


def _backprop(root, grad):
    order = _topological_order(root)
    grads = {id(root): grad}
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


def _topological_order(root):
    """Nodes that lead to root and require a gradient, parents before children.
    Iterative depth-first search: a chain of 10^5 nodes is fine."""
    order, seen = [], {id(root)}
    stack = [(root, iter(root._parents))]
    while stack:
        node, parents = stack[-1]
        for p in parents:
            if isinstance(p, Tensor) and p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                stack.append((p, iter(p._parents)))
                break
        else:
            stack.pop()
            order.append(node)
    return order


# ------------------------------------------------------------------ op protocol

class Context:
    """Carries what a forward saves for its backward."""

    __slots__ = ("saved", "needs", "shapes", "kw")

    def save_for_backward(self, *arrays):
        self.saved = arrays


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

    @classmethod
    def apply(cls, *inputs, **kw):
        # one pass over the inputs: this runs for every node of every step
        dtype = None
        for x in inputs:
            if type(x) is Tensor or isinstance(x, Tensor):
                d = x.data.dtype
                if dtype is None:
                    dtype = d
                elif d != dtype:
                    raise TypeError(f"{cls.name or cls.__name__}: inputs mix {dtype} and "
                                    f"{d}; convert one explicitly (no silent upcast)")
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
        if x.dtype != dtype:
            raise TypeError(f"{cls.name or cls.__name__}: inputs mix {dtype} and {x.dtype}; "
                            f"convert one explicitly (no silent upcast)")
        return x
    raise TypeError(f"{cls.name or cls.__name__}: cannot use {type(x).__name__} "
                    f"{getattr(x, 'dtype', '')} as an input")


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
    return g.sum(axis=axes, keepdims=False).reshape(shape) if axes else g.reshape(shape)


# ------------------------------------------------------------------ arithmetic

class Add(Op):
    name = "add"

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        if a.ndim == 2 and b.ndim == 1 and a.shape[1] == b.shape[0]:
            return _B().add_bias(a, b)      # z = XWᵀ + b: the layer's bias add
        _broadcast_shape("add", a, b)
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return (_unbroadcast(g, sa) if ctx.needs[0] else None,
                _unbroadcast(g, sb) if ctx.needs[1] else None)


class Sub(Op):
    name = "sub"

    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        _broadcast_shape("sub", a, b)
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return (_unbroadcast(g, sa) if ctx.needs[0] else None,
                _unbroadcast(-g, sb) if ctx.needs[1] else None)


class Mul(Op):
    name = "mul"

    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("mul", a, b)
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved     # x switches the gradient: each side gets g times the other
        return (_unbroadcast(g * b, a.shape) if ctx.needs[0] else None,
                _unbroadcast(g * a, b.shape) if ctx.needs[1] else None)


class Div(Op):
    name = "div"

    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("div", a, b)
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return (_unbroadcast(g / b, a.shape) if ctx.needs[0] else None,
                _unbroadcast(-g * a / (b * b), b.shape) if ctx.needs[1] else None)


class Neg(Op):
    name = "neg"

    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return (-g,)


def _c_operand(x):
    """(array, transposed): a C-contiguous array and whether to read it transposed,
    so that a transposed view (W.T) reaches the kernel without a copy."""
    if x.flags.c_contiguous or not x.flags.f_contiguous or x.ndim != 2:
        return x, False
    return x.T, True


class MatMul(Op):
    """``a @ b`` with NumPy's rules for 1-D and 2-D operands."""

    name = "matmul"

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim not in (1, 2) or b.ndim not in (1, 2):
            raise ValueError(f"matmul: operands must be 1-D or 2-D, got shapes {a.shape} "
                             f"and {b.shape}")
        a2 = a.reshape(1, -1) if a.ndim == 1 else a
        b2 = b.reshape(-1, 1) if b.ndim == 1 else b
        if a2.shape[1] != b2.shape[0]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align "
                             f"({a2.shape[1]} != {b2.shape[0]})")
        ctx.save_for_backward(a2, b2)
        ctx.shapes = (a.shape, b.shape)
        (ac, ta), (bc, tb) = _c_operand(a2), _c_operand(b2)
        out = _B().matmul(ac, bc, trans_a=ta, trans_b=tb)
        if a.ndim == 1 and b.ndim == 1:
            return out.reshape(())
        if a.ndim == 1:
            return out.reshape(-1)
        if b.ndim == 1:
            return out.reshape(-1)
        return out

    @staticmethod
    def backward(ctx, g):
        a2, b2 = ctx.saved
        sa, sb = ctx.shapes
        g2 = g.reshape(a2.shape[0], b2.shape[1])
        da = db = None
        if ctx.needs[0]:   # dA = G Bᵀ
            bc, tb = _c_operand(b2)
            da = _B().matmul(g2, bc, trans_b=not tb).reshape(sa)
        if ctx.needs[1]:   # dB = Aᵀ G
            ac, ta = _c_operand(a2)
            db = _B().matmul(ac, g2, trans_a=not ta).reshape(sb)
        return da, db


class Transpose(Op):
    name = "transpose"

    @staticmethod
    def forward(ctx, a):
        return a.T

    @staticmethod
    def backward(ctx, g):
        return (g.T,)


class Reshape(Op):
    name = "reshape"

    @staticmethod
    def forward(ctx, a, shape):
        ctx.shapes = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape shape {a.shape} into {shape}") from None

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.shapes),)


class Sum(Op):
    name = "sum"

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shapes = a.shape
        ctx.kw = (axis, keepdims)
        return np.asarray(a.sum(axis=axis, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        axis, keepdims = ctx.kw
        shape = ctx.shapes
        if axis is not None and not keepdims:
            g = np.expand_dims(g, axis)
        return (np.broadcast_to(g, shape).copy(),)   # + distributes g to every element


class Mean(Op):
    name = "mean"

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shapes = a.shape
        ctx.kw = (axis, keepdims)
        return np.asarray(a.mean(axis=axis, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        axis, keepdims = ctx.kw
        shape = ctx.shapes
        n = np.prod(shape) if axis is None else np.prod(
            [shape[i] for i in np.atleast_1d(axis)])
        if axis is not None and not keepdims:
            g = np.expand_dims(g, axis)
        return (np.broadcast_to(g / g.dtype.type(n), shape).copy(),)


class _MaxMin(Op):
    """Route the gradient to the larger (smaller) input; at a tie it is split
    equally, which is also what central differences measure there."""

    take_first = None

    @classmethod
    def forward(cls, ctx, a, b):
        _broadcast_shape(cls.name, a, b)
        ctx.save_for_backward(a, b)
        return cls.take_first(a, b)

    @classmethod
    def backward(cls, ctx, g):
        a, b = ctx.saved
        if cls is Maximum:
            wa = (a > b) + 0.5 * (a == b)
        else:
            wa = (a < b) + 0.5 * (a == b)
        wa = wa.astype(g.dtype)
        return (_unbroadcast(g * wa, a.shape) if ctx.needs[0] else None,
                _unbroadcast(g * (1 - wa), b.shape) if ctx.needs[1] else None)


class Maximum(_MaxMin):
    name = "maximum"
    take_first = staticmethod(np.maximum)


class Minimum(_MaxMin):
    name = "minimum"
    take_first = staticmethod(np.minimum)


def maximum(a, b):
    """Elementwise max; the gradient goes to the larger input (split at ties)."""
    return Maximum.apply(a, b)


def minimum(a, b):
    """Elementwise min; the gradient goes to the smaller input (split at ties)."""
    return Minimum.apply(a, b)


class Concat(Op):
    name = "concat"

    @staticmethod
    def forward(ctx, *arrays, axis=-1):
        try:
            out = np.concatenate(arrays, axis=axis)
        except ValueError as e:
            raise ValueError(f"concat: shapes {[a.shape for a in arrays]} do not concatenate "
                             f"along axis {axis}: {e}") from None
        ctx.kw = (axis, np.cumsum([a.shape[axis] for a in arrays])[:-1])
        return out

    @staticmethod
    def backward(ctx, g):
        axis, cuts = ctx.kw
        return tuple(np.split(g, cuts, axis=axis))


def concat(tensors, axis=-1):
    """Concatenate tensors along ``axis``; the backward splits the gradient back."""
    return Concat.apply(*tensors, axis=axis)


# ------------------------------------------------------------------ layers

class Linear(Op):
    """``x Wᵀ + b`` for a batch x: (B, D), W: (H, D), b: (H,): the lecture's
    z = Wx + b for every row. Backward: dx = G W, dW = Gᵀ x, db = column sums."""

    name = "linear"

    @staticmethod
    def forward(ctx, x, W, b):
        if x.ndim != 2 or W.ndim != 2 or b.ndim != 1 or x.shape[1] != W.shape[1] \
                or b.shape[0] != W.shape[0]:
            raise ValueError(f"linear: need x (B, D), W (H, D), b (H,); got x {x.shape}, "
                             f"W {W.shape}, b {b.shape}")
        ctx.save_for_backward(x, W)
        z = _B().matmul(x, W, trans_b=True)
        return _B().add_bias(z, b, out=z)

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved
        B = _B()
        return (B.matmul(g, W) if ctx.needs[0] else None,
                B.matmul(g, x, trans_a=True) if ctx.needs[1] else None,
                B.bias_grad(g) if ctx.needs[2] else None)


def linear(x, W, b):
    """``x @ W.T + b`` in one node (no transpose materialised)."""
    return Linear.apply(x, W, b)


def _make_activation(act_name):
    class Activation(Op):
        name = act_name

        @staticmethod
        def forward(ctx, z, **kw):
            f, _, saves = _B().ACTIVATIONS[act_name]
            y = f(z, **kw)
            ctx.save_for_backward(y if saves == "output" else z)
            ctx.kw = kw
            return y

        @staticmethod
        def backward(ctx, g):
            _, fb, _ = _B().ACTIVATIONS[act_name]
            return (fb(g, ctx.saved[0], **ctx.kw),)

    Activation.__name__ = Activation.__qualname__ = act_name.title().replace("_", "")

    def fn(z, **kw):
        return Activation.apply(z, **kw)

    fn.__name__ = act_name
    fn.__doc__ = (f"{act_name} of a tensor, elementwise; backward uses "
                  f"cygrad.kernels.{act_name}_backward.")
    return Activation, fn


ACTIVATIONS = {}
for _n in _kernels.ACTIVATIONS:
    ACTIVATIONS[_n] = _make_activation(_n)[1]
sigmoid = ACTIVATIONS["sigmoid"]
tanh = ACTIVATIONS["tanh"]
relu = ACTIVATIONS["relu"]
leaky_relu = ACTIVATIONS["leaky_relu"]
hardtanh = ACTIVATIONS["hardtanh"]
gelu = ACTIVATIONS["gelu"]
silu = ACTIVATIONS["silu"]


class SparseRows:
    """A gradient that is zero outside a few rows of a (V, d) table: row
    ``indices[k]`` receives ``rows[k]``; repeated indices add up.

    ``embedding_windows(..., sparse=True)`` produces it, so that a training step
    touches only the rows of the batch's windows instead of all V rows;
    :class:`cygrad.optim.SGD` applies it in place, and :meth:`to_dense` gives
    the ordinary array.
    """

    __slots__ = ("indices", "rows", "shape")

    def __init__(self, indices, rows, shape):
        self.indices = indices          # (n,) integer row ids
        self.rows = rows                # (n, d) gradient rows
        self.shape = tuple(shape)       # (V, d)

    @property
    def dtype(self):
        return self.rows.dtype

    def to_dense(self):
        dense = np.zeros(self.shape, dtype=self.rows.dtype)
        _B().embedding_scatter_add(dense, self.indices.reshape(-1, 1), self.rows)
        return dense

    def reshape(self, *shape):
        return self.to_dense().reshape(*shape)

    def __add__(self, other):
        if isinstance(other, SparseRows):
            return SparseRows(np.concatenate([self.indices, other.indices]),
                              np.concatenate([self.rows, other.rows]), self.shape)
        dense = np.array(other, dtype=self.rows.dtype, copy=True)
        _B().embedding_scatter_add(dense, self.indices.reshape(-1, 1), self.rows)
        return dense

    __radd__ = __add__

    def __repr__(self):
        return f"SparseRows({len(self.indices)} rows of a {self.shape} table)"


class EmbeddingWindows(Op):
    """Gather the rows of each window and concatenate them; backward scatters
    each slot's gradient back into its row (rows used twice get the sum), or,
    with ``sparse=True``, hands back the touched rows only (:class:`SparseRows`)."""

    name = "embedding_windows"

    @staticmethod
    def forward(ctx, table, windows, sparse=False):
        ctx.save_for_backward(windows)
        ctx.shapes = table.shape
        ctx.kw = sparse
        return _B().embedding_gather(table, windows)

    @staticmethod
    def backward(ctx, g):
        (windows,) = ctx.saved
        V, d = ctx.shapes
        if ctx.kw:
            return (SparseRows(windows.reshape(-1), g.reshape(windows.size, d), (V, d)),)
        grad = np.zeros((V, d), dtype=g.dtype)
        _B().embedding_scatter_add(grad, windows, g)
        return (grad,)


def _index_array(fn, name, x):
    x = x.data if isinstance(x, Tensor) else _untraced(x)
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{fn}: {name} must be integers, got {x.dtype}")
    return x


def embedding_windows(table, windows, sparse=False):
    """``X[i] = concat(table[windows[i, 0]], ..., table[windows[i, w-1]])``.

    Parameters
    ----------
    table : Tensor (V, d)
    windows : integer array (B, w), row indices into ``table``
    sparse : bool
        If True, ``table.grad`` becomes a :class:`SparseRows` holding only the
        rows of the windows (apply it with :class:`cygrad.optim.SGD`).

    Returns
    -------
    Tensor (B, w*d)
    """
    windows = _index_array("embedding_windows", "windows", windows)
    if windows.ndim != 2:
        raise ValueError(f"embedding_windows: windows must be 2-D (B, w), got shape "
                         f"{windows.shape}")
    return EmbeddingWindows.apply(table, windows=windows, sparse=bool(sparse))


# ------------------------------------------------------------------ losses

class SoftmaxCrossEntropy(Op):
    name = "softmax_cross_entropy"

    @staticmethod
    def forward(ctx, logits, labels):
        loss, d = _B().softmax_cross_entropy(logits, labels)
        ctx.save_for_backward(d)
        ctx.kw = labels
        return np.asarray(loss, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved      # (softmax - onehot) / B, from the fused forward
        return (d * g,)


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy of logits (B, C) against integer labels (B,)."""
    labels = _index_array("softmax_cross_entropy", "labels", labels)
    return SoftmaxCrossEntropy.apply(logits, labels=labels)


class SigmoidBCE(Op):
    name = "sigmoid_binary_cross_entropy"

    @staticmethod
    def forward(ctx, scores, targets):
        loss, d = _B().sigmoid_binary_cross_entropy(scores, targets)
        ctx.save_for_backward(d)
        ctx.kw = targets
        return np.asarray(loss, dtype=scores.dtype)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved
        return (d * g,)


def sigmoid_binary_cross_entropy(scores, targets):
    """Mean logistic loss of scores (B,) against targets (B,) in [0, 1]."""
    targets = np.asarray(targets.data if isinstance(targets, Tensor) else _untraced(targets))
    return SigmoidBCE.apply(scores, targets=targets)


class MaxMargin(Op):
    name = "max_margin"

    @staticmethod
    def forward(ctx, s_true, s_corrupt, margin=1.0):
        loss, ds, dsc = _B().max_margin(s_true, s_corrupt, margin)
        ctx.save_for_backward(ds, dsc)
        ctx.kw = margin
        return np.asarray(loss, dtype=s_true.dtype)

    @staticmethod
    def backward(ctx, g):
        ds, dsc = ctx.saved
        return ds * g, dsc * g


def max_margin(s_true, s_corrupt, margin=1.0):
    """Mean of max(0, margin - s + s_c) over a batch of (true, corrupt) window scores."""
    return MaxMargin.apply(s_true, s_corrupt, margin=margin)


# ------------------------------------------------------------------ gradcheck

class GradcheckError(AssertionError):
    """An analytic gradient disagrees with central differences."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, seed=0):
    """Compare backward's gradients with central differences, in float64.

    ``fn(*inputs)`` must return a Tensor. Every input is copied to float64;
    for a non-scalar output, the check is on ``sum(v * fn(...))`` for a fixed
    random ``v``. For every element of every input with ``requires_grad``,
    (f(x + eps) - f(x - eps)) / (2 eps) is compared with the analytic gradient:
    they match when ``|analytic - numeric| <= atol + rtol * |numeric|``.

    Returns True when all match. Otherwise raises :class:`GradcheckError`
    naming the input, the element and both values (or returns False when
    ``raise_exception=False``).
    """
    eps = float(eps)
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"gradcheck: eps must be a positive finite number, got {eps!r}")
    inputs = list(inputs)
    xs = [Tensor(np.array(x.data, dtype=np.float64), requires_grad=x.requires_grad)
          if isinstance(x, Tensor) else x for x in inputs]
    out = fn(*xs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    v = np.random.default_rng(seed).standard_normal(out.shape) if out.size != 1 else None

    def scalar(o):
        return float(o.data.sum() if v is None else np.sum(v * o.data))

    for x in xs:
        if isinstance(x, Tensor):
            x.grad = None
    if out.requires_grad:
        out.backward(None if v is None else v.reshape(out.shape))
    for i, x in enumerate(xs):
        if not isinstance(x, Tensor) or not x.requires_grad:
            continue
        analytic = x.grad if x.grad is not None else np.zeros_like(x.data)
        if isinstance(analytic, SparseRows):
            analytic = analytic.to_dense()
        flat = x.data.reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + eps
            with no_grad():
                fp = scalar(fn(*xs))
            flat[j] = old - eps
            with no_grad():
                fm = scalar(fn(*xs))
            flat[j] = old
            numeric = (fp - fm) / (2 * eps)
            a = analytic.reshape(-1)[j]
            if not abs(a - numeric) <= atol + rtol * abs(numeric):
                where = np.unravel_index(j, x.shape) if x.ndim else ()
                label = inputs[i].name or f"input {i}"
                msg = (f"gradcheck: {label} (shape {x.shape}) element {tuple(map(int, where))}: "
                       f"analytic {a:.10g} vs numeric {numeric:.10g}")
                if raise_exception:
                    raise GradcheckError(msg)
                return False
    return True
