"""Benchmark fixtures: thread count applied to cygrad and to NumPy's BLAS alike."""

import contextlib

import pytest

import cygrad

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl is in the bench extra
    threadpool_limits = None


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def nthreads(request):
    blas = threadpool_limits(request.param) if threadpool_limits else contextlib.nullcontext()
    with cygrad.threads(request.param), blas:
        yield request.param
