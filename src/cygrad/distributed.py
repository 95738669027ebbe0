"""Data-parallel training over MPI (through mpi4py): every rank holds the whole
model, computes the gradients of its share of the global batch, and the ranks
average those gradients before each update, so that every rank applies the same
update and the parameters stay identical.

Run a script on several processes with MPI's launcher::

    mpiexec -n 2 python train.py

where ``train.py`` does::

    import cygrad as cg
    from cygrad import distributed as dist

    rank, size = dist.init()                        # threads: cores / ranks per host
    dist.broadcast_parameters(model.parameters())   # rank 0's initial values everywhere
    opt = dist.DistributedOptimizer(cg.optim.Adam(model.parameters(), lr=1e-3))
    for xb, yb in my_shard_of_each_global_batch:    # rank r: rows r::size, say
        opt.zero_grad()
        cg.softmax_cross_entropy(model(cg.tensor(xb)), yb).backward()
        opt.step()                                  # averaged gradients, then Adam

Each rank's loss is the mean over its share; the average of the ranks' gradients
is then the gradient of the mean over the global batch of ``size`` shares, as one
process would compute it (to rounding). Dense gradients travel in one fused buffer
per dtype and step (one in-place ``Allreduce``); row-sparse embedding gradients
(``sparse=True``) as (row ids, rows) gathered from every rank with ``Allgatherv`` and
applied in rank order, so every rank sums the duplicates in the same order and
applies bitwise the same update. A compiled step (:func:`cygrad.compile`) takes a
``DistributedOptimizer`` like any optimiser: its plan leaves the gradients in its
workspace (gradient mode; an embedding table's as row ids and rows), and the
wrapper averages them before the update.

Only this module needs mpi4py (``pip install "cygrad[mpi]"``: mpi4py and the
MPICH wheel); ``import cygrad`` does not.
"""

import hashlib
import os
import sys
import time

import numpy as np

from cygrad import _config
from cygrad.graph.ops import SparseRows
from cygrad.optim import _Optimizer

__all__ = ["init", "rank", "size", "broadcast_parameters", "DistributedOptimizer",
           "allreduce_gradients", "parameters_digest", "check_identical", "abort_on_error"]

_state = {"comm": None}


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("cygrad.distributed needs mpi4py and an MPI library: "
                          "pip install \"cygrad[mpi]\" (mpi4py and the mpich wheel)") from e
    return MPI


def _comm(comm=None):
    if comm is not None:
        return comm
    if _state["comm"] is None:
        _state["comm"] = _mpi().COMM_WORLD
    return _state["comm"]


def init(threads=None, comm=None, abort=True):
    """Join the MPI job; returns ``(rank, size)``.

    Parameters
    ----------
    threads : int or None
        Kernel threads of this rank (:func:`cygrad.set_num_threads`). None: the
        cores this process may use divided by the ranks on this host (at least 1),
        so that ranks x threads does not exceed the cores.
    comm : mpi4py communicator or None
        The ranks taking part (default ``MPI.COMM_WORLD``).
    abort : bool
        Install :func:`abort_on_error`: an exception that ends this rank's program
        aborts the whole job (instead of leaving the other ranks waiting forever in
        a collective call).
    """
    comm = _comm(comm)
    _state["comm"] = comm
    if threads is None:
        MPI = _mpi()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        threads = max(1, cores // max(1, local))
    _config.set_num_threads(int(threads))
    if abort:
        abort_on_error(comm)
    return comm.Get_rank(), comm.Get_size()


def rank(comm=None):
    """This process's rank (0 when mpi4py is absent or only one process runs)."""
    return _comm(comm).Get_rank()


def size(comm=None):
    return _comm(comm).Get_size()


def abort_on_error(comm=None):
    """Make an uncaught exception on this rank abort every rank of the job
    (``MPI_Abort``), after printing its traceback with the rank's number: a rank
    that dies then ends the job within moments instead of hanging it."""
    comm = _comm(comm)
    previous = sys.excepthook
    if getattr(previous, "_cygrad_abort", False):
        return

    def hook(kind, value, tb):
        # the error itself in the first line, one write: MPI_Abort may end the job before
        # mpiexec has forwarded the rest of the rank's output (the traceback after it)
        sys.stderr.write(f"cygrad.distributed: rank {comm.Get_rank()} of {comm.Get_size()} "
                         f"failed ({kind.__name__}: {value}); aborting the job\n")
        sys.stderr.flush()
        previous(kind, value, tb)
        sys.stderr.flush()
        time.sleep(0.2)         # a moment for the output to be forwarded
        comm.Abort(1)

    hook._cygrad_abort = True
    sys.excepthook = hook


def broadcast_parameters(params, root=0, comm=None):
    """Give every rank the root's values of ``params`` (tensors or NumPy arrays, in
    place; one ``Bcast`` of a fused buffer per dtype). Call it once after building
    the model (and for optimiser state, on resuming)."""
    comm = _comm(comm)
    arrays = [p if isinstance(p, np.ndarray) else p.data for p in params]
    for group in _by_dtype(arrays):
        buf = np.concatenate([a.reshape(-1) for a in group])
        comm.Bcast(buf, root=root)
        off = 0
        for a in group:
            np.copyto(a, buf[off:off + a.size].reshape(a.shape))
            off += a.size


def _by_dtype(arrays):
    groups = {}
    for a in arrays:
        groups.setdefault(a.dtype.str, []).append(a)
    return [groups[k] for k in sorted(groups)]


def _kinds(params):
    return np.array([0 if p.grad is None else 2 if isinstance(p.grad, SparseRows) else 1
                     for p in params], dtype=np.int8)


def allreduce_gradients(params, comm=None, average=True, weight=None, _exchange=None):
    """Replace each parameter's gradient by the sum (``average``: the mean) of that
    gradient over the ranks, in place of ``p.grad``.

    ``weight``: this rank's number of examples behind its gradient (a mean over
    them); the ranks' gradients are then combined as sum_r w_r g_r / sum_r w_r, the
    gradient of the mean over all the ranks' examples even when the shares differ
    (the last batch of an epoch, sentences of different lengths). None: every rank
    weighs the same.

    A parameter may have a gradient on some ranks and none (zero) on others, as
    when a rank's share held nothing to learn from; the kinds (dense, row-sparse)
    must agree where present, else every rank raises the same ValueError. Dense
    gradients go in one fused buffer per dtype through one in-place ``Allreduce``;
    row-sparse ones become the concatenation, in rank order, of every rank's (rows,
    values) (``Allgatherv``), which the optimisers' sparse kernels sum row by row in
    that order: the same bits on every rank.

    (``_exchange``: a :class:`DistributedOptimizer`'s persistent buffers: the dense
    gradients are copied into buffers kept from step to step, ``p.grad`` becomes a view
    of them until the next exchange, and the kinds are checked by counts riding on
    the first exchange instead of a separate ``Allgather``.)
    """
    comm = _comm(comm)
    MPI = _mpi()
    params = list(params)
    w = 1.0 if weight is None else float(weight)
    if not (np.isfinite(w) and w >= 0):
        raise ValueError(f"allreduce_gradients: weight must be a number >= 0, got {weight!r}")
    kinds = _kinds(params)
    ex = _exchange
    if ex is not None and ex.layout is not None and len(ex.layout) == len(params):
        done = _exchange_dense(params, kinds, ex.layout, w, weight is not None, average,
                               comm, MPI, ex)
        if done is not None:
            _exchange_sparse(params, ex.layout, w, weight is not None, average, done,
                             comm, MPI)
            return
        ex.layout = None        # another layout this step (all ranks saw the same counts)
    n = comm.Get_size()
    everyone = np.empty((n, len(params)), dtype=np.int8)
    comm.Allgather(kinds, everyone)
    agreed = everyone.max(axis=0) if len(params) else kinds
    clash = (everyone != 0) & (everyone != agreed)
    if clash.any():
        r, i = np.argwhere(clash)[0]
        names = {1: "a dense gradient", 2: "a row-sparse gradient"}
        raise ValueError(f"allreduce_gradients: parameter {i} has {names[everyone[r, i]]} on "
                         f"rank {r} but {names[agreed[i]]} elsewhere: every rank must "
                         f"backpropagate the same graph")
    # (fresh buffers: a gradient may still be a view of the kept ones, at another place)
    total = _exchange_dense(params, kinds, agreed, w, weight is not None, average, comm, MPI,
                            None, counts=False)
    _exchange_sparse(params, agreed, w, weight is not None, average, total, comm, MPI)
    if ex is not None:
        ex.layout = agreed


class _Exchange:
    """A DistributedOptimizer's persistent exchange state: the kinds of the last
    exchange (the layout the next one assumes) and one buffer per dtype."""

    def __init__(self):
        self.layout = None
        self.bufs = {}

    def buffer(self, key, dtype, n):
        b = self.bufs.get(key)
        if b is None or b.shape[0] != n or b.dtype != dtype:
            b = self.bufs[key] = np.empty(n, dtype)
        return b


def _exchange_dense(params, kinds, agreed, w, scale, average, comm, MPI, ex, counts=True):
    """The dense gradients' exchange (one in-place Allreduce per dtype); returns the sum
    of the ranks' weights (None if there were no dense gradients and no counts). With
    ``counts`` (the layout ``agreed`` assumed from the last step), each parameter's
    number of ranks with a dense and with a row-sparse gradient ride on the first
    buffer: None is returned if the kinds differ from the layout (nothing was set),
    and every rank raises the same ValueError where they clash."""
    P = len(params)
    groups = {}
    for p, k in zip(params, agreed):
        if k == 1:
            groups.setdefault(p.dtype.str, []).append(p)
    keys = sorted(groups)
    if counts and not keys:
        keys = [None]           # the counts and the weight alone, in float64
    total = None
    reduced = []
    for gi, key in enumerate(keys):
        owners = groups.get(key, [])
        dtype = np.dtype(key) if key is not None else np.dtype(np.float64)
        size = sum(p.size for p in owners)
        extra = 1 + (2 * P if counts and gi == 0 else 0)
        n = size + extra
        buf = ex.buffer(key, dtype, n) if ex is not None else np.empty(n, dtype)
        off = 0
        for p in owners:
            g = p.grad
            dst = buf[off:off + p.size]
            if g is None or isinstance(g, SparseRows):      # (a clash: caught by the counts)
                dst[...] = 0
            else:
                np.copyto(dst, np.asarray(g, dtype=p.dtype).reshape(-1), casting="unsafe")
            off += p.size
        if scale:
            buf[:size] *= buf.dtype.type(w)
        buf[size] = w
        if extra > 1:
            buf[size + 1:size + 1 + P] = kinds == 1
            buf[size + 1 + P:] = kinds == 2
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        if total is None:
            total = float(buf[size])
        if extra > 1:
            dense_n, sparse_n = buf[size + 1:size + 1 + P], buf[size + 1 + P:]
            clash = (dense_n > 0) & (sparse_n > 0)
            if clash.any():
                i = int(np.argmax(clash))
                raise ValueError(f"allreduce_gradients: parameter {i} has a dense gradient on "
                                 f"{int(dense_n[i])} rank(s) but a row-sparse gradient on "
                                 f"{int(sparse_n[i])}: every rank must backpropagate the same "
                                 f"graph")
            now = np.where(sparse_n > 0, 2, np.where(dense_n > 0, 1, 0)).astype(np.int8)
            if not np.array_equal(now, agreed):
                return None
        reduced.append((owners, buf, size))
    for owners, buf, size in reduced:
        if average and total > 0:
            buf[:size] /= buf.dtype.type(total)
        off = 0
        for p in owners:
            p.grad = buf[off:off + p.size].reshape(p.shape)
            off += p.size
    return total


def _exchange_sparse(params, agreed, w, scale, average, total, comm, MPI):
    """The row-sparse gradients: every rank's (rows, values), in rank order."""
    n = comm.Get_size()
    for p, k in zip(params, agreed):
        if k != 2:
            continue
        if total is None:
            total = comm.allreduce(w, op=MPI.SUM)
        g = p.grad
        d = int(np.prod(p.shape[1:]))
        if g is None:
            idx, rows = np.zeros(0, np.int64), np.zeros((0, d), p.dtype)
        else:
            idx = np.ascontiguousarray(g.indices.reshape(-1), dtype=np.int64)
            rows = np.array(g.rows, dtype=p.dtype).reshape(len(idx), d)
            if scale:
                rows *= rows.dtype.type(w)
        counts = np.empty(n, dtype=np.int64)        # a buffer exchange, not a pickled one
        comm.Allgather(np.array([len(idx)], dtype=np.int64), counts)
        all_idx = np.empty(int(counts.sum()), dtype=np.int64)
        comm.Allgatherv(idx, [all_idx, counts])
        all_rows = np.empty((int(counts.sum()), d), dtype=p.dtype)
        comm.Allgatherv(rows, [all_rows, counts * d])
        if average and total > 0:
            all_rows /= all_rows.dtype.type(total)
        p.grad = SparseRows(all_idx, all_rows, p.shape)


class DistributedOptimizer(_Optimizer):
    """An optimiser whose ``step()`` first averages the gradients over the ranks
    (:func:`allreduce_gradients`), then runs the wrapped optimiser's step. The
    learning rate, schedules and ``state_dict()`` are the wrapped optimiser's."""

    def __init__(self, optimizer, comm=None, average=True):
        self.weight = None          # this rank's examples behind the next step's gradient
        if not isinstance(optimizer, _Optimizer):
            raise TypeError(f"DistributedOptimizer: optimizer must be a cygrad optimiser, got "
                            f"{type(optimizer).__name__}")
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError("DistributedOptimizer: the optimiser is already distributed")
        self.optimizer = optimizer
        self.params = optimizer.params
        self.comm = _comm(comm)
        self.average = average
        self._exchange = _Exchange()     # persistent buffers of the gradient exchange

    @property
    def lr(self):
        return self.optimizer.lr

    @lr.setter
    def lr(self, lr):
        self.optimizer.lr = lr

    def step(self):
        """Average the gradients over the ranks (weighted by ``self.weight``, this
        rank's examples, when set), then the wrapped optimiser's step. Every rank
        must call it at every step, a rank without gradients included."""
        self.exchange()
        self.optimizer.step()

    def exchange(self):
        """The gradient exchange of :meth:`step` alone (:func:`allreduce_gradients`
        with buffers kept from step to step: ``p.grad`` is then a view of them until
        the next exchange, as PyTorch DDP's ``gradient_as_bucket_view``)."""
        allreduce_gradients(self.params, self.comm, self.average, self.weight,
                            _exchange=self._exchange)

    step._keeps_no_grads = True     # a compiled step may lend it its workspace's gradients

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)

    def __getattr__(self, name):        # the wrapped optimiser's state (exp_avg, steps, ...)
        if name == "optimizer":
            raise AttributeError(name)
        return getattr(self.optimizer, name)


def parameters_digest(params):
    """SHA-256 of the parameters' bytes, in order (equal digests: identical values)."""
    h = hashlib.sha256()
    for p in params:
        a = np.ascontiguousarray(p.data if hasattr(p, "data") else p)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_identical(params, comm=None):
    """Raise RuntimeError on every rank unless all ranks hold bitwise the same
    parameters (compares :func:`parameters_digest`; one small ``allgather``)."""
    comm = _comm(comm)
    digests = comm.allgather(parameters_digest(params))
    if len(set(digests)) > 1:
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(f"cygrad.distributed: the parameters of rank(s) {bad} differ from "
                           f"rank 0's")
    return digests[0]
