"""Compiled training steps: ``cygrad.compile(loss_fn, optimizer=opt)``.

The first call for a given set of argument shapes and dtypes runs ``loss_fn``
on the graph executor with its arguments wrapped as traced inputs, turns the
recorded graph into a plan (cygrad.compiler._plan: tasks grouped into stages, every
buffer placed once in a workspace that grows with the largest batch seen) and
runs that first step on the plan too (the traced forward is discarded), so that
a run's parameters do not depend on where it traced: a resumed run, a re-trace
after a guard failed. (A step the plan cannot hold completes on the graph.) Later
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

The package, one idea a module: ``step`` (tracing, the plan cache, the guards:
:class:`CompiledStep`, :func:`compile`), ``lowering`` (the table: op name ->
forward and backward lowering), ``builder`` (workspace buffers and views, tasks,
parameter updates), ``schedule`` (groups, stages, the workspace layout),
``runtime`` (a plan bound to its arrays; guards; gradient mode) and ``_plan``
(the executor, in Cython, which owns the task codes).
"""

from cygrad.compiler.step import CompiledStep, CompileError, CompileWarning, compile

__all__ = ["compile", "CompiledStep", "CompileError", "CompileWarning"]
