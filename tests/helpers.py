"""Helpers shared by the test modules (imported as ``helpers``: pytest puts
tests/ on sys.path; the package itself comes from site-packages)."""

import numpy as np

import cygrad

DTYPES = [np.float32, np.float64]

#: Elementwise tolerances, per dtype: the kernels compute in double and round
#: once; NumPy's float32 transcendental functions are within a few ulp.
TOL = {
    np.float32: dict(rtol=2e-6, atol=1e-7),
    np.float64: dict(rtol=1e-13, atol=1e-15),
}

def readonly(a):
    a = np.array(a)
    a.setflags(write=False)
    return a

def run_with_threads(n, fn, *args, **kw):
    with cygrad.threads(n):
        return fn(*args, **kw)


def in_python_threads(work, n=4):
    """Run ``work()`` in n Python threads at once; the exceptions they raised, in order."""
    return run_at_once([work] * n)[0]


def run_at_once(fns, timeout=None):
    """Run each of ``fns`` in its own Python thread, all at once; (the exceptions they
    raised, in order; whether a thread was still running after ``timeout`` seconds:
    a hang, reported instead of hanging the test run, as the threads are daemons)."""
    import threading
    errors = []

    def run(fn):
        try:
            fn()
        except Exception as e:      # reported by the caller
            errors.append(e)
    threads = [threading.Thread(target=run, args=(fn,), daemon=True) for fn in fns]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    return errors, any(th.is_alive() for th in threads)


def subprocess_env():
    """os.environ for a child Python that must import the cygrad under test, wherever
    this process imported it from (its directory first on PYTHONPATH)."""
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(cygrad.__file__)))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


class FakeComm:
    """Just enough of an MPI communicator for the NER trainer's batch sharding and a
    rank's share of the draws (rank and size; no MPI calls)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size
