"""A plan bound to its arrays: what a compiled step needs at run time besides the
executor (cygrad.compiler._plan.Runner), the slow paths included: binding the
parameters', optimiser state's and inputs' arrays (followed by identity at every
call), the guards (what the plan baked in, and what changed when one fails), and
gradient mode (the gradients handed to the optimiser's own ``step()``)."""

import numpy as np

from cygrad import kernels as _K
from cygrad.compiler import _plan
from cygrad.compiler.builder import STATE_ATTR
from cygrad.compiler.schedule import layout
from cygrad.graph import Tensor
from cygrad.graph.ops import SparseRows
from cygrad.kernels._crf import reachability

# multiply-adds of the step's products below which one thread runs: on the 2-core
# machine (python benches/report_min_work.py, benches/results/min-work.md) 2 threads were
# 0.74-0.79x one below 1.8 M, 1.0x at 3.6-7.3 M, 1.07-1.49x from 15 M idle; ~1.0 busy
MIN_WORK = 2500000


class BoundPlan:
    """One plan (for one set of argument shapes and dtypes) and what it needs at run time."""

    def __init__(self, step, builder, stages):
        tasks, groups, st_tab, views, ext_list, arena = layout(builder, stages)
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
        # (stage, task name, its dimensions, its group: (index space, size, grain), the
        # group's number) in the plan's task order, for profiles and the scaling model
        self.task_labels = [(i, e["t"].name, (e["t"].m, e["t"].k, e["t"].h), tuple(g["space"]),
                             gi)
                            for i, st in enumerate(stages) for gi, g in enumerate(st)
                            for e in g["tasks"]]
        self.plan = _plan.Plan(tasks, groups, st_tab, views, 1 + len(ext_list), self.f32,
                               self.batch)
        self.work = builder.work
        self.min_work = MIN_WORK
        self.crf = None if builder.crf is None else CrfArrays(builder, self)
        self.xent_weights = builder.xent_weights
        self.losses = np.zeros(max(-(-self.batch // 4),
                                   0 if self.crf is None else self.crf.capacity), np.float64)
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
            elif spec["kind"] == "lengths":     # read by the CRF's per-call setup
                self.inputs.append((j, "lengths", None, spec["shape"], None, name))
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
                 for iv, g, B, w, d in segs], dense, None if not rest else rest[0][3:5])
            for i, (segs, dense, *rest) in sorted(builder.gradsparse.items())]
        self.grad_arrays = []
        self.sparse_arrays = []
        self._refresh_ext(force=True)
        # what run() checks by identity at every call: the tensors' arrays, Adagrad's state
        self.watch = [(pos, opt.params[p] if kind == "param" else p)
                      for pos, kind, p in self.ext
                      if kind == "param" or (kind == "const" and isinstance(p, Tensor))]
        self.watch_state = [(pos, STATE_ATTR[kind], p) for pos, kind, p in self.ext
                            if kind in STATE_ATTR]
        self.adam_params = sorted(builder.updated) if builder.adam else []
        self.adam_scalars = np.zeros(2 * len(opt.params), np.float64)
        self.decoupled = builder.decoupled
        # the loss's divisor per row (a mean's), 0 (a sum: 1), -1 (a weighted mean's:
        # the batch's label weights, per call)
        dpr = builder.div_per_row
        self.div_per_row = -1.0 if dpr is None else dpr
        xw = getattr(builder, "xent_w", None)
        self.xent_w = None if dpr is not None else (xw[0], xw[1].offset)
        self._rows_args(builder)
        # the keys of nn.Dropout calls, advanced in the order the calls were traced
        self.live = [k for k in builder.live_keys if id(k.array) in builder.live_used]
        self._guards(builder)
        self._ranges()

    # -- dynamic rows: one plan for every batch up to its capacity
    def _rows_args(self, builder):
        """Which arguments are the batch's rows (index arrays of gathers and labels,
        targets, float inputs, their first dimension the batch), and whether the plan
        can serve fewer rows than it was built for: every row-indexed value comes from
        an argument (no constant of the batch's rows) and every argument that an op
        reads by rows has the batch's first dimension."""
        B = self.batch
        rows, ok = set(), not builder.row_consts
        self.sent_args = {}         # argument -> the sentences it holds at most
        for j, spec in builder.inputs.items():
            shape = spec["shape"]
            if spec["kind"] == "ids" and spec["op"] == "dropout":
                continue
            if spec["kind"] == "lengths":   # a sentence has a row at least: S <= the rows
                self.sent_args[j] = B
                continue
            if len(shape) and shape[0] == B:
                rows.add(j)
            else:
                ok = False
        self.row_args = frozenset(rows)
        self.used_args = frozenset(builder.inputs)     # the others: read by nothing
        self.dynamic_ok = ok and bool(rows)
        self.arg_specs = [(tuple(a.shape), a.dtype if a.dtype.isnative
                           else a.dtype.newbyteorder("=")) for a in builder.traced]

    def serves(self, args):
        """The batch's rows if this plan serves these arguments with runtime rows (the
        same shapes but the rows' first dimension, at most the capacity), else -1;
        0: the same but more rows than the capacity."""
        specs = self.arg_specs
        if len(args) != len(specs):
            return -1
        rows, more = -1, False
        for j, (a, (shape, dt)) in enumerate(zip(args, specs)):
            if type(a) is not np.ndarray or a.dtype.newbyteorder("=") != dt \
                    and a.dtype != dt:
                return -1
            if j not in self.used_args:
                continue
            if j in self.row_args:
                if a.ndim != len(shape) or a.shape[1:] != shape[1:]:
                    return -1
                if rows < 0:
                    rows = a.shape[0]
                elif a.shape[0] != rows:
                    return -1
            elif j in self.sent_args:
                if a.ndim != 1:
                    return -1
                if a.shape[0] > self.sent_args[j]:
                    more = True
            elif a.shape != shape:
                return -1
        if rows < 1:
            return -1
        return rows if rows <= self.batch and not more else 0

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
            if kind == "param" or kind in STATE_ATTR:
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
                what = f"parameter {payload}" + (f" (shape {a.shape})"
                                                 if isinstance(a, np.ndarray) else "")
            elif kind in STATE_ATTR:
                a = getattr(opt, STATE_ATTR[kind])[payload]
                what = f"the optimiser state of parameter {payload}"
            elif kind == "const":
                a = payload.data if isinstance(payload, Tensor) else payload
                what = "a constant tensor"
            elif kind in ("live", "weights"):     # the plan's own arrays
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
            raise TypeError(f"compiled step: {what}: the tensor's .data is a "
                            f"{type(a).__name__}, not a NumPy array (assign an array: "
                            f"t.data = np.asarray(value, dtype=np.{self.dtype}))")
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
        # (table, [(ids (n,), gradient rows (B, w d))], dense, an embedding bags' (ptr, items))
        self.sparse_arrays = []
        for i, segs, dense, bags in self.sparse_specs:
            views = []
            for ioff, n, goff, ld, B, w, d in segs:
                ids = arena[ioff:ioff + 8 * n].view(np.int64)
                g = np.ndarray((B, w * d), self.dtype, buffer=arena, offset=goff,
                               strides=(ld * item, item))
                views.append((ids.reshape(B, w), g))
            self.sparse_arrays.append((self.opt.params[i], views, dense, bags))
        self.arena = arena

    def apply_update(self, rows=-1):
        """Gradient mode: the gradients the plan left in the workspace go to ``.grad``
        (as eager backward leaves them: a dense table's gradient dense, a sparse one's
        row-sparse), the step's clipping, then the optimiser's own ``step()``; then
        .grad is None again, as after every compiled step."""
        step = self.step
        own = self.copy_grads       # a step of the user's may keep what it is handed
        for p, g in self.grad_arrays:
            p.grad = g.copy() if own else g
        for p, views, dense, bags in self.sparse_arrays:
            d = p.shape[1]
            if 0 < rows < self.batch:       # dynamic rows: the batch's rows only
                views = [(ids[:rows], g[:rows]) for ids, g in views]
            if bags is not None:    # as EmbeddingBagWindows.backward, per use
                parts = [_K.embedding_bag_backward(np.ascontiguousarray(g), ids, *bags)
                         for ids, g in views]
                p.grad = SparseRows(np.concatenate([r for r, _ in parts]),
                                    np.concatenate([v for _, v in parts]), p.shape)
            elif dense:       # as EmbeddingWindows.backward: scattered into zeros, per use
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

    opt_kind = None         # "sgd", "adagrad", "adam" or "grad" (gradient mode): set by the step
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


class CrfArrays:
    """The CRF loss's arrays, allocated once at the plan's capacity (rows N,
    sentences S): the kernel's float64 tables (cygrad.kernels._crf's), the offsets, the
    transitions' tables and the mask's reachability (fixed by the mask)."""

    def __init__(self, builder, plan):
        c = builder.crf
        N, C, W = plan.batch, c["C"], c["C"] + 1
        self.capacity = max(N, 1)           # sentences: each has a row at least
        self.C = C
        self.lengths_arg = c["lengths_arg"]
        self.tags_arg = [j for j, spec in builder.inputs.items()
                         if spec["kind"] == "ids" and spec["view"] is c["tags"]][0]
        self.trans_param = builder.pindex[id(c["trans"])]
        self.per_sentence = c.get("per_sentence", False)    # reduction "mean": / sentences
        self.s, self.e, self.alpha, self.beta, self.ds = (np.zeros(N * C) for _ in range(5))
        self.z = np.zeros(N)
        self.dT = np.zeros(self.capacity * W * W)
        self.loss = np.zeros(self.capacity)
        self.off = np.zeros(self.capacity + 1, np.int64)
        self.T = np.zeros((W, W))
        self.E = np.zeros((W, W))
        allowed = c["allowed"]
        self.allowed = None if allowed is None else np.array(allowed, dtype=bool, copy=True)
        ok = np.ones((W, W), bool) if allowed is None else self.allowed
        self.forbidden = ~ok
        self.reach, self.coreach = reachability(ok)    # the kernel's own
