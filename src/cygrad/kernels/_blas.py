"""OpenBLAS's parallel jobs on cygrad's pool (OpenBLAS's caller-managed threading).

NumPy's OpenBLAS keeps its own threads, and after each of its parallel calls they
spin for about 0.1 s on the cores cygrad's helpers need: a program that alternates
NumPy products with cygrad's kernels ran cygrad at one thread's speed. OpenBLAS
>= 0.3.27 can hand its jobs to the caller's threads instead
(``openblas_set_threads_callback_function``); :func:`blas_on_pool` registers
cygrad's pool there, so one set of threads runs both libraries. A BLAS call's jobs
wait on each other (its threads use each other's packed blocks), so they run as a
*gang*: all at once on distinct threads of the pool, never on fewer (see
``bp_pool_gang`` in csrc/bp_pool.h). OpenBLAS still decides how many jobs a call
has (``threadpoolctl.threadpool_limits(n, user_api="blas")`` keeps working).

It is opt-in (``cygrad.blas_on_pool()``, or ``CYGRAD_BLAS_ON_POOL=1`` before
``import cygrad``): it changes how another library runs, process-wide. What it
changes, and what stays:

- Every parallel BLAS call runs as a gang, and gangs run one at a time: BLAS calls
  from several Python threads take turns instead of sharing the cores.
- OpenBLAS's LU factorisation (``numpy.linalg.solve``, ``inv``, ``det``) queues
  its jobs on OpenBLAS's own threads, which stay. A gang's jobs are numbered from
  the top of OpenBLAS's range (its MAX_THREADS) so that they never share an index
  (a per-thread buffer and status word) with those threads; that holds while
  OpenBLAS uses at most half its MAX_THREADS, which is checked when registering.
- ``cygrad.blas_on_pool(False)`` gives OpenBLAS its own threads back (it clears
  the callback, including one another library set). Builds without the pool
  (serial, OpenMP) leave OpenBLAS alone.
"""

import ctypes
import os
import re
import threading

from cygrad.kernels import _parallel

_PREFIXES = ("", "scipy_")
_SUFFIXES = ("", "64_", "_64")
_MIN_VERSION = (0, 3, 27)       # the pthreads server's callback path
_lock = threading.Lock()
_handles = {}                   # path -> ctypes.CDLL kept loaded while registered


def _symbol(lib, name):
    for p in _PREFIXES:
        for s in _SUFFIXES:
            try:
                return getattr(lib, f"{p}{name}{s}")
            except AttributeError:
                continue
    return None


def _loaded_openblas():
    """Paths of the OpenBLAS libraries loaded in this process (Linux: from
    /proc/self/maps; elsewhere none are found)."""
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    name = os.path.basename(path).lower()
                    if "openblas" in name and ".so" in name and path not in paths:
                        paths.append(path)
    except OSError:
        pass
    return paths


def _describe(path):
    """(lib, version tuple, MAX_THREADS, threads now, parallel mode, setter) for one
    library, or None when it is not a usable OpenBLAS."""
    try:
        lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))
    except OSError:
        return None
    get_config = _symbol(lib, "openblas_get_config")
    setter = _symbol(lib, "openblas_set_threads_callback_function")
    get_parallel = _symbol(lib, "openblas_get_parallel")
    get_threads = _symbol(lib, "openblas_get_num_threads")
    if None in (get_config, setter, get_parallel, get_threads):
        return None
    get_config.restype = ctypes.c_char_p
    config = (get_config() or b"").decode("ascii", "replace")
    m = re.search(r"OpenBLAS (\d+)\.(\d+)\.(\d+)", config)
    version = tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
    mt = re.search(r"MAX_THREADS=(\d+)", config)
    max_threads = int(mt.group(1)) if mt else 0
    setter.argtypes = [ctypes.c_void_p]
    setter.restype = None
    return lib, version, max_threads, int(get_threads()), int(get_parallel()), setter


def blas_on_pool(on=True):
    """Run OpenBLAS's parallel jobs on cygrad's thread pool (``on=True``) or on
    OpenBLAS's own threads (``False``).

    Applies to every OpenBLAS loaded in the process (NumPy's, SciPy's) that offers
    caller-managed threading: version 0.3.27 or later, built with its own pthreads
    server (not OpenMP), using at most half its MAX_THREADS (a gang's job indices
    are taken from the top of that range, away from OpenBLAS's own threads, which
    still run its LU factorisation's jobs). Call it again after importing a library
    that brings another OpenBLAS; switch it while no BLAS call is running. Parallel
    BLAS calls then run one at a time (each on all the threads it asked for).

    Returns
    -------
    list of dict
        One per OpenBLAS found: ``path``, ``version``, ``on`` (its jobs now run on
        cygrad's pool) and, when it was left alone, ``why``.
    """
    out = []
    with _lock:
        for path in _loaded_openblas():
            d = _describe(path)
            if d is None:
                continue
            lib, version, max_threads, nthreads, parallel, setter = d
            entry = {"path": path, "version": ".".join(map(str, version)), "on": False}
            if not _parallel.gangs_available():
                entry["why"] = "this cygrad build has no thread pool (serial or OpenMP build)"
            elif version < _MIN_VERSION:
                entry["why"] = f"OpenBLAS {entry['version']} < 0.3.27 has no pthreads callback"
            elif parallel != 1:
                entry["why"] = "not OpenBLAS's pthreads build (openblas_get_parallel() != 1)"
            elif on and 2 * nthreads > max_threads:
                entry["why"] = (f"OpenBLAS uses {nthreads} threads, more than half its "
                                f"MAX_THREADS={max_threads}: a gang's job indices could meet "
                                "its own threads'")
            elif on:
                _handles[path] = (lib, max_threads)
                _parallel._set_blas_top(min(m for _, m in _handles.values()))
                setter(_parallel._blas_callback_address())
                entry["on"] = True
            else:
                setter(None)
                _handles.pop(path, None)
                entry["why"] = "blas_on_pool(False)"
            out.append(entry)
    return out


def blas_status():
    """The OpenBLAS libraries whose jobs run on cygrad's pool now (their paths)."""
    with _lock:
        return sorted(_handles)


def _at_import():
    if os.environ.get("CYGRAD_BLAS_ON_POOL", "").strip().lower() not in ("1", "on", "true",
                                                                       "yes"):
        return []
    try:
        return blas_on_pool(True)
    except Exception:       # never fail `import cygrad` over a foreign library
        return []
