"""Optimisers for graph parameters: plain SGD (the lecture's update) and Adagrad.

Both update ``Tensor.data`` in place with the compiled kernels and understand
the row-sparse gradients of ``embedding_windows(..., sparse=True)``: only the
rows of the batch's windows are read or written.
"""

import numpy as np

from cygrad import kernels as _K
from cygrad.graph import SparseRows, Tensor
from cygrad.graph.engine import is_protected, writing


class _Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        for p in self.params:
            if not isinstance(p, Tensor) or not p.requires_grad or not p.is_leaf:
                raise TypeError(f"{type(self).__name__}: parameters must be leaf Tensors "
                                f"with requires_grad=True, got {p!r}")
            if not p.data.flags.c_contiguous or not (p.data.flags.writeable
                                                     or is_protected(p.data)):
                p.data = np.ascontiguousarray(p.data).copy()
        self.lr = lr

    @property
    def lr(self):
        """The learning rate: a positive finite number; a schedule may change it
        between steps (compiled steps read it at every call)."""
        return self._lr

    @lr.setter
    def lr(self, lr):
        try:
            lr = float(lr)
        except (TypeError, ValueError):
            raise TypeError(f"{type(self).__name__}: lr must be a number, got {lr!r}") from None
        if not np.isfinite(lr) or lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be a positive number, got {lr}")
        self._lr = lr

    def zero_grad(self):
        for p in self.params:
            p.grad = None


class SGD(_Optimizer):
    """``theta <- theta - lr * grad`` for every parameter that has a gradient."""

    def step(self):
        with writing([p for p in self.params if p.grad is not None]):
            for p in self.params:
                g = p.grad
                if g is None:
                    continue
                if isinstance(g, SparseRows):
                    _K.embedding_sgd_update(p.data, g.indices.reshape(-1, 1), g.rows, self.lr)
                else:
                    _K.sgd_update(p.data, np.ascontiguousarray(g, dtype=p.dtype), self.lr)


class Adagrad(_Optimizer):
    """Adagrad: ``G += g²; theta -= lr * g / (sqrt(G) + eps)``, per element.

    For row-sparse gradients the rows of repeated indices are summed first, and
    only the touched rows of ``theta`` and ``G`` change.
    """

    def __init__(self, params, lr=0.05, eps=1e-8, initial_accumulator=0.0):
        super().__init__(params, lr)
        self.eps = float(eps)
        self.state = [np.full_like(p.data, initial_accumulator) for p in self.params]

    def step(self):
        with writing([p for p in self.params if p.grad is not None]):
            for p, G in zip(self.params, self.state):
                g = p.grad
                if g is None:
                    continue
                if isinstance(g, SparseRows):
                    _K.embedding_adagrad_update(p.data, G, g.indices.reshape(-1, 1), g.rows,
                                                self.lr, self.eps)
                else:
                    _K.adagrad_update(p.data, G, np.ascontiguousarray(g, dtype=p.dtype),
                                      self.lr, self.eps)
