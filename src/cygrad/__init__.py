"""cygrad: backpropagation kernels for multicore CPUs (CS224N lecture 3, compiled).

``cygrad.kernels`` holds the compiled kernels, ``cygrad.kernels.reference`` their NumPy
twins; ``cygrad.Tensor`` and the functions beside it form the graph executor
(``cygrad.graph``), and ``compile`` turns a training step written with them into
one compiled call (``cygrad.compiler``); ``set_num_threads``, ``get_num_threads``
and ``threads`` control the kernels' thread count; ``build_info()`` says how this
copy was built.
"""

__version__ = "0.1.0"

from cygrad import (
    data,
    kernels,
    nn,
    optim,
    reference,
)
from cygrad._config import get_num_threads, set_num_threads, threads
from cygrad._random import manual_seed
from cygrad.compiler import CompiledStep, CompileError, CompileWarning, compile
from cygrad.graph import (
    ACTIVATIONS,
    GradcheckError,
    Op,
    Tensor,
    abs,
    concat,
    crf_nll,
    dropout,
    embedding_bag_windows,
    embedding_windows,
    exp,
    gelu,
    get_backend,
    gradcheck,
    hardtanh,
    is_grad_enabled,
    layer_norm,
    leaky_relu,
    linear,
    log,
    log_softmax,
    max_margin,
    maximum,
    minimum,
    mse_loss,
    no_grad,
    pow,
    relu,
    sigmoid,
    sigmoid_binary_cross_entropy,
    silu,
    softmax,
    softmax_cross_entropy,
    tanh,
    tensor,
    use_backend,
)
from cygrad.kernels import (
    _blas,
    _cygrad_threads,  # noqa: F401  (the file name threadpoolctl finds)
    _threadpool,
)
from cygrad.kernels._blas import blas_on_pool
from cygrad.serialize import FormatError, load, save

_threadpool.register()      # threadpool_info() / threadpool_limits() see cygrad's pool
_blas._at_import()          # CYGRAD_BLAS_ON_POOL=1: OpenBLAS's jobs on cygrad's pool


def build_info():
    """How the compiled kernels were built, and what they will use at run time.

    Returns
    -------
    dict
        ``threaded`` (bool: built with the thread pool, cygrad.kernels._parallel; False
        for a serial build), ``openmp`` (bool: the CYGRAD_OPENMP=1 build, loops on
        OpenMP teams), ``thread_layer`` (how loops are threaded),
        ``max_threads`` (threads the kernels use now), ``compiler``, ``flags``,
        ``cython_version``, ``debug`` (Cython bounds checks on), ``simd`` (the
        instruction-set path the load-time dispatch selected for the elementwise
        loops), ``gemm_path`` (the GEMM micro-kernel in use: "avx512", "avx2" or
        "generic"; ``CYGRAD_GEMM_PATH`` forces a lower one) and ``gemm_paths``
        (those this CPU can run), ``blas_on_pool`` (the OpenBLAS libraries whose
        parallel jobs run on cygrad's pool: :func:`blas_on_pool`), ``version``,
        ``numpy_version``.
    """
    import numpy

    from cygrad.kernels._common import _build_facts
    from cygrad.kernels._gemm import _gemm_path

    info = dict(_build_facts())
    info["gemm_path"], info["gemm_paths"] = _gemm_path()
    from cygrad.kernels._parallel import openmp
    info["openmp"] = openmp()
    info["thread_layer"] = (
        "OpenMP teams (CYGRAD_OPENMP=1 build): dynamic chunks, no fallback" if info["openmp"]
        else "cygrad pool: persistent helpers, dynamic chunks, falls back to one thread when "
             "helpers do not pay" if info["threaded"] else "serial build")
    info["max_threads"] = get_num_threads() if info["threaded"] else 1
    info["blas_on_pool"] = _blas.blas_status()
    info["version"] = __version__
    info["numpy_version"] = numpy.__version__
    return info


__all__ = [
    "build_info", "get_num_threads", "set_num_threads", "threads", "blas_on_pool", "manual_seed",
    "kernels",
    "reference",
    "__version__", "Tensor", "tensor", "Op", "no_grad", "is_grad_enabled", "use_backend",
    "get_backend", "gradcheck", "GradcheckError", "maximum", "minimum", "concat", "dropout",
    "crf_nll", "embedding_bag_windows", "linear",
    "embedding_windows", "softmax_cross_entropy", "sigmoid_binary_cross_entropy", "mse_loss",
    "max_margin", "ACTIVATIONS", "sigmoid", "tanh", "relu", "leaky_relu", "hardtanh", "gelu",
    "silu", "exp", "log", "abs", "pow", "softmax", "log_softmax", "layer_norm", "optim", "nn",
    "data", "save",
    "load", "FormatError", "compile", "CompiledStep", "CompileError", "CompileWarning",
]
