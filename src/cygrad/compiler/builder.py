"""The plan builder: buffers and views of the workspace, tasks, and the parameter
updates a plan folds into backward (cygrad.compiler's middle layer).

A :class:`Builder` walks the traced graph once forward and once backward; for each
op it looks up the op's lowering in :data:`cygrad.compiler.lowering.LOWERINGS`
(an op without one is refused there, by name) and the lowering adds tasks
(:class:`Task`: a code of the executor ``cygrad.compiler._plan``, an index space,
the views it reads and writes). What the builder itself knows is what every op
shares: where a value lives (:meth:`Builder.leaf`, :meth:`Builder.value`,
:meth:`Builder.ids`), and how a parameter's gradient becomes its update
(:meth:`Builder.param_mode`, :meth:`Builder.dense_update`,
:meth:`Builder.emb_update`), per the update the optimiser states (``fused_update()``).
"""

import numpy as np

from cygrad import graph as _g
from cygrad.compiler._plan import (
    MAX_SEGMENTS,
    ROW_GRAIN,
    TASK_CODES,
    UPDATE_MODES,
)
from cygrad.graph import Tensor, Traced

ROWS, COLS, OWN, FLAT, ONE = "rows", "cols", "own", "flat", "one"
U_NONE, U_SGD, U_ADAGRAD, U_SET, U_ADD, U_ADAM = (UPDATE_MODES[k] for k in (
    "none", "sgd", "adagrad", "set", "add", "adam"))
# the optimiser state a plan binds, by kind: the optimiser's list attribute holding it
STATE_ATTR = {"state": "state", "adam_m": "exp_avg", "adam_v": "exp_avg_sq"}
COL_GRAIN = 32          # column chunks: multiples of every GEMM micro-kernel's NR
FLAT_GRAIN = 4096
OWNER_CLASSES = 8       # embedding rows are owned in blocks of 16 rows, 8 classes
ROW_MODE = 128          # from this batch size a linear layer is split by rows (except
                        # a layer on the data split by W's rows: lowering._by_weight_rows)
WGRAD_ROWS = 2 * COL_GRAIN  # a layer on the data: by W's rows from 2 chunks of them


class Unsupported(Exception):
    """What a plan cannot run (the message says why): the step falls back to the
    eager graph, or under strict=True raises CompileError."""


class Buf:
    """A workspace buffer (placed in the arena at the end) or an outside array."""

    __slots__ = ("nbytes", "ext", "offset", "index")

    def __init__(self, nbytes=0, ext=None):
        self.nbytes, self.ext, self.offset, self.index = nbytes, ext, None, None


class View:
    """rows x cols elements of a buffer, from element offset ``off``, rows ``ld`` apart."""

    __slots__ = ("buf", "off", "ld", "rows", "cols", "item", "index")

    def __init__(self, buf, rows, cols, item, off=0, ld=None):
        self.buf, self.rows, self.cols, self.item = buf, rows, cols, item
        self.off, self.ld = off, cols if ld is None else ld
        self.index = None


class Task:
    """One task of the plan: the executor's code (by name), its index space (axis,
    size, grain), its views, and how it reads and writes each."""

    __slots__ = ("name", "space", "mode", "act", "m", "k", "h", "w", "alpha", "v", "segs",
                 "access", "pidx")

    def __init__(self, name, space, v, access, mode=U_NONE, act=0, m=0, k=0, h=0, w=0,
                 alpha=0.0, segs=(), pidx=0):
        if name not in TASK_CODES:
            raise Unsupported(f"internal: no plan task {name!r}")
        self.name, self.space, self.v, self.access = name, space, v, access
        self.mode, self.act, self.m, self.k, self.h, self.w = mode, act, m, k, h, w
        self.alpha, self.segs, self.pidx = alpha, list(segs), pidx


def fused_form(opt):
    """The optimiser's own statement of the update a plan may fuse (None: gradient mode)."""
    f = getattr(opt, "fused_update", None)
    return f() if callable(f) else None


def dense_tables(order, params):
    """Whether a parameter table is gathered by a dense-gradient embedding_windows."""
    return any(n._op is not None and n._op.name == "embedding_windows" and not n._ctx.kw
               and id(n._parents[0]) in params for n in order)


class Builder:
    """The plan of one traced graph: its tasks, buffers, inputs and updates."""

    def __init__(self, root, traced, opt, form, clip=False):
        self.root, self.traced, self.opt = root, traced, opt
        self.deferred = []      # tasks added after the tables' groupings (_slot_update)
        self.dt = root.dtype
        self.item = self.dt.itemsize
        # the parameters a plan updates: those that require a gradient now (a frozen
        # one is read like a constant tensor; the guards re-trace when that changes)
        self.pindex = {id(p): i for i, p in enumerate(opt.params) if p.requires_grad}
        order = _g.engine._topological_order(root, every=True)
        if form is not None and form[0] == "adam" and dense_tables(order, self.pindex):
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
        # (kind, payload): "param" i, "state" i, "input" j, "const" T/arr
        self.ext = []
        self.inputs = {}            # arg index -> {"buf", "view", "bound", "kind", "op"}
        self.val = {}               # id(tensor) -> View
        self.grad = {}
        self.arg_of = {id(a.array): j for j, a in enumerate(traced)}
        self.ext_bufs = {}
        self.live, self.live_used = {}, {}      # id(key array) -> LiveKey
        self.info = {}
        self.made = set()           # ids of tensors loss_fn made from NumPy data
        self.modules = []           # the nn modules called while tracing (guarded)
        self.live_keys = []         # nn.Dropout's LiveKeys, in call order
        self.div_per_row = None
        self.row_consts = False     # some op reads a constant's rows (no dynamic rows)
        self.crf = None             # crf_nll as the loss: what the runtime prepares per call
        self.xent_weights = None    # softmax_cross_entropy's class weights (checked per call)
        self.bags = []              # embedding bags' constants: (ptr, items views, ...)
        self.work = 0

    # -- buffers
    def new(self, rows, cols, item=None):
        item = item or self.item
        return View(Buf(rows * cols * item), rows, cols, item)

    def ext_buf(self, kind, key, payload=None):
        k = (kind, key)
        if k not in self.ext_bufs:
            b = Buf(ext=(kind, payload if payload is not None else key))
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
                raise Unsupported(f"argument {t.name!r} of dtype {t.dtype} and shape "
                                   f"{t.shape} as an op input")
            self.inputs.setdefault(j, {"kind": "float", "shape": t.shape})
            rows = t.shape[0]
            v = View(self.ext_buf("input", j), rows, t.size // max(rows, 1), self.item)
            self.val[id(t)] = v
            return v
        if t._op is not None:
            raise Unsupported("internal: leaf() on a node")
        shape = t.shape
        rows = shape[0] if len(shape) else 1
        cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if id(t) in self.pindex:
            buf = self.ext_buf("param", self.pindex[id(t)])
        elif t.requires_grad:
            raise Unsupported(f"a leaf tensor of shape {shape} requires a gradient but is not "
                               f"among the optimiser's parameters")
        elif id(t.data) in self.arg_of:
            j = self.arg_of[id(t.data)]
            buf = self.ext_buf("input", j)
            self.inputs.setdefault(j, {"kind": "float", "shape": t.shape})
        else:
            if id(t) in self.made:
                raise Unsupported(f"loss_fn makes a tensor of shape {shape} from NumPy data "
                                   f"(its values would be frozen into the plan; make it "
                                   f"outside loss_fn, or pass the array as an argument)")
            if not t.data.flags.c_contiguous:
                raise Unsupported(f"a constant tensor of shape {shape} is not C-contiguous")
            buf = self.ext_buf("const", id(t), t)
        v = View(buf, rows, cols, self.item)
        self.val[id(t)] = v
        return v

    def value(self, t):
        if type(t) is Traced or t._op is None:
            if type(t) is not Traced and id(t.data) not in self.arg_of:
                self.row_consts = True      # a parameter or constant read by rows
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
                raise Unsupported(f"argument {self.traced[j].name!r} is used both as indices "
                                   f"and as values")
            spec["bound"] = min(spec["bound"], bound)
            return spec["view"]
        a = np.ascontiguousarray(arr, dtype=np.int64)
        if op != "dropout":
            self.row_consts = True          # constant ids or labels: of fixed rows
        if a.size and (a.min() < 0 or a.max() >= bound):
            raise Unsupported(f"{op}: constant {shape_what} out of range [0, {bound})")
        buf = self.ext_buf("const", id(a), a.copy())
        return View(buf, rows, cols, 8)

    def bag_consts(self, ptr, items):
        """An embedding bag's ptr and items (the op's own int64 copies, checked by its
        kernel when it ran): constants of the plan, one copy for equal arrays. Returns
        (ptr view, items view, the largest bag's size, ptr, items)."""
        for b in self.bags:
            if np.array_equal(b[3], ptr) and np.array_equal(b[4], items):
                return b
        it = items if items.size else np.zeros(1, np.int64)
        b = (View(self.ext_buf("const", id(ptr), ptr), len(ptr), 1, 8),
             View(self.ext_buf("const", id(it), it), len(it), 1, 8),
             int(np.diff(ptr).max()) if len(ptr) > 1 else 0, ptr, items)
        self.bags.append(b)
        return b

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
                    raise Unsupported(f"the output of {p._op.name} feeds {uses[id(p)]} ops "
                                       f"(only parameters and inputs may be used twice)")
            self.fwd(node)
        self.order = order

    def fwd(self, node):
        low = _lowering(node._op.name)
        if low.loss:
            if node is not self.root:
                raise Unsupported(f"{node._op.name} that is not the loss returned")
            self.div_per_row = None     # set by the loss's lowering
        low.fwd(self, node, node._op.name, list(node._parents), node._ctx)
        if low.loss:
            self.batch = node._parents[0].shape[0]

    def writable(self, v):
        """Whether an op may write its output over view v: v is the plan's own buffer
        (not an argument's or a parameter's array, which a reshape passes on) and no
        activation's backward reads it (its saved output)."""
        return v.buf.ext is None and not self._saved(v)

    def _saved(self, v):
        """Whether an activation's backward reads view v's buffer (its saved output):
        a loss must not overwrite it with its gradient."""
        return any(isinstance(i[0], View) and i[0].buf is v.buf for i in self.info.values())

    def _targets(self, targets, j, kind, rows, cols):
        """The view of a loss's targets: an argument, read at every call in its own
        dtype and converted (kind "target": binary, checked in [0, 1]; "value"), or a
        constant, converted once."""
        if j is not None:
            spec = self.inputs.setdefault(j, {"kind": kind, "shape": targets.shape})
            if spec["kind"] != kind:
                raise Unsupported(f"argument {self.traced[j].name!r} is used both as "
                                   f"targets and otherwise")
            return View(self.ext_buf("input", j), rows, cols, self.item)
        self.row_consts = True
        if isinstance(targets, np.ndarray) and targets.dtype == self.dt \
                and targets.flags.c_contiguous and targets.flags.aligned:
            # the array itself, read at every call as the eager loss reads it
            return View(self.ext_buf("const", id(targets), targets), rows, cols, self.item)
        return View(self.ext_buf("const", id(targets),
                                  np.ascontiguousarray(targets, dtype=self.dt).copy()),
                     rows, cols, self.item)

    # -- backward
    def backward(self):
        order = self.order
        # how many gradient contributions each dense parameter receives
        contrib = {}
        for node in order:
            if node._op is None:
                continue
            for p in _lowering(node._op.name).dense_params(node):
                if id(p) in self.pindex:
                    contrib[id(p)] = contrib.get(id(p), 0) + 1
        self.contrib, self.seen = contrib, {}
        self.gbufs, self.segments, self.dense_tables = {}, {}, set()
        self.segment_dense = {}     # table -> per use: a dense gradient (not row-sparse)
        self.bag_segments = {}      # bag table -> (table, its uses, its bags' constants)
        for node in reversed(order):
            if node._op is None or not node.requires_grad:
                continue
            g = self.grad.get(id(node))
            name = node._op.name
            low = _lowering(name)
            if node is self.root:       # a loss: its backward part, if it has one
                if low.bwd is not None:
                    low.bwd(self, node, name, node._parents, None)
                continue
            if low.folded:
                continue        # (a transpose is folded into its matmul)
            if g is None:
                raise Unsupported(f"internal: no gradient reached {name}")
            self.bwd(node, name, g)
        # embedding tables: one update each, after their last use
        for key in self.segments:
            if key in self.contrib:
                raise Unsupported("a parameter used both as an embedding table and as a "
                                  "dense weight (tied weights) has no plan yet")
        for key, (table, segs) in self.segments.items():
            self.emb_update(table, segs)
        for t in self.deferred:     # every table's rows after every table's grouping
            self.add(t)
        self.deferred = []
        for key in self.bag_segments:
            if key in self.contrib or key in self.segments:
                raise Unsupported("a parameter used both as an embedding bags' table and "
                                  "otherwise has no plan yet")
        for key, (table, segs, bags) in self.bag_segments.items():
            self.bag_update(table, segs, bags)

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
                return U_ADAGRAD, View(self.ext_buf("state", i), rows, cols, self.item), False
            if self.adam:       # m here, v from adam_v()
                return U_ADAM, View(self.ext_buf("adam_m", i), rows, cols, self.item), False
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
        return View(self.ext_buf("adam_v", self.pindex[id(p)]), rows, cols, self.item)

    def dense_update(self, p, gb):
        i = self.pindex[id(p)]
        if self.gradmode:           # final: the optimiser reads it after the plan
            self.gradbufs[i] = gb
            return
        pv = self.leaf(p)
        n = p.size
        flat = lambda v: View(v.buf, n, 1, self.item, off=v.off, ld=1)   # noqa: E731
        P, Gv = flat(pv), flat(gb)
        v = [P, Gv]
        acc = [(P, "w", FLAT), (Gv, "r", FLAT)]
        if self.adagrad:
            S = flat(View(self.ext_buf("state", i), 1, n, self.item))
            v.append(S)
            acc.append((S, "w", FLAT))
        elif self.adam:
            for kind in ("adam_m", "adam_v"):
                S = flat(View(self.ext_buf(kind, i), 1, n, self.item))
                v.append(S)
                acc.append((S, "w", FLAT))
        mode = U_ADAGRAD if self.adagrad else U_ADAM if self.adam else U_SGD
        self.add(Task("update", (FLAT, n, FLAT_GRAIN), v, acc, mode=mode, pidx=i))

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
        self.add(Task("bias_bwd", (COLS, H, COL_GRAIN), v, acc, mode=mode, m=B, h=H,
                       pidx=self.pindex[id(b)]))
        if last:
            self.dense_update(b, sv)

    def bwd(self, node, name, g):
        _lowering(name).bwd(self, node, name, node._parents, g)

    def emb_update(self, table, segs):
        """The update of an embedding table from its windows' slot gradients."""
        self._slot_update(table, segs, "emb", "an embedding table")

    def bag_update(self, table, segs, bags):
        """The update of an embedding bags' table (row-sparse, as the graph op's
        gradient): each use's slots hand every item of their bag the slot's gradient
        over the bag's size."""
        self._slot_update(table, segs, "bag", "an embedding bags' table", bags)

    def _slot_update(self, table, segs, kind, what, bags=None):
        """The update of a table whose gradient arrives as window slots (``segs``: one
        (ids, gradient, rows, width, d) per use): ``kind`` "emb" (a slot is one row) or
        "bag" (a slot is a bag of rows: ``bags`` = (ptr, items, largest bag, ...)).
        Gradient mode leaves the rows' gradients to the optimiser. An embedding
        table's slots are grouped by row (emb_group: bp_group_slots, as the eager
        sparse steps group them, in the scratch), then its rows are stepped in chunks
        of the sorted slots, each row whole by one chunk (added to ``deferred``: every
        table's rows in one stage after every table's grouping): SGD adds each slot's
        gradient in slot order, Adagrad and Adam sum a row's slots in the eager order
        and step it once. A bag table, and SGD on a table used more than
        MAX_SEGMENTS times: SGD by row ownership classes, Adagrad and Adam in one
        chunk."""
        i = self.pindex[id(table)]
        V, d = table.shape
        tv = self.leaf(table)
        w = segs[0][3]
        if any(s[3] != w for s in segs):
            raise Unsupported(f"{what} used with windows of different widths")
        extra = [] if bags is None else list(bags[:2])      # the bags' ptr and items
        if self.gradmode:           # the optimiser gets the rows' gradients after the plan
            if any(iv.buf.ext is not None for iv, *_ in segs):
                raise Unsupported(f"{what} indexed by constant ids, with "
                                  f"{type(self.opt).__name__}")
            self.gradsparse[i] = ((list(segs), id(table) in self.dense_tables) if bags is None
                                  else (list(segs), False, bags))
            return
        reads = [(x, "r", "all") for x in extra]
        sgd = not (self.adagrad or self.adam)
        if sgd and (bags is not None or len(segs) > MAX_SEGMENTS):
            for iv, g, B, w, d in segs:
                self.add(Task(kind + ("_sgd" if bags is not None else "_sgd_own"),
                              (OWN, OWNER_CLASSES, 1), [tv, iv, g] + extra,
                              [(tv, "w", OWN), (iv, "r", "all"), (g, "r", "all")] + reads,
                              m=B, k=OWNER_CLASSES, h=d, w=w))
            return
        if len(segs) > MAX_SEGMENTS:
            raise Unsupported(f"{what} used more than {MAX_SEGMENTS} times")
        segv = [(iv, g, B) for iv, g, B, _, _ in segs]
        ids_r = [(iv, "r", "all") for iv, _, _ in segv]
        g_r = [(g, "r", "all") for _, g, _ in segv]
        rows_b = segs[0][2]
        if bags is None:
            uses = self.segment_dense.get(id(table), [])
            if not sgd and any(uses) and not all(uses):
                raise Unsupported("an embedding table gathered with dense and row-sparse "
                                  "gradients in one step")
            # the slots grouped by row (one chunk, beside the last backward stage's
            # chunks), then the rows stepped in chunks of the sorted slots (the rows
            # whose first slot lies in the chunk: each row on one thread, whole)
            scratch = self.new(3 * sum(s[2] * w for s in segs), 1, 8)
            self.add(Task("emb_group", (ONE, 1, 1), [scratch], [(scratch, "w", "all")] + ids_r,
                          w=w, segs=segv))
            if sgd:     # (the slots' gradient rows carry -lr: added into the table rows)
                self.deferred.append(Task(
                    "emb_sgd", (ROWS, rows_b, ROW_GRAIN), [tv, scratch],
                    [(tv, "w", "all"), (scratch, "r", "all")] + ids_r + g_r, m=rows_b, h=d,
                    w=w, segs=segv))
                return
        self.updated.add(i)
        sv = View(self.ext_buf("adam_m" if self.adam else "state", i), V, d, self.item)
        sv2 = View(self.ext_buf("adam_v", i), V, d, self.item) if self.adam else None
        name = kind + ("_adam" if self.adam else "_adagrad")
        if bags is None:
            # dense gradients: eager sums each use's rows, then the uses; the plan groups
            # a row's slots by use the same way (row-sparse ones: every slot in order)
            dense = bool(uses) and all(uses) and len(segs) > 1
            # (a summed row per chunk, two for dense gradients: a chunk starts on a
            # multiple of ROW_GRAIN rows of the batch)
            rows = self.new(-(-rows_b // ROW_GRAIN) * (2 if dense else 1), d)
            acc = [(tv, "w", "all"), (sv, "w", "all"), (scratch, "r", "all"),
                   (rows, "w", "all")] + ids_r + g_r
            if sv2 is not None:
                acc.append((sv2, "w", "all"))
            self.deferred.append(Task(name, (ROWS, rows_b, ROW_GRAIN),
                                      [tv, sv, scratch, rows, sv2], acc, m=rows_b, h=d, w=w,
                                      segs=segv, pidx=i, k=1 if dense else 0))
            return
        k = max(1, sum(s[2] * w for s in segs) * bags[2])  # (slot, item) pairs at most
        scratch = self.new(4 * k, 1, 8)
        row = self.new(1, d)
        acc = [(tv, "w", "all"), (sv, "w", "all"), (scratch, "w", "all"),
               (row, "w", "all")] + reads + ids_r + g_r
        views = [tv, sv, scratch, row, sv2] + extra    # (read by position: v4 Adam's v)
        if sv2 is not None:
            acc.append((sv2, "w", "all"))
        self.add(Task(name, (ONE, 1, 1), views, acc,
                       h=d, w=w, segs=segv, pidx=i, k=k))


def _lowering(name):
    from cygrad.compiler.lowering import LOWERINGS
    low = LOWERINGS.get(name)
    if low is None:
        raise Unsupported(f"op {name!r} has no plan kernel")
    return low
