"""cygrad: backpropagation kernels for multicore CPUs (CS224N lecture 3, compiled).

``cygrad.kernels`` holds the compiled kernels, ``cygrad.reference`` their NumPy
twins; ``set_num_threads``, ``get_num_threads`` and ``threads`` control the
kernels' thread count; ``build_info()`` says how this copy was built.
"""

__version__ = "0.1.0"

from cygrad._config import get_num_threads, set_num_threads, threads
from cygrad import kernels, reference


def build_info():
    """How the compiled kernels were built, and what they will use at run time.

    Returns
    -------
    dict
        ``openmp`` (bool: compiled with OpenMP), ``openmp_version`` (the _OPENMP
        date, 0 without), ``max_threads`` (threads the kernels use now),
        ``omp_max_threads`` (OpenMP's own default), ``compiler``, ``flags``,
        ``cython_version``, ``debug`` (Cython bounds checks on), ``simd`` (the
        instruction-set path the load-time dispatch selected), ``version``,
        ``numpy_version``.
    """
    import numpy

    from cygrad._common import _build_facts

    info = dict(_build_facts())
    info["max_threads"] = get_num_threads() if info["openmp"] else 1
    info["version"] = __version__
    info["numpy_version"] = numpy.__version__
    return info


__all__ = ["build_info", "get_num_threads", "set_num_threads", "threads", "kernels",
           "reference", "__version__"]
