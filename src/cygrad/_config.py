"""Thread policy for the compiled kernels.

The default is OMP_NUM_THREADS when it is set to a positive integer, else the
number of cores this process may run on. Every kernel reads the setting when it
is called and hands it to the thread pool (cygrad.kernels._parallel) as a ceiling: small
inputs run on one thread, and the pool itself runs a loop on the calling thread
alone while its helpers do not pay (another process is using the cores).

``set_num_threads`` is process-wide; ``threads(n)`` overrides it for the Python
thread that enters the ``with`` block only, so two threads may each use their own.
At most MAX_THREADS threads.
"""

import contextlib
import os
import threading

MAX_THREADS = 256      # the pool's BP_MAX_THREADS (csrc/bp_pool.h)

_lock = threading.Lock()
_num_threads = None
_local = threading.local()      # .stack: this Python thread's threads(n) overrides


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), MAX_THREADS)
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))


def _check(n):
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"number of threads must be an int in [1, {MAX_THREADS}], got {n!r}")
    return n


def set_num_threads(n):
    """Set the number of threads the kernels use, process-wide (an int in
    [1, MAX_THREADS]); a ``threads(n)`` block in progress keeps its own."""
    global _num_threads
    n = _check(n)
    with _lock:
        _num_threads = n


def process_threads():
    """The process-wide setting (what set_num_threads set, else the default), whatever
    a threads() block of the calling thread says (threadpoolctl reads this)."""
    global _num_threads
    n = _num_threads
    if n is None:
        with _lock:
            if _num_threads is None:
                _num_threads = _default_threads()
            n = _num_threads
    return n


def get_num_threads():
    """The number of threads the kernels use for inputs large enough to split."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    return process_threads()


def resolve(threads=None, work=None, min_work=0):
    """The one thread resolver of the kernels and the compiled plans: ``threads``
    (checked) if given, else the setting (:func:`get_num_threads`); 1 when ``work``
    is below ``min_work`` (threads make small work slower). The pool may still run
    a loop on fewer (cygrad.kernels._parallel.pool_threads)."""
    if work is not None and work < min_work:
        return 1
    return _check(threads) if threads is not None else get_num_threads()


@contextlib.contextmanager
def threads(n):
    """Use ``n`` threads inside a ``with`` block, in this Python thread only, then
    return to the previous setting (blocks nest)."""
    n = _check(n)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(n)
    try:
        yield n
    finally:
        stack.pop()
