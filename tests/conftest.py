"""Shared fixtures. The tests import the *installed* cygrad (src/ layout: the
source tree is not importable as a package), so they check what pip built."""

import os
import tempfile

import numpy as np
import pytest

import cygrad
from helpers import DTYPES

# parsed word vectors are cached under CYGRAD_CACHE (cygrad.ner.vectors): not in the
# home directory of whoever runs the tests (subprocesses inherit it)
os.environ.setdefault("CYGRAD_CACHE", tempfile.mkdtemp(prefix="cygrad-test-cache-"))


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def nthreads(request, monkeypatch):
    # compiled steps of any size run on the pool here (their MIN_WORK would keep the
    # tests' small models on one thread)
    from cygrad.compiler import runtime
    monkeypatch.setattr(runtime, "MIN_WORK", 0)
    with cygrad.threads(request.param):
        yield request.param


@pytest.fixture
def threaded_plans(monkeypatch):
    """Compiled steps of any size use the thread pool (MIN_WORK 0)."""
    from cygrad.compiler import runtime
    monkeypatch.setattr(runtime, "MIN_WORK", 0)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
