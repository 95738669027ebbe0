"""The training runs of tests/distributed/test_distributed.py, as one process or as an MPI job.

    mpiexec -n 2 python tests/distributed/mpi_worker.py train OPT DTYPE MODE STEPS OUT
    mpiexec -n 2 python tests/distributed/mpi_worker.py die

``train``: the window model (a sparse embedding table over a small vocabulary, so
that the ranks' batches share rows) or, for MODE "compiled", a dense MLP through
cygrad.compile; every step's global batch of 64 is split into contiguous shares
by rank. Rank 0 writes the final parameters to OUT (.npz). ``die``: rank 1 raises
in its third step while rank 0 goes on into the gradient exchange.
"""

import sys

import numpy as np

import cygrad as cg
from cygrad import nn, optim

GLOBAL_BATCH = 64
V, D, W, H, C = 40, 6, 3, 12, 4


def _optimizer(name, params):
    if name == "sgd":
        return optim.SGD(params, lr=0.1)
    if name == "adagrad":
        return optim.Adagrad(params, lr=0.1)
    if name == "adam":
        return optim.Adam(params, lr=0.01)
    raise ValueError(name)


def batches(steps, seed=5):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        windows = rng.integers(0, 25, (GLOBAL_BATCH, W))       # rows shared across shares
        labels = rng.integers(0, C, GLOBAL_BATCH)
        x = rng.standard_normal((GLOBAL_BATCH, 10))
        yield windows, labels, x


def train(opt_name, dtype, mode, steps, rank=0, size=1, wrap=None):
    """Parameters after ``steps`` steps on this rank's share of every global batch;
    ``wrap(opt)`` makes the optimiser distributed."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(1)
    share = GLOBAL_BATCH // size
    lo, hi = rank * share, (rank + 1) * share
    if mode == "compiled":
        model = nn.Sequential(nn.Linear(10, 16, dtype=dtype, generator=2), nn.Tanh(),
                              nn.Linear(16, C, dtype=dtype, generator=3))
        params = list(model.parameters())
        opt = _optimizer(opt_name, params)
        opt = wrap(opt) if wrap else opt
        step = cg.compile(lambda x, y: cg.softmax_cross_entropy(model(x), y), optimizer=opt,
                          strict=True)
        for _, labels, x in batches(steps):
            step(np.ascontiguousarray(x[lo:hi], dtype=dtype), labels[lo:hi])
        return params
    params = [cg.tensor(rng.normal(0, 0.3, s).astype(dtype), requires_grad=True)
              for s in ((V, D), (H, W * D), (H,), (C, H), (C,))]
    E, Wt, b, U, c = params
    opt = _optimizer(opt_name, params)
    opt = wrap(opt) if wrap else opt

    def loss_fn(windows, labels):
        x = cg.embedding_windows(E, windows, sparse=True)
        return cg.softmax_cross_entropy(cg.linear(cg.tanh(cg.linear(x, Wt, b)), U, c), labels)
    if mode == "compiled-table":      # the window model compiled (gradient mode if wrapped)
        step = cg.compile(loss_fn, optimizer=opt, strict=True)
        for windows, labels, _ in batches(steps):
            step(np.ascontiguousarray(windows[lo:hi]), labels[lo:hi])
        return params
    if mode == "uneven":    # shares of 40 and 24 windows, and a step where rank 1 has none
        for k, (windows, labels, _) in enumerate(batches(steps)):
            n = 40 if k == 2 else GLOBAL_BATCH
            a, z = ((0, 40), (40, n))[rank] if size == 2 else (0, n)
            opt.zero_grad()
            if z > a:
                loss_fn(windows[a:z], labels[a:z]).backward()
            if wrap:
                opt.weight = z - a
            opt.step()
        return params
    for windows, labels, _ in batches(steps):
        opt.zero_grad()
        x = cg.embedding_windows(E, windows[lo:hi], sparse=True)
        h = cg.tanh(cg.linear(x, Wt, b))
        cg.softmax_cross_entropy(cg.linear(h, U, c), labels[lo:hi]).backward()
        opt.step()
    return params


def kinds_changing(rank, size, out):
    """DistributedOptimizer.exchange over steps whose gradient kinds change: dense
    everywhere; missing on one rank; row-sparse everywhere; dense again; each against
    the mean computed here from every rank's known gradient; then a clash (dense on
    rank 0, row-sparse on the others), which every rank must refuse by name. Rank 0
    writes "ok" or the first failure to OUT."""
    from cygrad import distributed as dist
    from cygrad.graph import SparseRows
    a = cg.tensor(np.zeros((5, 3)), requires_grad=True)
    b = cg.tensor(np.zeros(4, np.float32), requires_grad=True)
    opt = dist.DistributedOptimizer(optim.SGD([a, b], lr=0.1))

    def dense(r, k):
        return np.arange(15.0).reshape(5, 3) * (r + 1) + k

    errors = []
    for k, kind in enumerate(["dense", "dense", "missing", "sparse", "dense", "dense"]):
        b.grad = np.full(4, k + 1.0, np.float32)
        want = np.sum([dense(r, k) for r in range(kind == "missing", size)], axis=0) / size
        if kind == "dense" or (kind == "missing" and rank > 0):
            a.grad = dense(rank, k)
        elif kind == "missing":
            a.grad = None
        else:
            a.grad = SparseRows(np.array([rank % 5, 2]), np.ones((2, 3)) * (rank + 1), (5, 3))
        opt.exchange()
        if k in (1, 5) and not any(np.shares_memory(a.grad, kept)
                                   for kept in opt._exchange.bufs.values()):
            errors.append(f"step {k}: the exchange did not use the kept buffers")
        if kind == "sparse":
            got = np.zeros((5, 3))
            np.add.at(got, a.grad.indices, a.grad.rows)
            want = np.zeros((5, 3))
            for r in range(size):
                np.add.at(want, [r % 5, 2], np.ones((2, 3)) * (r + 1) / size)
        else:
            got = a.grad
        if not np.allclose(got, want, rtol=1e-12) or not np.allclose(b.grad, k + 1.0):
            errors.append(f"step {k} ({kind}): {got} != {want}")
    a.grad = dense(rank, 0) if rank == 0 else SparseRows(np.array([1]), np.ones((1, 3)),
                                                            (5, 3))
    try:
        opt.exchange()
        errors.append("a clash of gradient kinds was not refused")
    except ValueError as e:
        if "parameter 0" not in str(e):
            errors.append(f"the clash was refused without naming the parameter: {e}")
    if rank == 0:
        with open(out, "w") as f:
            f.write("; ".join(errors) or "ok")


def main(argv):
    from cygrad import distributed as dist
    rank, size = dist.init(threads=1)
    if argv[0] == "die":
        params = [cg.tensor(np.ones((4, 3)), requires_grad=True)]
        opt = dist.DistributedOptimizer(optim.SGD(params, lr=0.1))
        for i in range(10):
            opt.zero_grad()
            if rank == 1 and i == 2:
                raise RuntimeError("rank 1 fails on purpose")
            (params[0] * 2.0).sum().backward()
            opt.step()
        return
    if argv[0] == "kinds":
        kinds_changing(rank, size, argv[1])
        return
    _, opt_name, dtype, mode, steps, out = argv
    params = train(opt_name, dtype, mode, int(steps), rank, size, dist.DistributedOptimizer)
    digest = dist.check_identical(params)       # every rank: the same bits
    if rank == 0:
        np.savez(out, *[p.data for p in params], digest=np.array(digest))


if __name__ == "__main__":
    main(sys.argv[1:])
