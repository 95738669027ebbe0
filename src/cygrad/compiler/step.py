"""Tracing, the plan cache and the guards: :class:`CompiledStep` and :func:`compile`.

The first call for a set of argument shapes and dtypes traces ``loss_fn`` on the
graph, builds its plan (cygrad.compiler.builder, lowering, schedule) and binds it
(cygrad.compiler.runtime); later calls check the plan's guards and replay it."""

import inspect
import os
import threading
import warnings
import weakref

import numpy as np

from cygrad import _config
from cygrad import graph as _g
from cygrad import optim as _optim
from cygrad.compiler import _plan
from cygrad.compiler.builder import Builder, Unsupported, fused_form
from cygrad.compiler.lowering import LOSSES
from cygrad.compiler.runtime import BoundPlan
from cygrad.compiler.schedule import schedule
from cygrad.graph import Tensor, Traced
from cygrad.graph.ops import SparseRows

__all__ = ["compile", "CompiledStep", "CompileError", "CompileWarning"]


class CompileError(RuntimeError):
    """``strict=True``: the step cannot be compiled, or a guard failed (the message
    says why)."""


class CompileWarning(UserWarning):
    """A compiled step falls back to the eager graph (once per reason)."""


_EAGER = object()
_STEPS = weakref.WeakSet()      # every CompiledStep, for the fork handler below


def _after_fork_in_child():
    """A fork while another thread ran a step copies its lock held: the child's
    steps get new locks (the thread that held it does not exist in the child)."""
    for step in list(_STEPS):
        step._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class CompiledStep:
    """A training step compiled from ``loss_fn`` (see :func:`compile`)."""

    def __init__(self, loss_fn, optimizer, strict=False, threads=None, clip_grad_norm=None,
                 clip_grad_value=None, dynamic_rows=False):
        if not callable(loss_fn):
            raise TypeError(f"compile: loss_fn must be callable, got {type(loss_fn).__name__}")
        _check_optimizer(optimizer)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.strict = bool(strict)
        self.clip_grad_norm = _positive("clip_grad_norm", clip_grad_norm)
        self.clip_grad_value = _positive("clip_grad_value", clip_grad_value)
        self.retraces = 0
        self.plans_built = 0    # plans traced and built over the step's life
        self.dynamic_rows = bool(dynamic_rows)
        self._poly = []         # dynamic_rows: the plans that serve fewer rows than built for
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
        _STEPS.add(self)

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
            rows = -1
            if entry is None and self._poly:
                entry, rows = self._dynamic(args)
            if entry is None:
                return self._first(key, args)
            if entry is _EAGER:
                return self._eager(args)
            return self._run(entry, key, args, rows)

    def _run(self, entry, key, args, rows, checked=False):
        """One step on plan ``entry`` (``checked``: its guards are known to hold)."""
        if entry.arena_bytes > self._arena.nbytes:
            self._grow(entry.arena_bytes)
        for k in entry.live:                # nn.Dropout: the next key, as eagerly
            k.advance()
        try:
            loss = entry.runner.run(args, checked, rows)  # None: a guard failed
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
                self._drop(entry)
                return self._first(key, args)
            for k in entry.live:
                k.advance()
            try:
                loss = entry.runner.run(args, True, rows)
            except BaseException:
                for k in entry.live:
                    k.undo()
                raise
        if entry.gradmode:
            entry.apply_update(rows)
        return loss

    def _dynamic(self, args):
        """dynamic_rows: a plan that serves these arguments with their rows, and the
        rows; (None, -1) when none does. A batch larger than a plan that would serve it
        drops that plan (the next one, traced at this size, serves both)."""
        for entry in list(self._poly):
            rows = entry.serves(args)
            if rows > 0:
                return entry, rows
            if rows == 0:
                self._drop(entry)
        return None, -1

    def _drop(self, entry):
        self._plans.pop(entry.key, None)
        if entry in self._poly:
            self._poly.remove(entry)

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
                raise Unsupported("the loss does not depend on any parameter")
            b = Builder(loss, traced, opt, fused_form(opt),
                         clip=self.clip_grad_norm is not None or self.clip_grad_value is not None)
            b.made, b.modules = made, modules
            b.live = {id(k.array): k for k in live_keys}
            b.live_keys = live_keys
            if loss._op is None or loss._op.name not in LOSSES:
                raise Unsupported(f"the loss is {getattr(loss._op, 'name', 'a leaf')!r}; a plan "
                                   f"needs one of {', '.join(LOSSES)} as the returned loss")
            if loss.dtype not in (np.float32, np.float64):
                raise Unsupported(f"dtype {loss.dtype}")
            for p in opt.params:
                if not isinstance(p, Tensor):
                    raise TypeError(f"compile: the optimiser's parameters must be Tensors, "
                                    f"got {type(p).__name__}")
                if p.dtype != loss.dtype:
                    raise Unsupported(f"a parameter has dtype {p.dtype}, the loss {loss.dtype}")
            b.forward()
            b.backward()
            stages = schedule(b.tasks)
            compiled = BoundPlan(self, b, stages)
            compiled.opt_kind = ("grad" if b.gradmode else "adam" if b.adam else
                                 "adagrad" if b.adagrad else "sgd")
            # a step() of the user's gets gradients of its own (it may keep them)
            own_step = getattr(type(opt), "step", None)
            compiled.copy_grads = own_step not in _OWN_STEPS and not getattr(
                own_step, "_keeps_no_grads", False)
            compiled.runner = _plan.Runner(compiled)
        except Unsupported as e:
            self._fallback(key, str(e))
            compiled = None
        if compiled is None:        # the step completes on the graph
            loss.backward()
            self._clip()
            opt.step()
            opt.zero_grad()
            return loss.item()
        if compiled.arena_bytes > self._arena.nbytes:
            self._grow(compiled.arena_bytes)
        self._plans[key] = compiled
        compiled.key = key
        self.plans_built += 1
        if self.dynamic_rows and compiled.dynamic_ok:
            self._poly.append(compiled)
        # the step itself runs on the plan, as every later one: a run's parameters do not
        # depend on where it traced (a resumed run, a re-trace). The trace drew
        # nn.Dropout's keys once; the plan draws them again.
        del loss
        for k in compiled.live:
            k.undo()
        return self._run(compiled, key, args, -1, checked=True)


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
            clip_grad_value=None, dynamic_rows=False):
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
    dynamic_rows : bool
        Let one plan serve every batch of up to the rows it was traced with (the
        batch's rows a run-time argument), instead of one plan per batch size: the
        arguments whose first dimension is the batch (ids, labels, targets, float
        inputs) may then have fewer rows; a larger batch traces a plan of its size,
        which replaces the smaller one. For loss functions whose Python code does
        not depend on the batch size (it is traced once); a plan that reads
        constants by rows serves its own size only.

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
                        clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value,
                        dynamic_rows=dynamic_rows)
