"""Compiled training steps: ``cygrad.compile(loss_fn, optimizer=opt)``.

The first call for a given set of argument shapes and dtypes runs ``loss_fn``
on the graph executor with its arguments wrapped as traced inputs, turns the
recorded graph into a plan (cygrad._plan: tasks grouped into stages, every
buffer placed once in a workspace that grows with the largest batch seen) and
completes that first step on the graph (backward, then the optimiser). Later
calls with the same shapes and dtypes replay the plan in one call without the
GIL: forward, backward and the optimiser's update, each parameter updated as
soon as its gradient is final (for SGD, -lr rides on the loss gradient so that
W += (-lr Δ)ᵀ X accumulates straight into W; embedding rows are updated in
place, only those of the batch).

As with JAX's jit, Python control flow in ``loss_fn`` is traced as the first
call took it, and a plan is keyed by the arguments' shapes and dtypes, not by
their values. The arguments may only be handed to cygrad ops (an index array to
``embedding_windows``, labels to a loss, a float array to ``linear``...): a
NumPy computation on them inside ``loss_fn`` cannot be replayed, so it makes the
step run on the eager graph (with a warning), as does an op that has no plan
kernel. ``strict=True`` raises :class:`CompileError` instead, before anything is
updated. A compiled step leaves ``.grad`` None.

Ops with plan kernels: ``embedding_windows`` (dense or sparse), ``concat`` (of
2-D values along the last axis), ``linear``, ``x @ W.T`` and ``+ b`` (W, b leaf
tensors: the layer written out), every activation, ``dropout`` (its key an
argument of the step, or nn.Dropout's own counter, which the step advances at
every call), ``reshape`` that keeps the batch axis, ``mean`` over the window
axis, and, as the loss (the graph's root), ``softmax_cross_entropy`` (with
``reduction`` and class ``weight``), ``sigmoid_binary_cross_entropy`` (scores
(B,) or (B, 1)), ``max_margin`` and ``mse_loss``. Optimisers state the update a plan may fuse
(``fused_update()``): plain SGD, Adagrad, Adam and AdamW are folded into backward
(each parameter updated as soon as its gradient is final; row-sparse tables on
the batch's rows); any other (SGD with momentum or weight decay, Adam on a
dense-gradient table, a subclass whose ``step`` is its own, an object of the
user's with ``params``, ``step()`` and ``zero_grad()``) runs in *gradient mode*:
the plan leaves every gradient in a buffer of the workspace, ``.grad`` is set
from them as eager backward would set it, then the optimiser's ``step()`` runs.
A value may feed several ops only if it is a parameter or an input (a parameter
used twice gets the sum of its gradients).

Guards: a plan records what it baked in (each parameter's identity and
``requires_grad``, the optimiser's class and ``fused_update()``, the settings of
the nn modules called while tracing) and every call compares them; a change
traces the step again, or under ``strict=True`` raises naming it. Values are
checked at every call before anything is updated (ids, targets).
"""

import inspect
import threading
import warnings

import numpy as np

from cygrad import _config, _plan
from cygrad import kernels as _K
from cygrad import graph as _g
from cygrad.graph import Tensor, Traced
from cygrad.graph.ops import SparseRows
from cygrad import optim as _optim

__all__ = ["compile", "CompiledStep", "CompileError", "CompileWarning"]

# task codes: the order of the T_* enum in _plan.pyx
TASKS = ("gather", "linear", "act", "xent", "bce", "margin", "mean", "bias_bwd", "linear_bwd",
         "act_bwd", "mean_bwd", "emb_sgd", "emb_adagrad", "update", "bias", "dropout",
         "emb_adam", "mse")
_CODE = {name: i for i, name in enumerate(TASKS)}
_LOSSES = ("softmax_cross_entropy", "sigmoid_binary_cross_entropy", "max_margin", "mse_loss")
ROWS, COLS, OWN, FLAT, ONE = "rows", "cols", "own", "flat", "one"
_AXIS = {ROWS: 0, COLS: 1, OWN: 0, FLAT: 0, ONE: 0}
U_NONE, U_SGD, U_ADAGRAD, U_SET, U_ADD, U_ADAM = range(6)
# the optimiser state a plan binds, by kind: the optimiser's list attribute holding it
_STATE_ATTR = {"state": "state", "adam_m": "exp_avg", "adam_v": "exp_avg_sq"}
ACT_CODES = {"sigmoid": 0, "tanh": 1, "relu": 2, "leaky_relu": 3, "hardtanh": 4, "gelu": 5,
             "silu": 6}
# activations whose derivative follows from the output (for relu, leaky_relu with a
# slope >= 0 and hardtanh, the output has the input's sign and clipping), so that
# the output may overwrite the input
_FROM_OUTPUT = ("sigmoid", "tanh", "relu", "leaky_relu", "hardtanh")
COL_GRAIN = 32          # column chunks: multiples of every GEMM micro-kernel's NR
FLAT_GRAIN = 4096
OWNER_CLASSES = 8       # embedding rows are owned in blocks of 16 rows, 8 classes
ROW_MODE = 128          # from this batch size a linear layer is split by rows
MIN_WORK = 400000       # multiply-adds of the step's products below which one thread runs
ALIGN = 64
PARTS = 1               # chunks per thread and group (finer chunks repack GEMM operands)


class CompileError(RuntimeError):
    """``strict=True``: the step cannot be compiled (the message says why)."""


class CompileWarning(UserWarning):
    """A compiled step falls back to the eager graph (once per reason)."""


class _Unsupported(Exception):
    pass


ROW_ALIGN = 8           # row chunks: multiples of 8 (the GEMM's row groups, LOSS_BLOCK)


def _row_grain(m):
    return ROW_ALIGN


# ------------------------------------------------------------------ plan building

class _Buf:
    """A workspace buffer (placed in the arena at the end) or an outside array."""

    __slots__ = ("nbytes", "ext", "offset", "index")

    def __init__(self, nbytes=0, ext=None):
        self.nbytes, self.ext, self.offset, self.index = nbytes, ext, None, None


class _View:
    """rows x cols elements of a buffer, from element offset ``off``, rows ``ld`` apart."""

    __slots__ = ("buf", "off", "ld", "rows", "cols", "item", "index")

    def __init__(self, buf, rows, cols, item, off=0, ld=None):
        self.buf, self.rows, self.cols, self.item = buf, rows, cols, item
        self.off, self.ld = off, cols if ld is None else ld
        self.index = None


class _Task:
    __slots__ = ("name", "space", "mode", "act", "m", "k", "h", "w", "alpha", "v", "segs",
                 "access", "pidx")

    def __init__(self, name, space, v, access, mode=U_NONE, act=0, m=0, k=0, h=0, w=0,
                 alpha=0.0, segs=(), pidx=0):
        self.name, self.space, self.v, self.access = name, space, v, access
        self.mode, self.act, self.m, self.k, self.h, self.w = mode, act, m, k, h, w
        self.alpha, self.segs, self.pidx = alpha, list(segs), pidx


def _fused_form(opt):
    """The optimiser's own statement of the update a plan may fuse (None: gradient mode)."""
    f = getattr(opt, "fused_update", None)
    return f() if callable(f) else None


def _dense_tables(order, params):
    """Whether a parameter table is gathered by a dense-gradient embedding_windows."""
    return any(n._op is not None and n._op.name == "embedding_windows" and not n._ctx.kw
               and id(n._parents[0]) in params for n in order)


class _Builder:
    def __init__(self, root, traced, opt, form, clip=False):
        self.root, self.traced, self.opt = root, traced, opt
        self.dt = root.dtype
        self.item = self.dt.itemsize
        # the parameters a plan updates: those that require a gradient now (a frozen
        # one is read like a constant tensor; the guards re-trace when that changes)
        self.pindex = {id(p): i for i, p in enumerate(opt.params) if p.requires_grad}
        order = _g.engine._topological_order(root, every=True)
        if form is not None and form[0] == "adam" and _dense_tables(order, self.pindex):
            # Adam on a dense-gradient table moves every row's moments (eager Adam does):
            # the table's gradient is made dense and the optimiser's own step runs
            form = None
        self.form = form
        self.adagrad = form == ("adagrad",)
        self.adam = form is not None and form[0] == "adam"      # and AdamW
        self.decoupled = bool(self.adam and form[1])
        # gradient mode: the plan writes every gradient into a buffer of its own and the
        # optimiser's own step() runs after it, for the updates a plan does not fold into
        # backward (SGD with momentum or weight decay, an optimiser of the user's, a
        # subclass whose step() is its own, clipping)
        self.gradmode = clip or not (self.adam or self.adagrad or form == ("sgd",))
        if self.gradmode:
            self.adagrad = self.adam = False
        self.updated = set()        # indices of the parameters the plan updates
        self.gradbufs = {}          # parameter index -> gradient view (gradient mode)
        self.gradsparse = {}        # table index -> its segments (gradient mode)
        self.tasks = []
        self.ext = []               # (kind, payload): "param" i, "state" i, "input" j, "const" T/arr
        self.inputs = {}            # arg index -> {"buf", "view", "bound", "kind", "op"}
        self.val = {}               # id(tensor) -> _View
        self.grad = {}
        self.arg_of = {id(a.array): j for j, a in enumerate(traced)}
        self.ext_bufs = {}
        self.live, self.live_used = {}, {}      # id(key array) -> LiveKey
        self.info = {}
        self.made = set()
        self.work = 0

    # -- buffers
    def new(self, rows, cols, item=None):
        item = item or self.item
        return _View(_Buf(rows * cols * item), rows, cols, item)

    def ext_buf(self, kind, key, payload=None):
        k = (kind, key)
        if k not in self.ext_bufs:
            b = _Buf(ext=(kind, payload if payload is not None else key))
            self.ext_bufs[k] = b
        return self.ext_bufs[k]

    def leaf(self, t):
        """The view of a leaf tensor: a parameter, a traced float input or a constant."""
        v = self.val.get(id(t))
        if v is not None:
            return v
        if type(t) is Traced:       # a float argument handed to an op directly
            j = self.arg_of[id(t.array)]
            if t.dtype != self.dt or t.ndim not in (1, 2):
                raise _Unsupported(f"argument {t.name!r} of dtype {t.dtype} and shape "
                                   f"{t.shape} as an op input")
            self.inputs.setdefault(j, {"kind": "float", "shape": t.shape})
            rows = t.shape[0]
            v = _View(self.ext_buf("input", j), rows, t.size // max(rows, 1), self.item)
            self.val[id(t)] = v
            return v
        if t._op is not None:
            raise _Unsupported("internal: leaf() on a node")
        shape = t.shape
        rows = shape[0] if len(shape) else 1
        cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if id(t) in self.pindex:
            buf = self.ext_buf("param", self.pindex[id(t)])
        elif t.requires_grad:
            raise _Unsupported(f"a leaf tensor of shape {shape} requires a gradient but is not "
                               f"among the optimiser's parameters")
        elif id(t.data) in self.arg_of:
            j = self.arg_of[id(t.data)]
            buf = self.ext_buf("input", j)
            self.inputs.setdefault(j, {"kind": "float", "shape": t.shape})
        else:
            if id(t) in self.made:
                raise _Unsupported(f"loss_fn makes a tensor of shape {shape} from NumPy data "
                                   f"(its values would be frozen into the plan; make it "
                                   f"outside loss_fn, or pass the array as an argument)")
            if not t.data.flags.c_contiguous:
                raise _Unsupported(f"a constant tensor of shape {shape} is not C-contiguous")
            buf = self.ext_buf("const", id(t), t)
        v = _View(buf, rows, cols, self.item)
        self.val[id(t)] = v
        return v

    def value(self, t):
        if type(t) is Traced or t._op is None:
            return self.leaf(t)
        return self.val[id(t)]

    def ids(self, arr, op, bound, shape_what):
        """The view of an index array: a traced input (copied and checked at every
        call) or a constant (checked now, copied into the plan)."""
        j = self.arg_of.get(id(arr))
        rows = arr.shape[0] if arr.ndim else 1
        cols = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
        if j is not None:
            spec = self.inputs.get(j)
            if spec is None:
                spec = self.inputs[j] = {"kind": "ids", "view": self.new(rows, cols, 8),
                                         "bound": bound, "op": op, "shape": arr.shape}
            elif spec["kind"] != "ids":
                raise _Unsupported(f"argument {self.traced[j].name!r} is used both as indices "
                                   f"and as values")
            spec["bound"] = min(spec["bound"], bound)
            return spec["view"]
        a = np.ascontiguousarray(arr, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() >= bound):
            raise _Unsupported(f"{op}: constant {shape_what} out of range [0, {bound})")
        buf = self.ext_buf("const", id(a), a.copy())
        return _View(buf, rows, cols, 8)

    def add(self, task):
        self.tasks.append(task)

    # -- forward
    def forward(self):
        order = _g.engine._topological_order(self.root, every=True)
        uses = {}
        for node in order:
            for p in node._parents:
                if isinstance(p, Tensor):
                    uses[id(p)] = uses.get(id(p), 0) + 1
        self.uses = uses
        for node in order:
            if node._op is None:
                continue
            for p in node._parents:
                if isinstance(p, Tensor) and p._op is not None and uses[id(p)] > 1:
                    raise _Unsupported(f"the output of {p._op.name} feeds {uses[id(p)]} ops "
                                       f"(only parameters and inputs may be used twice)")
            self.fwd(node)
        self.order = order

    def fwd(self, node):
        op, ctx = node._op, node._ctx
        name = op.name
        pa = [p for p in node._parents]
        if name == "embedding_windows":
            table = pa[0]
            if table._op is not None:
                raise _Unsupported("embedding_windows of a computed table")
            (windows,) = ctx.saved
            B, w = windows.shape
            V, d = table.shape
            tv = self.leaf(table)
            iv = self.ids(windows, "embedding_windows", V, "windows")
            out = self.new(B, w * d)
            self.add(_Task("gather", (ROWS, B, _row_grain(B)), [tv, iv, out],
                           [(tv, "r", "all"), (iv, "r", ROWS), (out, "w", ROWS)], w=w, h=d,
                           m=B))
            self.val[id(node)] = out
            self.info[id(node)] = ("emb", table, iv, B, w, d, bool(ctx.kw))
        elif name == "concat":
            axis, _ = ctx.kw
            if any(p.ndim != 2 for p in pa) or axis not in (1, -1):
                raise _Unsupported("concat other than of 2-D values along the last axis")
            B = pa[0].shape[0]
            total = sum(p.shape[1] for p in pa)
            out = self.new(B, total)
            col = 0
            for p in pa:
                if p._op is None:
                    raise _Unsupported("concat of a leaf tensor")
                v = self.val[id(p)]
                if v.rows != B or v.cols != p.shape[1]:
                    raise _Unsupported("concat of a reshaped value")
                v.buf, v.off, v.ld = out.buf, col, total
                col += p.shape[1]
            self.val[id(node)] = out
        elif name in ("linear", "matmul"):
            if name == "linear":
                x, W, b = pa
            else:       # x @ W.T, W a leaf (H, D): a linear layer without its bias
                x, wt = pa
                if not (isinstance(wt, Tensor) and wt._op is not None
                        and wt._op.name == "transpose" and isinstance(wt._parents[0], Tensor)
                        and wt._parents[0]._op is None and wt._parents[0].ndim == 2
                        and isinstance(x, (Tensor, Traced)) and x.ndim == 2):
                    raise _Unsupported("matmul other than x @ W.T (x 2-D, W a (H, D) leaf "
                                       "tensor) has no plan kernel")
                W, b = wt._parents[0], None
            xv = self.value(x)
            Wv = self.leaf(W)
            bv = self.leaf(b) if b is not None else None
            B, D = x.shape
            H = W.shape[0]
            if xv.cols != D:
                raise _Unsupported(f"{name} of a reshaped input")
            out = self.new(B, H)
            rd = [(bv, "r", "all")] if bv is not None else []
            if B >= ROW_MODE or H < 2 * COL_GRAIN:
                space = (ROWS, B, _row_grain(B))
                acc = [(xv, "r", ROWS), (Wv, "r", "all"), (out, "w", ROWS)] + rd
            else:
                space = (COLS, H, COL_GRAIN)
                acc = [(xv, "r", "all"), (Wv, "r", "all"), (out, "w", COLS)] + rd
            self.add(_Task("linear", space, [xv, Wv, bv, out], acc, m=B, k=D, h=H))
            self.work += B * D * H
            self.val[id(node)] = out
            self.info[id(node)] = (x, W, b)
        elif name == "transpose":
            (a,) = pa      # only as the right operand of a matmul (checked there)
            if not (isinstance(a, Tensor) and a._op is None and a.ndim == 2):
                raise _Unsupported("transpose of a computed value")
        elif name == "add":
            a, b = pa
            if not (isinstance(a, Tensor) and a._op is not None and a.ndim == 2
                    and isinstance(b, Tensor) and b._op is None and b.ndim == 1
                    and b.shape[0] == a.shape[1]):
                raise _Unsupported("add other than a computed (B, H) value + a (H,) leaf "
                                   "tensor (a bias) has no plan kernel")
            av, bv = self.val[id(a)], self.leaf(b)
            self.add(_Task("bias", ("elem", av.rows, av.cols), [av, bv, av],
                           [(av, "r", "elem"), (bv, "r", "all"), (av, "w", "elem")],
                           m=av.rows, h=av.cols))
            self.val[id(node)] = av
        elif name in ACT_CODES:
            (z,) = pa
            if z._op is None:
                raise _Unsupported(f"{name} of a leaf tensor")
            zv = self.val[id(z)]
            alpha = float(ctx.kw.get("negative_slope", 0.01)) if name == "leaky_relu" else 0.0
            from_out = name in _FROM_OUTPUT and not (name == "leaky_relu" and alpha < 0)
            out = zv if from_out else self.new(zv.rows, zv.cols)
            self.add(_Task("act", ("elem", zv.rows, zv.cols), [zv, out],
                           [(zv, "r", "elem"), (out, "w", "elem")], act=ACT_CODES[name],
                           m=zv.rows, h=zv.cols, alpha=alpha))
            self.val[id(node)] = out
            self.info[id(node)] = (out if from_out else zv, ACT_CODES[name], alpha)
        elif name == "dropout":
            (x,) = pa
            p, _, stream, karr = ctx.kw
            if karr is None:
                raise _Unsupported("dropout with a key that is not an argument of the step (the "
                                   "plan would reuse one mask at every step); pass the key as "
                                   "an int64 array argument")
            if x._op is None:
                raise _Unsupported("dropout of a leaf tensor")
            xv = self.val[id(x)]
            from cygrad._elementwise import DROPOUT_MAX_ELEMENTS, DROPOUT_MAX_KEY
            if xv.rows * xv.cols > DROPOUT_MAX_ELEMENTS:
                raise _Unsupported(f"dropout of {xv.rows * xv.cols} elements (at most 2**32)")
            live = self.live.get(id(karr))
            if live is not None:    # nn.Dropout's own counter: the step advances it
                kv = _View(self.ext_buf("live", id(karr), karr), 1, 1, 8)
                self.live_used[id(karr)] = live
            else:
                kv = self.ids(karr, "dropout", DROPOUT_MAX_KEY, "key")
            out = self.new(xv.rows, xv.cols)
            self.add(_Task("dropout", ("elem", xv.rows, xv.cols), [xv, kv, out],
                           [(xv, "r", "elem"), (kv, "r", "all"), (out, "w", "elem")],
                           m=xv.rows, h=xv.cols, k=stream, alpha=p))
            self.val[id(node)] = out
            self.info[id(node)] = (kv, p, stream)
        elif name == "reshape":
            (a,) = pa
            src = self.value(a)
            if node.ndim == 0 or a.ndim == 0 or node.shape[0] != a.shape[0] \
                    or src.cols != int(np.prod(node.shape[1:])):
                raise _Unsupported(f"reshape from {a.shape} to {node.shape} (only reshapes "
                                   f"that keep the batch axis have a plan kernel)")
            self.val[id(node)] = src
        elif name == "mean":
            (a,) = pa
            axis, keepdims = ctx.kw
            if a.ndim != 3 or axis != 1 or keepdims or a._op is None:
                raise _Unsupported(f"mean over axis {axis} of shape {a.shape} (only the window "
                                   f"axis 1 of a (B, w, d) value has a plan kernel)")
            B, w, d = a.shape
            src = self.val[id(a)]
            out = self.new(B, d)
            self.add(_Task("mean", (ROWS, B, _row_grain(B)), [src, out],
                           [(src, "r", ROWS), (out, "w", ROWS)], m=B, w=w, h=d))
            self.val[id(node)] = out
        elif name in _LOSSES:
            if node is not self.root:
                raise _Unsupported(f"{name} that is not the loss returned")
            self.loss_fwd(node, name, pa, ctx)
        else:
            raise _Unsupported(f"op {name!r} has no plan kernel")

    def _saved(self, v):
        """Whether an activation's backward reads view v's buffer (its saved output):
        a loss must not overwrite it with its gradient."""
        return any(isinstance(i[0], _View) and i[0].buf is v.buf for i in self.info.values())

    def _targets(self, targets, j, kind, rows, cols):
        """The view of a loss's targets: an argument, read at every call in its own
        dtype and converted (kind "target": binary, checked in [0, 1]; "value"), or a
        constant, converted once."""
        if j is not None:
            spec = self.inputs.setdefault(j, {"kind": kind, "shape": targets.shape})
            if spec["kind"] != kind:
                raise _Unsupported(f"argument {self.traced[j].name!r} is used both as "
                                   f"targets and otherwise")
            return _View(self.ext_buf("input", j), rows, cols, self.item)
        return _View(self.ext_buf("const", id(targets),
                                  np.ascontiguousarray(targets, dtype=self.dt).copy()),
                     rows, cols, self.item)

    def loss_fwd(self, node, name, pa, ctx):
        self.div = None         # the loss's divisor; None: per call (weighted mean)
        if name == "softmax_cross_entropy":
            (logits,) = pa
            reduction, weight = ctx.shapes
            lv = self.value(logits)
            B, C = logits.shape
            if logits._op is None or lv.ld != C:
                raise _Unsupported("softmax_cross_entropy of a leaf or strided value")
            yv = self.ids(ctx.kw, name, C, "labels")
            d = self.new(B, C) if self._saved(lv) else lv
            v = [lv, yv, d]
            acc = [(lv, "r", ROWS), (yv, "r", ROWS), (d, "w", ROWS)]
            self.div = float(B if reduction == "mean" else 1)
            if weight is not None:
                wv = _View(self.ext_buf("weights", id(weight), weight), C, 1, 8)
                v.append(wv)
                acc.append((wv, "r", "all"))
                if reduction == "mean":
                    if yv.buf.ext is not None:
                        raise _Unsupported("a weighted mean over constant labels")
                    self.div = None
                    self.xent_w = (weight, yv.buf, B)
            self.add(_Task("xent", (ROWS, B, _row_grain(B)), v, acc, m=B, h=C))
            self.grad[id(logits)] = d
        elif name == "mse_loss":
            (pred,) = pa
            pv = self.value(pred)
            if pred._op is None or pred.ndim not in (1, 2) or pv.ld != pv.cols:
                raise _Unsupported("mse_loss of a leaf, strided or more than 2-D value")
            B, n = pv.rows, pv.cols
            targets = ctx.kw
            tv = self._targets(targets, self.arg_of.get(id(targets)), "value", B, n)
            d = self.new(B, n)
            self.add(_Task("mse", (ROWS, B, _row_grain(B)), [pv, tv, d],
                           [(pv, "r", ROWS), (tv, "r", ROWS), (d, "w", ROWS)], m=B, h=n))
            self.grad[id(pred)] = d
            self.div = float(B * n if ctx.shapes == "mean" else 1)
        elif name == "sigmoid_binary_cross_entropy":
            (s,) = pa
            sv = self.value(s)
            B = s.shape[0]
            if not (s.ndim == 1 or s.ndim == 2 and s.shape[1] == 1) or s._op is None \
                    or sv.ld != 1:
                raise _Unsupported("sigmoid_binary_cross_entropy of a leaf or strided value")
            targets = ctx.kw
            tv = self._targets(targets, self.arg_of.get(id(targets)), "target", B, 1)
            d = self.new(B, 1)
            self.add(_Task("bce", (ROWS, B, _row_grain(B)), [sv, tv, d],
                           [(sv, "r", ROWS), (tv, "r", ROWS), (d, "w", ROWS)], m=B))
            self.grad[id(s)] = d
            self.div = float(B if ctx.shapes == "mean" else 1)
        else:
            s, sc = pa
            if s._op is None or sc._op is None:
                raise _Unsupported("max_margin of leaf tensors")
            sv, scv = self.value(s), self.value(sc)
            B = s.shape[0]
            if sv.ld != 1 or scv.ld != 1:
                raise _Unsupported("max_margin of strided values")
            ds, dsc = self.new(B, 1), self.new(B, 1)
            self.add(_Task("margin", (ROWS, B, _row_grain(B)), [sv, scv, ds, dsc],
                           [(sv, "r", ROWS), (scv, "r", ROWS), (ds, "w", ROWS),
                            (dsc, "w", ROWS)], m=B, alpha=float(ctx.kw)))
            self.grad[id(s)], self.grad[id(sc)] = ds, dsc
            self.div = float(B if ctx.shapes == "mean" else 1)
        self.batch = B

    # -- backward
    def backward(self):
        order = self.order
        # how many gradient contributions each dense parameter receives
        contrib = {}
        for node in order:
            name = node._op.name if node._op is not None else None
            ps = node._parents[1:] if name in ("linear", "add") else \
                [node._parents[1]._parents[0]] if name == "matmul" else []
            for p in ps:
                if id(p) in self.pindex:
                    contrib[id(p)] = contrib.get(id(p), 0) + 1
        self.contrib, self.seen = contrib, {}
        self.gbufs, self.segments, self.dense_tables = {}, {}, set()
        for node in reversed(order):
            if node._op is None or not node.requires_grad:
                continue
            g = self.grad.get(id(node))
            name = node._op.name
            if node is self.root or name == "transpose":
                continue        # (a transpose is folded into its matmul)
            if g is None:
                raise _Unsupported(f"internal: no gradient reached {name}")
            self.bwd(node, name, g)
        # embedding tables: one update each, after their last use
        for key, (table, segs) in self.segments.items():
            self.emb_update(table, segs)

    def param_mode(self, p, n):
        """Update mode for this contribution to parameter p, and its state/gradient view."""
        i = self.pindex[id(p)]
        total = self.contrib[id(p)]
        k = self.seen[id(p)] = self.seen.get(id(p), 0) + 1
        rows = p.shape[0] if p.ndim else 1
        cols = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
        self.updated.add(i)
        if total == 1 and not self.gradmode:
            if self.adagrad:
                return U_ADAGRAD, _View(self.ext_buf("state", i), rows, cols, self.item), False
            if self.adam:       # m here, v from adam_v()
                return U_ADAM, _View(self.ext_buf("adam_m", i), rows, cols, self.item), False
            return U_SGD, None, False
        gb = self.gbufs.get(id(p))
        if gb is None:
            gb = self.gbufs[id(p)] = self.new(rows, cols)
        return (U_SET if k == 1 else U_ADD), gb, k == total

    def adam_v(self, p, mode):
        """Adam's second moment of p as a view, when p's update (mode) is Adam's."""
        if mode != U_ADAM:
            return None
        rows = p.shape[0] if p.ndim else 1
        cols = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
        return _View(self.ext_buf("adam_v", self.pindex[id(p)]), rows, cols, self.item)

    def dense_update(self, p, gb):
        i = self.pindex[id(p)]
        if self.gradmode:           # final: the optimiser reads it after the plan
            self.gradbufs[i] = gb
            return
        pv = self.leaf(p)
        n = p.size
        flat = lambda v: _View(v.buf, n, 1, self.item, off=v.off, ld=1)   # noqa: E731
        P, Gv = flat(pv), flat(gb)
        v = [P, Gv]
        acc = [(P, "w", FLAT), (Gv, "r", FLAT)]
        if self.adagrad:
            S = flat(_View(self.ext_buf("state", i), 1, n, self.item))
            v.append(S)
            acc.append((S, "w", FLAT))
        elif self.adam:
            for kind in ("adam_m", "adam_v"):
                S = flat(_View(self.ext_buf(kind, i), 1, n, self.item))
                v.append(S)
                acc.append((S, "w", FLAT))
        mode = U_ADAGRAD if self.adagrad else U_ADAM if self.adam else U_SGD
        self.add(_Task("update", (FLAT, n, FLAT_GRAIN), v, acc, mode=mode, pidx=i))

    def bias_bwd(self, b, g):
        """The bias gradient (column sums of g) and b's update."""
        B, H = g.rows, b.shape[0]
        bv = self.leaf(b)
        mode, sv, last = self.param_mode(b, H)
        scr = self.new(1, H)
        sv2 = self.adam_v(b, mode)
        v = [g, bv, sv, scr, sv2]
        acc = [(g, "r", COLS), (bv, "w", COLS), (scr, "w", COLS)]
        if sv is not None:
            acc.append((sv, "w", COLS))
        if sv2 is not None:
            acc.append((sv2, "w", COLS))
        self.add(_Task("bias_bwd", (COLS, H, COL_GRAIN), v, acc, mode=mode, m=B, h=H,
                       pidx=self.pindex[id(b)]))
        if last:
            self.dense_update(b, sv)

    def bwd(self, node, name, g):
        pa = node._parents
        if name == "add":
            a, b = pa
            if a.requires_grad:
                self.grad[id(a)] = g         # + hands the gradient on
            if id(b) in self.pindex:
                self.bias_bwd(b, g)
        elif name == "transpose":
            pass                             # folded into its matmul
        elif name in ("linear", "matmul"):
            x, W, b = self.info[id(node)]
            B, D = x.shape
            H = W.shape[0]
            xv, Wv = self.value(x), self.leaf(W)
            if b is not None and id(b) in self.pindex:
                self.bias_bwd(b, g)
            dx = None
            if isinstance(x, Tensor) and x.requires_grad:
                dx = self.new(B, D)
                self.grad[id(x)] = dx
            wmode, wsv, wlast = U_NONE, None, False
            if id(W) in self.pindex:
                wmode, wsv, wlast = self.param_mode(W, D)
            if dx is not None or wmode != U_NONE:
                scr = self.new(H, D) if wmode in (U_ADAGRAD, U_ADAM) else None
                wsv2 = self.adam_v(W, wmode)
                v = [g, Wv, xv, dx, wsv, scr, wsv2]
                acc = [(g, "r", "all"),
                       (Wv, "w" if wmode in (U_SGD, U_ADAGRAD, U_ADAM) else "r", COLS),
                       (xv, "r", COLS)]
                if wsv2 is not None:
                    acc.append((wsv2, "w", COLS))
                if dx is not None:
                    acc.append((dx, "w", COLS))
                if wsv is not None:
                    acc.append((wsv, "w", COLS))
                if scr is not None:
                    acc.append((scr, "w", COLS))
                self.add(_Task("linear_bwd", (COLS, D, COL_GRAIN), v, acc, mode=wmode, m=B, k=D,
                               h=H, pidx=self.pindex.get(id(W), 0)))
                self.work += 2 * B * D * H
            if wlast:
                self.dense_update(W, wsv)
        elif name in ACT_CODES:
            (z,) = pa
            saved, code, alpha = self.info[id(node)]
            self.add(_Task("act_bwd", ("elem", g.rows, g.cols), [g, saved, g],
                           [(g, "r", "elem"), (saved, "r", "elem"), (g, "w", "elem")], act=code,
                           m=g.rows, h=g.cols, alpha=alpha))
            self.grad[id(z)] = g
        elif name == "dropout":
            kv, p, stream = self.info[id(node)]
            self.add(_Task("dropout", ("elem", g.rows, g.cols), [g, kv, g],
                           [(g, "r", "elem"), (kv, "r", "all"), (g, "w", "elem")],
                           m=g.rows, h=g.cols, k=stream, alpha=p))
            self.grad[id(pa[0])] = g
        elif name == "reshape":
            self.grad[id(pa[0])] = g
        elif name == "mean":
            (a,) = pa
            B, w, d = a.shape
            out = self.new(B, w * d)
            self.add(_Task("mean_bwd", (ROWS, B, _row_grain(B)), [g, out],
                           [(g, "r", ROWS), (out, "w", ROWS)], m=B, w=w, h=d))
            self.grad[id(a)] = out
        elif name == "concat":
            col = 0
            for p in pa:
                c = p.shape[1]
                if p.requires_grad:
                    self.grad[id(p)] = _View(g.buf, g.rows, c, self.item, off=g.off + col, ld=g.ld)
                col += c
        elif name == "embedding_windows":
            _, table, iv, B, w, d, sparse = self.info[id(node)]
            if id(table) in self.pindex:
                self.segments.setdefault(id(table), (table, []))[1].append((iv, g, B, w, d))
                if not sparse:
                    self.dense_tables.add(id(table))
        else:
            raise _Unsupported(f"op {name!r} has no plan kernel")

    def emb_update(self, table, segs):
        i = self.pindex[id(table)]
        V, d = table.shape
        tv = self.leaf(table)
        w = segs[0][3]
        if any(s[3] != w for s in segs):
            raise _Unsupported("one embedding table used with windows of different widths")
        if self.gradmode:           # the optimiser gets the rows' gradients after the plan
            for iv, g, B, w, d in segs:
                if iv.buf.ext is not None:
                    raise _Unsupported("an embedding table indexed by constant ids, with "
                                       f"{type(self.opt).__name__}")
            self.gradsparse[i] = (list(segs), id(table) in self.dense_tables)
            return
        if not (self.adagrad or self.adam):
            for iv, g, B, w, d in segs:
                self.add(_Task("emb_sgd", (OWN, OWNER_CLASSES, 1), [tv, iv, g],
                               [(tv, "w", OWN), (iv, "r", "all"), (g, "r", "all")],
                               m=B, k=OWNER_CLASSES, h=d, w=w))
            return
        if len(segs) > 4:
            raise _Unsupported("an embedding table used more than 4 times")
        total = sum(s[2] * w for s in segs)
        self.updated.add(i)
        sv = _View(self.ext_buf("adam_m" if self.adam else "state", i), V, d, self.item)
        heads = _View(self.ext_buf("heads", i, np.full(V, -1, np.int64)), V, 1, 8)
        slots = self.new(2 * total, 1, 8)
        row = self.new(1, d)
        segv = [(iv, g, B) for iv, g, B, _, _ in segs]
        acc = [(tv, "w", "all"), (sv, "w", "all"), (heads, "w", "all"), (slots, "w", "all"),
               (row, "w", "all")] + [(iv, "r", "all") for iv, _, _ in segv] + \
              [(g, "r", "all") for _, g, _ in segv]
        v = [tv, sv, heads, slots, row]
        if self.adam:
            sv2 = _View(self.ext_buf("adam_v", i), V, d, self.item)
            v.append(sv2)
            acc.append((sv2, "w", "all"))
        self.add(_Task("emb_adam" if self.adam else "emb_adagrad", (ONE, 1, 1), v, acc, h=d,
                       w=w, segs=segv, pidx=i))

    # -- stages
    def schedule(self):
        """Group tasks that touch the same rows/columns of what they share into
        groups, independent groups into stages (see cygrad._plan)."""
        stages = []     # each: list of groups; group: dict(space, tasks)

        def buf_of(v):
            return v.buf

        def conflict(a, b):     # two accesses (view, rw, pattern) to one buffer, one writing
            return a[0].buf is b[0].buf and ("w" in (a[1], b[1]))

        def aligned(a, b, axis):
            va, vb = a[0], b[0]
            if a[2] != axis or b[2] != axis:
                return False
            if axis == ROWS:
                return True
            return va.off == vb.off and va.ld == vb.ld

        for t in self.tasks:
            kind, n1, n2 = t.space
            placed = False
            if stages:
                st = stages[-1]
                g = st[-1]
                gaxis, gn, ggrain = g["space"]
                space = None
                if kind == "elem":
                    if gaxis == ROWS and gn == n1:
                        space = g["space"]
                    elif gaxis == COLS and gn == n2:
                        space = g["space"]
                elif t.space == g["space"]:
                    space = g["space"]
                if space is not None:
                    acc = [(a[0], a[1], space[0] if a[2] == "elem" else a[2]) for a in t.access]
                    ok = True
                    for other_g in st:
                        for ot in other_g["tasks"]:
                            for b in ot["acc"]:
                                for a in acc:
                                    if conflict(a, b) and not (other_g is g
                                                               and aligned(a, b, space[0])):
                                        ok = False
                    if ok:
                        g["tasks"].append({"t": t, "acc": acc})
                        t.space = space
                        placed = True
                if not placed:
                    own = self._own_space(t)
                    acc = [(a[0], a[1], own[0] if a[2] == "elem" else a[2]) for a in t.access]
                    indep = all(not conflict(a, b) for og in st for ot in og["tasks"]
                                for b in ot["acc"] for a in acc)
                    if indep:
                        t.space = own
                        st.append({"space": own, "tasks": [{"t": t, "acc": acc}]})
                        placed = True
            if not placed:
                own = self._own_space(t)
                acc = [(a[0], a[1], own[0] if a[2] == "elem" else a[2]) for a in t.access]
                t.space = own
                stages.append([{"space": own, "tasks": [{"t": t, "acc": acc}]}])
        return stages

    @staticmethod
    def _own_space(t):
        kind, n1, n2 = t.space
        if kind == "elem":
            return (ROWS, n1, _row_grain(n1))
        return t.space


def _layout(builder, stages):
    """Arena offsets, buffer and view indices, and the C-level tables of the plan."""
    views = []
    ext_list = []
    arena = 0

    def view_index(v):
        if v is None:
            return -1
        if v.index is None:
            b = v.buf
            if b.ext is None:
                if b.offset is None:
                    b.offset = arena_alloc(b.nbytes)
                base, off = 0, b.offset
            else:
                if b.index is None:
                    b.index = 1 + len(ext_list)
                    ext_list.append(b)
                base, off = b.index, 0
            v.index = len(views)
            views.append((base, off + v.off * v.item, v.ld))
        return v.index

    def arena_alloc(n):
        nonlocal arena
        off = arena
        arena += -(-max(n, 1) // ALIGN) * ALIGN
        return off

    tasks, groups, st_tab = [], [], []
    for st in stages:
        g0 = len(groups)
        for g in st:
            t0 = len(tasks)
            for e in g["tasks"]:
                t = e["t"]
                tasks.append({
                    "code": _CODE[t.name], "axis": _AXIS[t.space[0]], "mode": t.mode,
                    "act": t.act, "m": t.m, "k": t.k, "h": t.h, "w": t.w, "alpha": t.alpha,
                    "pidx": t.pidx,
                    "v": [view_index(v) for v in t.v],
                    "segs": [(view_index(iv), view_index(gv), B) for iv, gv, B in t.segs]})
            groups.append((t0, len(tasks), g["space"][1], g["space"][2]))
        st_tab.append((g0, len(groups)))
    # inputs copied into the arena
    for spec in builder.inputs.values():
        if spec["kind"] == "ids":
            view_index(spec["view"])
    return tasks, groups, st_tab, views, ext_list, arena


# ------------------------------------------------------------------ the step

_EAGER = object()


class _Compiled:
    """One plan (for one set of argument shapes and dtypes) and what it needs at run time."""

    def __init__(self, step, builder, stages):
        tasks, groups, st_tab, views, ext_list, arena = _layout(builder, stages)
        self.step = step
        self.f32 = builder.dt == np.float32
        self.dtype = builder.dt
        self.batch = builder.batch
        self.arena_bytes = arena
        self.nstages = len(st_tab)
        self.text = "\n".join(
            f"stage {i}: " + " | ".join(
                f"{g['space'][0]}[{g['space'][1]}/{g['space'][2]}] "
                + ", ".join(e["t"].name for e in g["tasks"]) for g in st)
            for i, st in enumerate(stages))
        self.ntasks = len(tasks)
        self.plan = _plan.Plan(tasks, groups, st_tab, views, 1 + len(ext_list), self.f32,
                               self.batch)
        self.work = builder.work
        self.min_work = MIN_WORK
        self.losses = np.zeros(-(-self.batch // 4), np.float64)
        self.ext = []            # (position, kind, payload, expected shape)
        self.arrays = [None] * (1 + len(ext_list))
        for b in ext_list:
            kind, payload = b.ext
            self.ext.append((b.index, kind, payload))
        opt = step.optimizer
        self.opt = opt
        self.inputs = []
        for j, spec in sorted(builder.inputs.items()):
            name = step.arg_names[j] if j < len(step.arg_names) else f"argument {j}"
            if spec["kind"] == "ids":
                v = spec["view"]
                self.inputs.append((j, "ids", (v.buf.offset, spec["shape"]), spec["bound"],
                                    spec["op"], name))
            else:       # "float" (an op's input) or "target" (converted and checked)
                pos = [b.index for b in ext_list if b.ext == ("input", j)][0]
                self.inputs.append((j, spec["kind"], pos, spec["shape"], None, name))
        self.arena = None
        self.id_arrays = {}
        self.gradmode = builder.gradmode
        self.grad_specs = [(i, v.buf.offset, opt.params[i].shape)
                           for i, v in sorted(builder.gradbufs.items())]
        self.sparse_specs = [
            (i, [(iv.buf.offset + 8 * iv.off, B * w, g.buf.offset + g.item * g.off, g.ld, B, w, d)
                 for iv, g, B, w, d in segs], dense)
            for i, (segs, dense) in sorted(builder.gradsparse.items())]
        self.grad_arrays = []
        self.sparse_arrays = []
        self._refresh_ext(force=True)
        # what run() checks by identity at every call: the tensors' arrays, Adagrad's state
        self.watch = [(pos, opt.params[p] if kind == "param" else p)
                      for pos, kind, p in self.ext
                      if kind == "param" or (kind == "const" and isinstance(p, Tensor))]
        self.watch_state = [(pos, _STATE_ATTR[kind], p) for pos, kind, p in self.ext
                            if kind in _STATE_ATTR]
        self.adam_params = sorted(builder.updated) if builder.adam else []
        self.adam_scalars = np.zeros(2 * len(opt.params), np.float64)
        self.decoupled = builder.decoupled
        self.div = builder.div or 0.0          # 0: the weighted mean's, per call
        xw = getattr(builder, "xent_w", None)
        self.xent_w = None if xw is None or builder.div is not None else \
            (xw[0], xw[1].offset, xw[2])
        # the keys of nn.Dropout calls, advanced in the order the calls were traced
        self.live = [k for k in builder.live_keys if id(k.array) in builder.live_used]
        self._guards(builder)
        self._ranges()

    # -- guards: what the plan baked in, compared at every call (a few comparisons)
    def _guards(self, builder):
        opt = self.opt
        self.g_params = list(opt.params)
        self.g_nparams = len(opt.params)
        self.g_requires = [bool(p.requires_grad) for p in opt.params]     # True/False objects
        f = getattr(opt, "fused_update", None)
        self.g_form_fn = f if callable(f) else None
        self.g_form = f() if self.g_form_fn is not None else None
        self.g_type = type(opt)
        mods = []
        for m in builder.modules:
            if all(m is not n for n, _ in mods):
                mods.append((m, _settings(m)))
        self.g_modules = mods
        self.g_version_cell = _nn_version_cell() if mods else None
        self.g_version = self.g_version_cell[0] if mods else 0

    def stale(self):
        """None while every guard holds; else what changed since the plan was built."""
        opt = self.opt
        if type(opt) is not self.g_type:
            return f"the optimiser's class changed to {type(opt).__name__}"
        ps = opt.params
        if len(ps) != self.g_nparams:
            return f"the optimiser's parameter list changed ({len(ps)} parameters, was " \
                   f"{self.g_nparams})"
        for i, (p, q, r) in enumerate(zip(ps, self.g_params, self.g_requires)):
            if p is not q:
                return f"parameter {i} of the optimiser was replaced by another tensor"
            if bool(p.requires_grad) != r:
                return f"parameter {i} ({p.shape}) now has requires_grad={bool(p.requires_grad)}"
        if self.g_form_fn is not None:
            form = self.g_form_fn()
            if form != self.g_form:
                return (f"{type(opt).__name__}'s update changed from {_describe(self.g_form)} "
                        f"to {_describe(form)} (a hyper-parameter that changes its form)")
        if self.g_modules:
            v = self.g_version_cell[0]
            if v != self.runner.g_version:
                for m, was in self.g_modules:
                    now = _settings(m)
                    if now != was:
                        return f"{type(m).__name__} {_changed(was, now)}"
                self.runner.g_version = v       # changes elsewhere: the fast path again
        return None

    def _ranges(self):
        """The byte ranges of the arrays a plan writes (parameters, optimiser state): a
        float argument that overlaps one is copied before the plan runs, as the eager
        graph reads it whole before the optimiser changes anything."""
        spans = []
        for pos, kind, payload in self.ext:
            if kind == "param" or kind in _STATE_ATTR:
                a = self.arrays[pos]
                if a is not None and a.nbytes:
                    lo = a.__array_interface__["data"][0]
                    spans.append((lo, lo + a.nbytes))
        self.written = np.array(spans or np.zeros((0, 2)), np.int64).reshape(-1, 2)

    def _refresh_ext(self, force=False):
        opt = self.opt
        for pos, kind, payload in self.ext:
            if kind == "param":
                a = opt.params[payload].data
                what = f"parameter {payload} (shape {opt.params[payload].shape})"
            elif kind in _STATE_ATTR:
                a = getattr(opt, _STATE_ATTR[kind])[payload]
                what = f"the optimiser state of parameter {payload}"
            elif kind == "const":
                a = payload.data if isinstance(payload, Tensor) else payload
                what = "a constant tensor"
            elif kind in ("heads", "live", "weights"):     # the plan's own arrays
                a = payload
                what = None
            else:
                continue
            if force or self.arrays[pos] is not a:
                if what is not None:
                    self._check_array(a, pos, what, writeable=kind != "const")
                self.arrays[pos] = a
        if not force:
            self._ranges()

    def _check_array(self, a, pos, what, writeable):
        old = self.arrays[pos]
        if not isinstance(a, np.ndarray):
            raise TypeError(f"compiled step: {what} is no longer a numpy array")
        if old is not None and (a.shape != old.shape or a.dtype != old.dtype):
            raise ValueError(f"compiled step: {what} changed from {old.shape} {old.dtype} to "
                             f"{a.shape} {a.dtype} since the plan was built")
        if a.dtype.kind == "f" and a.dtype != self.dtype:
            raise TypeError(f"compiled step: {what} has dtype {a.dtype}, the plan {self.dtype}")
        if not a.flags.c_contiguous or not a.flags.aligned or not a.dtype.isnative:
            raise ValueError(f"compiled step: {what} must be a C-contiguous, aligned, "
                             f"native-byte-order array")
        if writeable and not a.flags.writeable:
            raise ValueError(f"compiled step: {what} is read-only")

    def _bind_arena(self):
        arena = self.step._arena
        self.arrays[0] = arena
        self.id_arrays = {}
        for j, kind, where, bound, op, name in self.inputs:
            if kind == "ids":
                off, shape = where
                n = int(np.prod(shape))
                self.id_arrays[j] = arena[off:off + 8 * n].view(np.int64).reshape(shape)
        self.grad_arrays = []
        for i, off, shape in self.grad_specs:
            n = int(np.prod(shape)) * self.dtype.itemsize
            self.grad_arrays.append((self.opt.params[i],
                                     arena[off:off + n].view(self.dtype).reshape(shape)))
        item = self.dtype.itemsize
        self.sparse_arrays = []     # (table, [(ids (n,), gradient rows (B, w d))], dense)
        for i, segs, dense in self.sparse_specs:
            views = []
            for ioff, n, goff, ld, B, w, d in segs:
                ids = arena[ioff:ioff + 8 * n].view(np.int64)
                g = np.ndarray((B, w * d), self.dtype, buffer=arena, offset=goff,
                               strides=(ld * item, item))
                views.append((ids.reshape(B, w), g))
            self.sparse_arrays.append((self.opt.params[i], views, dense))
        self.arena = arena

    def apply_update(self):
        """Gradient mode: the gradients the plan left in the workspace go to ``.grad``
        (as eager backward leaves them: a dense table's gradient dense, a sparse one's
        row-sparse), the step's clipping, then the optimiser's own ``step()``; then
        .grad is None again, as after every compiled step."""
        step = self.step
        own = self.copy_grads       # a step of the user's may keep what it is handed
        for p, g in self.grad_arrays:
            p.grad = g.copy() if own else g
        for p, views, dense in self.sparse_arrays:
            d = p.shape[1]
            if dense:       # as EmbeddingWindows.backward: scattered into zeros, per use
                total = None
                for ids, g in views:
                    one = np.zeros(p.shape, self.dtype)
                    _K.embedding_scatter_add(one, ids, np.ascontiguousarray(g))
                    total = one if total is None else total + one
                p.grad = total
            else:           # a table's rows: copies, the slots in order
                p.grad = SparseRows(np.concatenate([ids.reshape(-1) for ids, _ in views]),
                                    np.concatenate([g.reshape(-1, d) for _, g in views]),
                                    p.shape)
        try:
            step._clip()
            self.opt.step()
        finally:
            for p, *_ in self.grad_arrays + self.sparse_arrays:
                p.grad = None

    opt_kind = "sgd"
    copy_grads = False


def _nn_version_cell():
    from cygrad import nn
    return nn._version


def _freeze(v):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float, complex, np.number, np.bool_)):
        return (type(v).__name__, repr(v))          # repr: NaN equals NaN
    if isinstance(v, (tuple, list)):
        return (type(v).__name__,) + tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return ("dict",) + tuple((k, _freeze(x)) for k, x in v.items())
    return ("object", id(v))        # a tensor, an array, a generator, a module: by identity


def _settings(m):
    """A module's settings as the guards compare them: its attributes, its parameters'
    and sub-modules' identities (counters it declares in ``_unguarded`` left out)."""
    skip = getattr(type(m), "_unguarded", ())
    out = {}
    for k, v in vars(m).items():
        if k in skip:
            continue
        if k in ("_parameters", "_modules"):
            out[k] = tuple((n, id(x)) for n, x in v.items())
        else:
            out[k] = _freeze(v)
    return out


def _show(v):
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], str):
        return v[1]             # a number, as repr wrote it
    return "another object" if isinstance(v, tuple) and v[:1] == ("object",) else repr(v)


def _changed(was, now):
    for k in sorted(set(was) | set(now)):
        if was.get(k) != now.get(k):
            if k in ("_parameters", "_modules"):
                what = "parameters" if k == "_parameters" else "sub-modules"
                return f"{what} were replaced, added or removed since the step was compiled"
            return (f"{k!r} changed from {_show(was.get(k))} to {_show(now.get(k))} since the "
                    f"step was compiled")
    return "changed"


def _describe(form):
    return "gradient mode (its own step())" if form is None else repr(form)


class CompiledStep:
    """A training step compiled from ``loss_fn`` (see :func:`compile`)."""

    def __init__(self, loss_fn, optimizer, strict=False, threads=None, clip_grad_norm=None,
                 clip_grad_value=None):
        if not callable(loss_fn):
            raise TypeError(f"compile: loss_fn must be callable, got {type(loss_fn).__name__}")
        _check_optimizer(optimizer)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.strict = bool(strict)
        self.clip_grad_norm = _positive("clip_grad_norm", clip_grad_norm)
        self.clip_grad_value = _positive("clip_grad_value", clip_grad_value)
        self.retraces = 0
        self.threads = None if threads is None else _config._check(threads)
        try:
            params = list(inspect.signature(loss_fn).parameters)
        except (TypeError, ValueError):
            params = []
        self.arg_names = params
        self._plans = {}
        self._arena = np.zeros(0, np.uint8)
        self.workspace_allocations = 0
        self._warned = set()
        self._lock = threading.Lock()

    # -- introspection
    @property
    def plans(self):
        """Number of compiled plans (one per set of argument shapes and dtypes)."""
        return sum(1 for p in self._plans.values() if p is not _EAGER)

    def fallbacks(self):
        """The reasons for which steps run on the eager graph."""
        return sorted(self._warned)

    def describe(self, *args):
        """The plan for these arguments' shapes, as text (stages and their tasks)."""
        p = self._plans.get(self._key(args))
        if p is None or p is _EAGER:
            return "eager" if p is _EAGER else "no plan yet"
        return f"{p.ntasks} tasks in {p.nstages} stages\n{p.text}"

    # -- calls
    def _key(self, args):
        key = []
        for a in args:
            if type(a) is not np.ndarray:
                return self._slow_key(args)
            d = a.dtype
            # byte-swapped arguments share the native plan: the runner copies them
            key.append((a.shape, d if d.isnative else d.newbyteorder("=")))
        return tuple(key)

    def _slow_key(self, args):
        key = []
        for j, a in enumerate(args):
            if not isinstance(a, np.ndarray):
                name = self.arg_names[j] if j < len(self.arg_names) else f"argument {j}"
                raise TypeError(f"compiled step: {name} must be a numpy.ndarray, got "
                                f"{type(a).__name__}")
            d = a.dtype
            key.append((a.shape, d if d.isnative else d.newbyteorder("=")))
        return tuple(key)

    def __call__(self, *args):
        key = self._key(args)
        with self._lock:
            entry = self._plans.get(key)
            if entry is None:
                return self._first(key, args)
            if entry is _EAGER:
                return self._eager(args)
            if entry.arena_bytes > self._arena.nbytes:
                self._grow(entry.arena_bytes)
            for k in entry.live:                # nn.Dropout: the next key, as eagerly
                k.advance()
            try:
                loss = entry.runner.run(args)   # None: a guard failed, nothing was done
            except BaseException:
                for k in entry.live:
                    k.undo()
                raise
            if loss is None:
                for k in entry.live:
                    k.undo()
                why = entry.stale()
                if why is not None:     # the plan is not the model any more
                    if self.strict:
                        raise CompileError(f"cygrad.compile: {why}; the plan built for these "
                                           f"arguments no longer describes the step "
                                           f"(strict=True refuses to trace it again); nothing "
                                           f"was updated")
                    self.retraces += 1
                    del self._plans[key]
                    return self._first(key, args)
                for k in entry.live:
                    k.advance()
                try:
                    loss = entry.runner.run(args, True)
                except BaseException:
                    for k in entry.live:
                        k.undo()
                    raise
            if entry.gradmode:
                entry.apply_update()
            return loss

    def _grow(self, nbytes):
        self._arena = np.zeros(nbytes, np.uint8)
        self.workspace_allocations += 1

    def _fallback(self, key, why):
        if self.strict:
            raise CompileError(f"cygrad.compile: {why}")
        if why not in self._warned:
            self._warned.add(why)
            warnings.warn(f"cygrad.compile: {why}; this step runs on the eager graph",
                          CompileWarning, stacklevel=3)
        self._plans[key] = _EAGER

    def _clip(self):
        """The step's gradient clipping, on ``.grad`` (before the optimiser's step)."""
        if self.clip_grad_norm is not None:
            _optim.clip_grad_norm(self.optimizer.params, self.clip_grad_norm)
        if self.clip_grad_value is not None:
            v = self.clip_grad_value
            for p in self.optimizer.params:
                g = p.grad
                if g is None:
                    continue
                if isinstance(g, SparseRows):
                    p.grad = SparseRows(g.indices, np.clip(g.rows, -v, v), g.shape)
                else:
                    p.grad = np.clip(g, -v, v)

    def _eager(self, args):
        opt = self.optimizer
        opt.zero_grad()
        loss = self.loss_fn(*args)
        self._check_loss(loss)
        loss.backward()
        self._clip()
        opt.step()
        opt.zero_grad()
        return loss.item()

    @staticmethod
    def _check_loss(loss):
        if not isinstance(loss, Tensor) or loss.size != 1:
            raise TypeError(f"compiled step: loss_fn must return a scalar Tensor, got "
                            f"{type(loss).__name__} {getattr(loss, 'shape', '')}")

    def _first(self, key, args):
        opt = self.optimizer
        names = [self.arg_names[j] if j < len(self.arg_names) else f"argument {j}"
                 for j in range(len(args))]
        traced = [Traced(np.array(a, dtype=a.dtype.newbyteorder("="), copy=True)
                         if a.dtype.kind in "iu" or not a.dtype.isnative else a, n)
                  for a, n in zip(args, names)]
        opt.zero_grad()
        try:
            with _g._trace() as (made, modules, live_keys):
                loss = self.loss_fn(*traced)
        except _g.TraceRefused as e:
            self._fallback(key, str(e))
            return self._eager(args)
        self._check_loss(loss)
        try:
            if not loss.requires_grad:
                raise _Unsupported("the loss does not depend on any parameter")
            b = _Builder(loss, traced, opt, _fused_form(opt),
                         clip=self.clip_grad_norm is not None or self.clip_grad_value is not None)
            b.made, b.modules = made, modules
            b.live = {id(k.array): k for k in live_keys}
            b.live_keys = live_keys
            if loss._op is None or loss._op.name not in _LOSSES:
                raise _Unsupported(f"the loss is {getattr(loss._op, 'name', 'a leaf')!r}; a plan "
                                   f"needs one of {', '.join(_LOSSES)} as the returned loss")
            if loss.dtype not in (np.float32, np.float64):
                raise _Unsupported(f"dtype {loss.dtype}")
            for p in opt.params:
                if not isinstance(p, Tensor):
                    raise TypeError(f"compile: the optimiser's parameters must be Tensors, "
                                    f"got {type(p).__name__}")
                if p.dtype != loss.dtype:
                    raise _Unsupported(f"a parameter has dtype {p.dtype}, the loss {loss.dtype}")
            b.forward()
            b.backward()
            stages = b.schedule()
            compiled = _Compiled(self, b, stages)
            compiled.opt_kind = ("grad" if b.gradmode else "adam" if b.adam else
                                 "adagrad" if b.adagrad else "sgd")
            # a step() of the user's gets gradients of its own (it may keep them)
            own_step = getattr(type(opt), "step", None)
            compiled.copy_grads = own_step not in _OWN_STEPS and not getattr(
                own_step, "_keeps_no_grads", False)
            compiled.runner = _plan.Runner(compiled)
        except _Unsupported as e:
            self._fallback(key, str(e))
            compiled = None
        # the first step completes on the graph
        loss.backward()
        self._clip()
        opt.step()
        opt.zero_grad()
        if compiled is not None:
            if compiled.arena_bytes > self._arena.nbytes:
                self._grow(compiled.arena_bytes)
            self._plans[key] = compiled
        return loss.item()


_OWN_STEPS = (_optim.SGD.step, _optim.Adagrad.step, _optim.Adam.step)


def _check_optimizer(opt):
    """The optimiser protocol: ``params`` (a list of Tensors), ``step()`` and
    ``zero_grad()``; ``fused_update()`` optional (without it: gradient mode)."""
    params = getattr(opt, "params", None)
    if not (callable(getattr(opt, "step", None)) and callable(getattr(opt, "zero_grad", None))
            and isinstance(params, list) and params
            and all(isinstance(p, Tensor) for p in params)):
        raise TypeError(f"compile: optimizer must have the optimiser protocol (a non-empty list "
                        f"of Tensors as .params, step() and zero_grad(): every cygrad.optim "
                        f"optimiser has it), got {type(opt).__name__}")


def _positive(name, v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"compile: {name} must be a number or None, got {v!r}") from None
    if not (np.isfinite(f) and f > 0):
        raise ValueError(f"compile: {name} must be a positive number, got {v!r}")
    return f


def compile(loss_fn, optimizer, strict=False, threads=None, clip_grad_norm=None,
            clip_grad_value=None):
    """Compile a training step: forward, backward and the optimiser's update in one call.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(*arrays) -> scalar Tensor``, written with cygrad's graph ops over
        the optimiser's parameters; its arguments are NumPy arrays (index arrays,
        labels, float inputs), passed only to cygrad ops.
    optimizer : a cygrad.optim optimiser, or any object with the optimiser protocol
        ``params`` (a list of Tensors), ``step()`` and ``zero_grad()``. Its
        parameters are updated in place at every call; its ``lr`` is read at every
        call (a schedule may change it). An update the optimiser states through
        ``fused_update()`` is folded into the plan; any other (a subclass whose
        ``step`` is its own, an object of the user's) runs in gradient mode: the
        plan leaves the gradients in ``.grad`` and ``step()`` runs.
    strict : bool
        Raise :class:`CompileError` when the step cannot be compiled, instead of
        running it on the eager graph with a :class:`CompileWarning`, and when a
        guard fails (see below), instead of tracing the step again.
    threads : int or None
        Threads for the step; None follows :func:`cygrad.get_num_threads`.
    clip_grad_norm, clip_grad_value : float or None
        Clip the gradients before the optimiser's step, as
        :func:`cygrad.optim.clip_grad_norm` (global norm) or to
        ``[-value, value]`` elementwise (the step runs in gradient mode).

    Notes
    -----
    A plan records what it baked in, and every call checks it (guards, a few
    comparisons): the arguments' shapes and dtypes (the plan's key), each
    parameter's identity and ``requires_grad``, the optimiser's class and the form
    of the update it states (momentum or weight decay set after compiling, say),
    and the settings of every module called while tracing (``train()``/``eval()``,
    a dropout rate...). When one changes the step is traced again (strict: it
    raises :class:`CompileError` naming the change). Values checked at every call
    before anything is updated: index ranges, targets in [0, 1].

    Returns
    -------
    CompiledStep
        ``step(*arrays)`` runs one step and returns the loss (a float, computed
        before the update).
    """
    return CompiledStep(loss_fn, optimizer, strict=strict, threads=threads,
                        clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value)
