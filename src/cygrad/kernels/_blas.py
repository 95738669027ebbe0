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

``import cygrad`` does this for every OpenBLAS loaded by then unless
``CYGRAD_BLAS_ON_POOL=0``; ``cygrad.blas_on_pool(False)`` gives OpenBLAS its own
threads back. Builds without the pool (serial, OpenMP) leave OpenBLAS alone.
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
    """(lib, version tuple, config string, parallel mode, setter) for one library,
    or None when it is not a usable OpenBLAS."""
    try:
        lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    get_config = _symbol(lib, "openblas_get_config")
    setter = _symbol(lib, "openblas_set_threads_callback_function")
    get_parallel = _symbol(lib, "openblas_get_parallel")
    if get_config is None or setter is None or get_parallel is None:
        return None
    get_config.restype = ctypes.c_char_p
    config = (get_config() or b"").decode("ascii", "replace")
    m = re.search(r"OpenBLAS (\d+)\.(\d+)\.(\d+)", config)
    version = tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
    setter.argtypes = [ctypes.c_void_p]
    setter.restype = None
    return lib, version, config, int(get_parallel()), setter


def blas_on_pool(on=True):
    """Run OpenBLAS's parallel jobs on cygrad's thread pool (``on=True``) or on
    OpenBLAS's own threads (``False``).

    Applies to every OpenBLAS loaded in the process (NumPy's, SciPy's) that offers
    caller-managed threading: version 0.3.27 or later, built with its own pthreads
    server (not OpenMP). Call it again after importing a library that brings
    another OpenBLAS.

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
            lib, version, config, parallel, setter = d
            entry = {"path": path, "version": ".".join(map(str, version)), "on": False}
            if not _parallel.gangs_available():
                entry["why"] = "this cygrad build has no thread pool (serial or OpenMP build)"
            elif version < _MIN_VERSION:
                entry["why"] = f"OpenBLAS {entry['version']} < 0.3.27 has no pthreads callback"
            elif parallel != 1:
                entry["why"] = "not OpenBLAS's pthreads build (openblas_get_parallel() != 1)"
            elif on:
                setter(_parallel._blas_callback_address())
                _handles[path] = lib
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
    if os.environ.get("CYGRAD_BLAS_ON_POOL", "").strip().lower() in ("0", "off", "false", "no"):
        return []
    try:
        return blas_on_pool(True)
    except Exception:       # never fail `import cygrad` over a foreign library
        return []
