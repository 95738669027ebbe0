"""Fixtures the kernels' tests share."""

import pytest

from cygrad.kernels import _parallel


@pytest.fixture
def forced_helpers():
    """Every loop large enough to split wakes the helpers (no fallback to one
    thread), so that the threaded path is the one tested even on a busy host."""
    _parallel.set_adaptive(False)
    try:
        yield
    finally:
        _parallel.set_adaptive(True)
