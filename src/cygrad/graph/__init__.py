"""A computation graph with local gradients: the second half of CS224N lecture 3.

A :class:`Tensor` holds a NumPy array. Every operation on tensors is an
:class:`Op`: one class holding its ``forward`` and its local ``backward`` side
by side; ``forward`` saves what ``backward`` needs on a context object. Calling
``loss.backward()`` orders the graph topologically (iteratively: no recursion
limit), walks it in reverse, and at each node turns the upstream gradient into
one gradient per input with the node's local gradient. Gradients meeting at a
value used twice are summed. Each node's upstream gradient is computed once and
handed to every input below it (the lecture's delta, reused).

The ops run on the compiled kernels (``cygrad.kernels``) by default; inside
``use_backend("numpy")`` they run on ``cygrad.kernels.reference`` instead, with the
same results.

Gradient bookkeeping follows PyTorch: ``.grad`` is kept for leaves (tensors
created by the user with ``requires_grad=True``) and for tensors that called
:meth:`Tensor.retain_grad`. Calling ``backward()`` again *adds* into ``.grad``;
set ``.grad = None`` (or call ``zero_grad``) between steps. Backward frees what
the graph saved, so running it twice through the same nodes needs
``retain_graph=True`` the first time.

In-place writes are guarded as PyTorch's version counters guard them: while a
node that saved a tensor's array can still be backpropagated, that array is
read-only (``w.data[...] = 0`` raises NumPy's "assignment destination is
read-only"); optimisers and compiled steps write it anyway and bump the
tensor's version, and backward through such a node raises instead of using
the new values. Backward, or dropping the graph, lifts the protection.

The package: ``engine`` (Tensor, the op protocol, backward, grad mode, backends,
tracing for cygrad.compile), ``ops`` (the ops, forward beside backward) and
``gradcheck``.
"""

from cygrad.graph.engine import (  # noqa: F401
    Context,
    Op,
    Tensor,
    Traced,
    TraceRefused,
    _trace,
    _untraced,
    get_backend,
    is_grad_enabled,
    no_grad,
    tensor,
    use_backend,
)
from cygrad.graph.gradcheck import GradcheckError, gradcheck  # noqa: F401
from cygrad.graph.ops import (  # noqa: F401
    ACTIVATIONS,
    Abs,
    Add,
    Concat,
    CrfNll,
    Div,
    Dropout,
    EmbeddingBagWindows,
    EmbeddingWindows,
    Exp,
    Index,
    Linear,
    Log,
    LogSoftmax,
    MatMul,
    Maximum,
    MaxMargin,
    Mean,
    Minimum,
    MSELoss,
    Mul,
    Neg,
    Pow,
    Reshape,
    SigmoidBCE,
    Softmax,
    SoftmaxCrossEntropy,
    SparseRows,
    Sub,
    Sum,
    Transpose,
    abs,
    concat,
    crf_nll,
    dropout,
    embedding_bag_windows,
    embedding_windows,
    exp,
    gelu,
    hardtanh,
    layer_norm,
    leaky_relu,
    linear,
    log,
    log_softmax,
    max_margin,
    maximum,
    minimum,
    mse_loss,
    pow,
    relu,
    sigmoid,
    sigmoid_binary_cross_entropy,
    silu,
    softmax,
    softmax_cross_entropy,
    tanh,
)

__all__ = [
    "Tensor", "tensor", "Op", "SparseRows", "no_grad", "is_grad_enabled", "use_backend",
    "get_backend", "maximum", "minimum", "concat", "dropout", "crf_nll", "embedding_bag_windows",
    "linear", "embedding_windows",
    "softmax_cross_entropy", "sigmoid_binary_cross_entropy", "mse_loss", "max_margin", "gradcheck",
    "GradcheckError", "sigmoid", "tanh", "relu", "leaky_relu", "hardtanh", "gelu", "silu",
    "ACTIVATIONS", "exp", "log", "abs", "pow", "softmax", "log_softmax", "layer_norm",
]
