"""The compiled kernels: Cython over raw buffers, SIMD loops in C, cygrad's thread pool.

Every function here has a twin of the same name and signature in
:mod:`cygrad.kernels.reference` (plain NumPy), which the tests use as the oracle.

Conventions
-----------
* Inputs are NumPy arrays of float32 or float64; the arrays of one call share
  one dtype (mixing raises TypeError: there is no implicit upcast).
* Non-contiguous inputs are copied to C order; arrays written in place
  (``out=``, ``param``, ``grad_table``, ``table``, ``dW``) must be
  C-contiguous and writeable, or ValueError is raised.
* Index arrays (``labels``, ``windows``) may have any integer dtype; every
  value is checked against the table or class count (IndexError).
* The thread count is :func:`cygrad.get_num_threads` (small inputs run on one
  thread); results are identical for a fixed thread count, and for most kernels
  for any thread count.
"""

from cygrad.kernels import _elementwise
from cygrad.kernels._bags import embedding_bag_backward, embedding_bag_windows
from cygrad.kernels._crf import constrained_viterbi, crf_nll, crf_viterbi
from cygrad.kernels._elementwise import (
    add_bias,
    bias_grad,
    dropout,
    gelu,
    gelu_backward,
    hardtanh,
    hardtanh_backward,
    layer_norm,
    layer_norm_backward,
    leaky_relu,
    leaky_relu_backward,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    silu,
    silu_backward,
    tanh,
    tanh_backward,
)
from cygrad.kernels._embedding import (
    embedding_gather,
    embedding_scatter_add,
    embedding_sgd_update,
)
from cygrad.kernels._gemm import matmul, outer_accumulate
from cygrad.kernels._losses import (
    max_margin,
    mse_loss,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
)
from cygrad.kernels._optim import (
    adagrad_update,
    adam_update,
    embedding_adagrad_update,
    embedding_adam_update,
    sgd_momentum_update,
    sgd_update,
)

#: name -> (forward, backward, saves); ``saves`` says whether the backward's
#: ``saved`` argument is the forward "input" or the forward "output". Built from the
#: one registry (``_elementwise.ACT_CODES`` / ``ACT_SAVES``, the C enum's names).
ACTIVATIONS = {n: (getattr(_elementwise, n), getattr(_elementwise, n + "_backward"), saves)
               for n, saves in _elementwise.ACT_SAVES.items()}

__all__ = [
    "ACTIVATIONS", "matmul", "outer_accumulate", "add_bias", "bias_grad",
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "relu", "relu_backward",
    "leaky_relu", "leaky_relu_backward", "hardtanh", "hardtanh_backward",
    "gelu", "gelu_backward", "silu", "silu_backward", "dropout",
    "softmax_cross_entropy", "sigmoid_binary_cross_entropy", "max_margin", "mse_loss",
    "embedding_gather", "embedding_scatter_add", "embedding_sgd_update", "sgd_update",
    "sgd_momentum_update", "adam_update", "embedding_adam_update",
    "constrained_viterbi", "adagrad_update", "embedding_adagrad_update", "crf_nll",
    "crf_viterbi", "embedding_bag_windows", "embedding_bag_backward", "layer_norm",
    "layer_norm_backward",
]
