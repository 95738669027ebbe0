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


def subprocess_env():
    """os.environ for a child Python that must import the cygrad under test, wherever
    this process imported it from (its directory first on PYTHONPATH)."""
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(cygrad.__file__)))]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env
