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


def train_steps(params, loss_fn, opt, batches, compiled, threads=1, events=None, strict=True):
    """Train ``params`` over ``batches`` with ``opt``: eagerly (zero_grad, backward,
    step) or through ``cygrad.compile(loss_fn, strict=True)``; ``events`` maps a step
    number to a function of (params, opt) applied before that step. Returns the
    losses, copies of the parameters and the compiled step (None eagerly)."""
    step = cygrad.compile(loss_fn, optimizer=opt, strict=strict, threads=threads) \
        if compiled else None
    losses = []
    for k, bt in enumerate(batches):
        if events and k in events:
            events[k](params, opt)
        if compiled:
            losses.append(step(*bt))
        else:
            opt.zero_grad()
            loss = loss_fn(*bt)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, [p.data.copy() for p in params], step


def assert_eager_and_thread_counts(eager, runs, thread_counts, tol):
    """``runs`` (train_steps results at ``thread_counts``) equal ``eager`` to ``tol``
    and each other bit for bit."""
    le, pe, _ = eager
    lc, pc, _ = runs[0]
    np.testing.assert_allclose(lc, le, **tol)
    for i, (a, b) in enumerate(zip(pc, pe)):
        np.testing.assert_allclose(a, b, err_msg=f"parameter {i}", **tol)
    for nt, (l_n, p_n, _) in zip(thread_counts[1:], runs[1:]):
        assert l_n == lc, f"losses at {nt} threads"
        for i, (a, b) in enumerate(zip(p_n, pc)):
            np.testing.assert_array_equal(a, b, err_msg=f"parameter {i} at {nt} threads")
