"""The graph's ops: each one class holding its forward and its local backward
side by side (arithmetic, matmul, reshapes, max/min, concat, linear, the
activations, embedding windows, the losses)."""

import numpy as np

from cygrad import kernels as _kernels
from cygrad.graph.engine import (
    _B,
    Op,
    Tensor,
    Traced,
    TraceRefused,
    _broadcast_shape,
    _unbroadcast,
    _untraced,
)

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
    int_ok = True       # moves integers (labels, ids) without arithmetic

    @staticmethod
    def forward(ctx, a):
        return a.T

    @staticmethod
    def backward(ctx, g):
        return (g.T,)


class Reshape(Op):
    name = "reshape"
    int_ok = True       # moves integers (labels, ids) without arithmetic

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


class _Extreme(Op):
    """max / min over an axis (or all): the gradient goes to the extreme element,
    split equally among ties."""

    pick = None

    @classmethod
    def forward(cls, ctx, a, axis=None, keepdims=False):
        if a.size == 0:
            raise ValueError(f"{cls.name}: an empty tensor has no {cls.name}")
        if axis is not None:
            axis = _check_axis(cls.name, axis, a.ndim)
        out = cls.pick(a, axis=axis, keepdims=True)
        hit = (a == out)
        ctx.shapes = a.shape
        # (the routing weights: a new array of the op's, not an input to protect)
        ctx.kw = (axis, keepdims, hit / hit.sum(axis=axis, keepdims=True).astype(a.dtype))
        return np.asarray(out if keepdims else out.reshape(
            () if axis is None else out.shape[:axis] + out.shape[axis + 1:]))

    @classmethod
    def backward(cls, ctx, g):
        axis, keepdims, weights = ctx.kw
        if not keepdims:
            g = g.reshape((1,) * len(ctx.shapes)) if axis is None else np.expand_dims(g, axis)
        return ((weights * g).astype(g.dtype),)


def _check_axis(fn, axis, n):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -n <= axis < n:
        raise ValueError(f"{fn}: axis {axis!r} is out of range for {n} dimensions")
    return int(axis) % n


class Max(_Extreme):
    name = "max"
    pick = staticmethod(np.max)


class Min(_Extreme):
    name = "min"
    pick = staticmethod(np.min)


class Cast(Op):
    """float32 <-> float64 (an integer tensor to a float one starts a graph)."""
    name = "cast"
    int_ok = True

    @staticmethod
    def forward(ctx, a, dtype):
        ctx.kw = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return (g.astype(ctx.kw) if ctx.kw.kind == "f" else None,)


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
    __array_ufunc__ = None      # ndarray + SparseRows defers to SparseRows.__radd__

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


class Dropout(Op):
    """Inverted dropout with a keyed mask (cygrad.kernels.dropout): backward is
    the same mask on the gradient, recomputed from the key."""

    name = "dropout"

    @staticmethod
    def forward(ctx, x, p, key, stream=0, key_array=None, row=0):
        # row: x is rows row, row + 1, ... of a larger batch (its masks are those rows')
        first = row * (x.size // x.shape[0]) if row and x.ndim and x.shape[0] else 0
        ctx.kw = (p, key, stream, key_array, first)
        return _B().dropout(x, p, key, stream=stream, first=first)

    @staticmethod
    def backward(ctx, g):
        p, key, stream, _, first = ctx.kw
        return (_B().dropout(g, p, key, stream=stream, first=first),)


def dropout(x, p, key, stream=0, training=True):
    """Inverted dropout: each element of ``x`` is zeroed with probability ``p``
    and the others scaled by ``1 / (1 - p)``; ``training=False`` returns ``x``.

    The mask is a keyed hash of (key, element index) (see
    :func:`cygrad.kernels.dropout`), so it is the same for any thread count, and
    it is new only when the key is: pass a new key every step. In a step
    compiled with :func:`cygrad.compile`, the key must be one of the step's
    arguments (an int64 array of shape () or (1,)), read at every call.

    A key array of two integers ``[key, row]`` draws the masks of rows row,
    row + 1, ... of a larger batch under ``key``: ``dropout(x[a:b], p, [key, a])``
    is rows a:b of ``dropout(x, p, key)`` (data-parallel ranks draw one process's
    masks so).

    Parameters
    ----------
    x : Tensor
    p : float in [0, 1)
    key : int in [0, 2**63 - 1), or an integer array holding one (or two: key, row)
    stream : int in [0, 2**32)
        Give each dropout of a step its own stream: one key then draws
        independent masks for them.
    """
    if not training:
        return x
    from cygrad.graph.engine import LiveKey, _live_key
    if type(key) is LiveKey:        # nn.Dropout in a compiled step: the step advances it
        _live_key(key)
        traced, arr = True, key.array
    else:
        traced = type(key) is Traced
        arr = _untraced(key)
    if isinstance(arr, Tensor):
        raise TypeError("dropout: key must be an integer or an integer array, got a Tensor")
    if isinstance(arr, np.ndarray) and (arr.dtype.kind not in "iu" or arr.size not in (1, 2)
                                        or arr.ndim > 1):
        raise ValueError(f"dropout: key must be one integer, or two (key, row), got an "
                         f"array of dtype {arr.dtype} and shape {arr.shape}")
    from cygrad.kernels._elementwise import DROPOUT_MAX_KEY, dropout_params

    row = 0
    if isinstance(arr, np.ndarray) and arr.size == 2:
        row = int(arr[1])
        if not 0 <= row < DROPOUT_MAX_KEY:
            raise ValueError(f"dropout: the key's row must be in [0, 2**63 - 1), got {row}")
        p, k, _, _ = dropout_params(p, arr[:1], stream=stream)
    else:
        p, k, _, _ = dropout_params(p, arr, stream=stream)
    return Dropout.apply(x, p=p, key=k, stream=int(stream), key_array=arr if traced else None,
                         row=row)


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


class EmbeddingBagWindows(Op):
    """Each window slot the mean of its bag's table rows (cygrad.kernels.
    embedding_bag_windows); backward: row-sparse, each item gets the slot's
    gradient over the bag's size (:class:`SparseRows`)."""

    name = "embedding_bag_windows"

    @staticmethod
    def forward(ctx, table, windows, ptr, items, fixed=True):
        ctx.save_for_backward(windows)
        ctx.kw = (ptr, items, fixed)     # fixed: ptr and items are not traced arguments
        ctx.shapes = table.shape
        return _B().embedding_bag_windows(table, windows, ptr, items)

    @staticmethod
    def backward(ctx, g):
        (windows,) = ctx.saved
        ptr, items, _ = ctx.kw
        rows, values = _B().embedding_bag_backward(g, windows, ptr, items)
        return (SparseRows(rows, values, ctx.shapes),)


def embedding_bag_windows(table, windows, ptr, items):
    """``X[i]`` = the window's slots side by side, slot j the mean of the table
    rows in bag ``windows[i, j]``: ``items[ptr[b]:ptr[b + 1]]`` (zeros if empty).

    Parameters
    ----------
    table : Tensor (V, d)
    windows : integer array (B, w) of bag ids
    ptr : integer array (nbags + 1,), non-decreasing from 0 to len(items)
    items : integer array of row ids of ``table``

    Returns
    -------
    Tensor (B, w*d); the table's gradient is a :class:`SparseRows`.
    """
    traced = type(windows) is Traced    # compile: the plan copies it at every call
    fixed = type(ptr) is not Traced and type(items) is not Traced
    windows = _index_array("embedding_bag_windows", "windows", windows)
    if not traced:      # backward must see the ids forward saw, whatever the caller does
        windows = windows.copy()
    # (copies: a compiled step copies them into its plan when it traces)
    ptr = np.array(_index_array("embedding_bag_windows", "ptr", ptr), dtype=np.int64)
    items = np.array(_index_array("embedding_bag_windows", "items", items), dtype=np.int64)
    if windows.ndim != 2:
        raise ValueError(f"embedding_bag_windows: windows must be 2-D (B, w), got shape "
                         f"{windows.shape}")
    return EmbeddingBagWindows.apply(table, windows=windows, ptr=ptr, items=items,
                                     fixed=fixed)


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
    traced = type(windows) is Traced    # compile: the plan copies it at every call
    windows = _index_array("embedding_windows", "windows", windows)
    if windows.ndim != 2:
        raise ValueError(f"embedding_windows: windows must be 2-D (B, w), got shape "
                         f"{windows.shape}")
    if not traced:      # backward must see the ids forward saw, whatever the caller does
        windows = windows.copy()
    return EmbeddingWindows.apply(table, windows=windows, sparse=bool(sparse))


# ------------------------------------------------------------------ losses

class SoftmaxCrossEntropy(Op):
    name = "softmax_cross_entropy"

    @staticmethod
    def forward(ctx, logits, labels, reduction="mean", weight=None):
        if weight is None:          # (a backend without the keyword still serves)
            loss, d = _B().softmax_cross_entropy(logits, labels) if reduction == "mean" \
                else _B().softmax_cross_entropy(logits, labels, reduction=reduction)
        else:
            loss, d = _B().softmax_cross_entropy(logits, labels, reduction=reduction,
                                                 weight=weight)
        ctx.save_for_backward(d)
        ctx.kw = labels
        ctx.shapes = (reduction, weight)
        return np.asarray(loss, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved      # (softmax - onehot) / B, from the fused forward
        return (d * g,)


def softmax_cross_entropy(logits, labels, reduction="mean", weight=None):
    """Softmax cross-entropy of logits (B, C) against integer labels (B,).

    Parameters
    ----------
    logits : Tensor (B, C)
    labels : integer array (B,)
    reduction : "mean" (default) or "sum" over the batch
    weight : array (C,) of class weights, optional
        PyTorch's rule: the weighted mean divides by the sum of the batch's label
        weights. Used in float64; a float64 C-contiguous array is used as it is, so
        a compiled step reads it at every call.
    """
    from cygrad.kernels._losses import class_weights, reduction_divisor
    fn = "softmax_cross_entropy"
    labels = _index_array(fn, "labels", labels)
    reduction_divisor(reduction, 1, fn)
    if weight is not None:
        if isinstance(weight, Tensor):
            weight = weight.data
        weight = class_weights(_untraced(weight), getattr(logits, "shape", (0, 0))[-1], fn)
    return SoftmaxCrossEntropy.apply(logits, labels=labels, reduction=reduction, weight=weight)


class SigmoidBCE(Op):
    name = "sigmoid_binary_cross_entropy"

    @staticmethod
    def forward(ctx, scores, targets, reduction="mean"):
        loss, d = _B().sigmoid_binary_cross_entropy(scores, targets) if reduction == "mean" \
            else _B().sigmoid_binary_cross_entropy(scores, targets, reduction=reduction)
        ctx.save_for_backward(d)
        ctx.kw = targets
        ctx.shapes = reduction
        return np.asarray(loss, dtype=scores.dtype)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved
        return (d * g,)


def sigmoid_binary_cross_entropy(scores, targets, reduction="mean"):
    """Logistic loss of scores (B,) or (B, 1) against targets of their shape, in [0, 1];
    ``reduction`` "mean" (default) or "sum"."""
    from cygrad.kernels._losses import reduction_divisor
    reduction_divisor(reduction, 1, "sigmoid_binary_cross_entropy")
    targets = np.asarray(targets.data if isinstance(targets, Tensor) else _untraced(targets))
    return SigmoidBCE.apply(scores, targets=targets, reduction=reduction)


class MaxMargin(Op):
    name = "max_margin"

    @staticmethod
    def forward(ctx, s_true, s_corrupt, margin=1.0, reduction="mean"):
        loss, ds, dsc = _B().max_margin(s_true, s_corrupt, margin) if reduction == "mean" \
            else _B().max_margin(s_true, s_corrupt, margin, reduction=reduction)
        ctx.save_for_backward(ds, dsc)
        ctx.kw = margin
        ctx.shapes = reduction
        return np.asarray(loss, dtype=s_true.dtype)

    @staticmethod
    def backward(ctx, g):
        ds, dsc = ctx.saved
        return ds * g, dsc * g


def max_margin(s_true, s_corrupt, margin=1.0, reduction="mean"):
    """Mean (``reduction="sum"``: sum) of max(0, margin - s + s_c) over a batch of
    (true, corrupt) window scores."""
    from cygrad.kernels._losses import reduction_divisor
    reduction_divisor(reduction, 1, "max_margin")
    return MaxMargin.apply(s_true, s_corrupt, margin=margin, reduction=reduction)


class MSELoss(Op):
    """Mean squared error over every element (cygrad.kernels.mse_loss)."""

    name = "mse_loss"

    @staticmethod
    def forward(ctx, pred, target, reduction="mean"):
        loss, d = _B().mse_loss(pred, target, reduction=reduction)
        ctx.save_for_backward(d)
        ctx.kw = target
        ctx.shapes = reduction
        return np.asarray(loss, dtype=pred.dtype)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved
        return (d * g,)


def mse_loss(pred, target, reduction="mean"):
    """Mean squared error of pred (any shape) against target of its shape (an array
    or a tensor, converted to pred's dtype); ``reduction`` "mean" (over every
    element, the default) or "sum"."""
    from cygrad.kernels._losses import reduction_divisor
    reduction_divisor(reduction, 1, "mse_loss")
    if isinstance(target, Tensor):
        if target.requires_grad:
            raise TypeError("mse_loss: target must not require a gradient (it is the "
                            "regression target; detach it)")
        target = target.data
    target = np.asarray(_untraced(target))
    return MSELoss.apply(pred, target=target, reduction=reduction)


class CrfNll(Op):
    """Linear-chain CRF negative log-likelihood (cygrad.kernels.crf_nll); the
    gradients come from the fused forward-backward pass."""

    name = "crf_nll"

    @staticmethod
    def forward(ctx, scores, trans, lengths, tags, allowed=None, reduction="token_mean"):
        loss, ds, dT = _B().crf_nll(scores, lengths, tags, trans, allowed)
        div = {"sum": 1.0, "mean": max(len(lengths), 1),
               "token_mean": max(scores.shape[0], 1)}[reduction]
        ctx.save_for_backward(ds, dT)
        ctx.kw = (lengths, tags, allowed, reduction, div)
        return np.asarray(loss.sum() / div, dtype=scores.dtype)

    @staticmethod
    def backward(ctx, g):
        ds, dT = ctx.saved
        div = ctx.kw[4]
        scale = g / ds.dtype.type(div)
        return ds * scale, dT * scale


def crf_nll(scores, lengths, tags, trans, allowed=None, reduction="token_mean"):
    """Negative log-likelihood of gold tag paths under a linear-chain CRF.

    Parameters
    ----------
    scores : Tensor (N, C)
        Per-token tag scores of whole sentences laid end to end.
    lengths : integer array (S,), each >= 1, summing to N
    tags : integer array (N,), the gold tags
    trans : Tensor (C + 1, C + 1)
        Transition scores; index C is the sentence boundary (row C: start -> tag,
        column C: tag -> end).
    allowed : bool array (C + 1, C + 1), optional
        Permitted transitions (IOB2 constraints, say); forbidden ones get no
        probability and no gradient.
    reduction : "token_mean" (default: the sum over sentences divided by N, the
        scale of a per-token cross-entropy), "mean" (over sentences) or "sum"
    """
    if reduction not in ("sum", "mean", "token_mean"):
        raise ValueError(f"crf_nll: reduction must be 'sum', 'mean' or 'token_mean', got "
                         f"{reduction!r}")
    # (a step being compiled reads its arguments at every call: they stay themselves;
    # otherwise copies, so that backward sees what forward saw)
    copy_l, copy_t = type(lengths) is not Traced, type(tags) is not Traced
    lengths = np.array(_index_array("crf_nll", "lengths", lengths), copy=copy_l)
    tags = np.array(_index_array("crf_nll", "tags", tags), copy=copy_t)
    if allowed is not None:
        allowed = np.array(allowed, copy=True) if isinstance(allowed, np.ndarray) else allowed
    return CrfNll.apply(scores, trans, lengths=lengths, tags=tags, allowed=allowed,
                        reduction=reduction)


# ------------------------------------------------------ elementwise maths, softmax, indexing

class Exp(Op):
    name = "exp"

    @staticmethod
    def forward(ctx, a):
        y = np.exp(a)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.saved[0],)          # d exp(a) = exp(a) da: the output is reused


class Log(Op):
    name = "log"

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(a)                # log(0) = -inf, log(<0) = nan, as NumPy and PyTorch

    @staticmethod
    def backward(ctx, g):
        with np.errstate(divide="ignore", invalid="ignore"):
            return (g / ctx.saved[0],)


class Pow(Op):
    """``a ** b`` with broadcasting; ``b`` may be a tensor or a number."""

    name = "pow"

    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("pow", a, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.power(a, b)
        ctx.save_for_backward(a, b, y)
        return y

    @staticmethod
    def backward(ctx, g):
        a, b, y = ctx.saved
        da = db = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if ctx.needs[0]:    # b a^(b-1); where b = 0 that is 0 (also at a = 0, as PyTorch)
                da = _unbroadcast(np.where(b == 0, 0, g * b * np.power(a, b - 1)), a.shape)
            if ctx.needs[1]:    # a^b log a; where a = 0 and b > 0 the limit is 0
                db = _unbroadcast(np.where((a == 0) & (b > 0), 0, g * y * np.log(a)), b.shape)
        return da, db


class Abs(Op):
    name = "abs"

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.abs(a)

    @staticmethod
    def backward(ctx, g):
        return (g * np.sign(ctx.saved[0]),)   # 0 at 0, as PyTorch (a subgradient)


def _axis(fn, axis, ndim):
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"{fn}: axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{fn}: axis {axis} is out of range for a {ndim}-D tensor")
    return int(axis) % ndim


class Softmax(Op):
    name = "softmax"

    @staticmethod
    def forward(ctx, a, axis=-1):
        axis = _axis("softmax", axis, a.ndim)
        e = np.exp(a - a.max(axis=axis, keepdims=True))     # shifted: no overflow
        y = e / e.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(y)
        ctx.kw = axis
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved      # J = diag(y) - y yᵀ, applied without forming it
        return (y * (g - (g * y).sum(axis=ctx.kw, keepdims=True)),)


class LogSoftmax(Op):
    name = "log_softmax"

    @staticmethod
    def forward(ctx, a, axis=-1):
        axis = _axis("log_softmax", axis, a.ndim)
        s = a - a.max(axis=axis, keepdims=True)
        y = s - np.log(np.exp(s).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(y)
        ctx.kw = axis
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved      # d log_softmax: g - softmax * sum(g)
        return (g - np.exp(y) * g.sum(axis=ctx.kw, keepdims=True),)


class LayerNorm(Op):
    """Layer normalisation over the last axis (Ba et al. 2016):
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, the mean and the (biased)
    variance over the last axis of each row (summed in double by the kernel)."""

    name = "layer_norm"

    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        D = x.shape[-1]
        if weight.shape != (D,) or bias.shape != (D,):
            raise ValueError(f"layer_norm: weight and bias must be ({D},) for an input of "
                             f"shape {x.shape}, got {weight.shape} and {bias.shape}")
        # the kernel on the rows (cygrad.kernels.layer_norm; the NumPy reference under
        # use_backend("reference")); its xhat and rstd are the op's own arrays (kept in
        # kw, not inputs to protect)
        y, xhat, rstd = _B().layer_norm(x.reshape(-1, D), weight, bias, eps)
        ctx.kw = (xhat, rstd, weight, eps)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, weight, _ = ctx.kw
        D = xhat.shape[-1]
        g2 = np.ascontiguousarray(g).reshape(-1, D)
        B = _B()
        dx, gx = B.layer_norm_backward(g2, weight, xhat, rstd, ctx.needs[0], ctx.needs[1])
        dweight = B.bias_grad(gx) if ctx.needs[1] else None
        dbias = B.bias_grad(g2) if ctx.needs[2] else None
        return (None if dx is None else dx.reshape(g.shape), dweight, dbias)


def layer_norm(x, weight, bias, eps=1e-5):
    """Layer normalisation of ``x`` over its last axis, scaled by ``weight`` and
    shifted by ``bias`` (both of the last axis's size); ``eps`` inside the square
    root."""
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"layer_norm: eps must be a positive number, got {eps!r}")
    return LayerNorm.apply(x, weight, bias, eps=eps)


def softmax(x, axis=-1):
    """Softmax along ``axis`` (shifted by the maximum, so large inputs do not overflow)."""
    return Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    """``log(softmax(x))`` along ``axis``, computed without forming the softmax (stable)."""
    return LogSoftmax.apply(x, axis=axis)


def exp(x):
    """``e ** x``, elementwise."""
    return Exp.apply(x)


def log(x):
    """Natural logarithm, elementwise (``log(0) = -inf``; negative inputs give nan)."""
    return Log.apply(x)


def abs(x):     # noqa: A001  (the name users reach for, as torch.abs)
    """``|x|``, elementwise; its gradient at 0 is 0."""
    return Abs.apply(x)


def pow(x, exponent):   # noqa: A001
    """``x ** exponent`` (either may be a tensor or a number), with broadcasting."""
    return Pow.apply(x, exponent)


def _index_key(key):
    """The key of ``tensor[key]`` with every array in it copied (backward must
    scatter to the positions forward read, whatever the caller does next) and
    checked: integers, booleans, slices, None and Ellipsis only."""
    def one(k):
        if isinstance(k, Traced):
            raise TraceRefused(f"indexing a tensor with the step argument {k.name!r}")
        if isinstance(k, Tensor):
            raise TypeError("indexing: a Tensor cannot index a Tensor; index with an integer "
                            "array (tensor.data if it holds indices)")
        if k is None or k is Ellipsis or isinstance(k, slice):
            return k
        if isinstance(k, (bool, np.bool_, int, np.integer)):
            return k
        a = np.array(k)
        if a.dtype.kind not in "iub":
            raise TypeError(f"indexing: indices must be integers, booleans or slices, got "
                            f"{a.dtype}")
        return a
    return tuple(one(k) for k in key) if isinstance(key, tuple) else one(key)


class Index(Op):
    """``a[key]`` with NumPy's basic and advanced indexing; backward adds the
    gradient into the positions read (repeated indices add up)."""

    int_ok = True

    name = "index"

    @staticmethod
    def forward(ctx, a, key):
        try:
            y = a[key]
        except IndexError as e:
            raise IndexError(f"indexing a tensor of shape {a.shape}: {e}") from None
        ctx.shapes = a.shape
        ctx.kw = key
        return np.array(y, copy=True)       # a copy: the result owns its data, as PyTorch's

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shapes, dtype=g.dtype)
        key = ctx.kw
        if all(k is None or k is Ellipsis or isinstance(k, (slice, int, np.integer))
               and not isinstance(k, (bool, np.bool_))
               for k in (key if isinstance(key, tuple) else (key,))):
            out[key] = g            # basic indexing reads each position once: a plain write
        else:
            np.add.at(out, key, g)  # advanced: repeated positions add up
        return (out,)

