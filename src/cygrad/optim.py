"""Optimisers for graph parameters: plain SGD (the lecture's update) and Adagrad.

Both update ``Tensor.data`` in place with the compiled kernels and understand
the row-sparse gradients of ``embedding_windows(..., sparse=True)``: only the
rows of the batch's windows are read or written.
"""

import numpy as np

from cygrad import kernels as _K
from cygrad.graph import SparseRows, Tensor


class _Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        for p in self.params:
            if not isinstance(p, Tensor) or not p.requires_grad or not p.is_leaf:
                raise TypeError(f"{type(self).__name__}: parameters must be leaf Tensors "
                                f"with requires_grad=True, got {p!r}")
            if not p.data.flags.c_contiguous or not p.data.flags.writeable:
                p.data = np.ascontiguousarray(p.data).copy()
        lr = float(lr)
        if not np.isfinite(lr) or lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be a positive number, got {lr}")
        self.lr = lr

    def zero_grad(self):
        for p in self.params:
            p.grad = None


class SGD(_Optimizer):
    """``theta <- theta - lr * grad`` for every parameter that has a gradient."""

    def step(self):
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            if isinstance(g, SparseRows):
                _K.embedding_sgd_update(p.data, g.indices.reshape(-1, 1), g.rows, self.lr)
            else:
                _K.sgd_update(p.data, np.ascontiguousarray(g, dtype=p.dtype), self.lr)
