"""Central-difference gradient checks of the graph, in float64."""

import numpy as np

from cygrad.graph.engine import Tensor, no_grad
from cygrad.graph.ops import SparseRows

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
          if isinstance(x, Tensor) and x.dtype.kind == "f" else x for x in inputs]
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
