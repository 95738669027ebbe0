"""Thread policy for the compiled kernels.

The default is OMP_NUM_THREADS when it is set to a positive integer, else the
number of cores this process may run on. Every kernel reads the setting when it
is called and passes it to OpenMP explicitly (``num_threads``), so the setting
here wins over OpenMP's own global state; small inputs run on one thread.
"""

import contextlib
import os
import threading

_lock = threading.Lock()
_num_threads = None


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive int, got {n!r}")
    return n


def set_num_threads(n):
    """Set the number of threads the kernels use (a positive int)."""
    global _num_threads
    n = _check(n)
    with _lock:
        _num_threads = n


def get_num_threads():
    """The number of threads the kernels use for inputs large enough to split."""
    global _num_threads
    n = _num_threads
    if n is None:
        with _lock:
            if _num_threads is None:
                _num_threads = _default_threads()
            n = _num_threads
    return n


@contextlib.contextmanager
def threads(n):
    """Use ``n`` threads inside a ``with`` block, then restore the previous setting.

    The setting is process-wide, as torch.set_num_threads is: do not change it
    from several Python threads at once.
    """
    global _num_threads
    n = _check(n)
    with _lock:
        old = _num_threads
        _num_threads = n
    try:
        yield n
    finally:
        with _lock:
            _num_threads = old
