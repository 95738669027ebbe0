"""The build and the thread controls tell the truth."""

import os
import pathlib

import numpy as np
import pytest

import cygrad

pytestmark = pytest.mark.installed    # how the installed copy was built


def test_build_info_keys_and_types():
    info = cygrad.build_info()
    for key, typ in [("threaded", bool), ("thread_layer", str), ("max_threads", int),
                     ("compiler", str),
                     ("flags", str), ("cython_version", str), ("debug", bool), ("simd", str),
                     ("version", str), ("openmp", bool)]:
        assert isinstance(info[key], typ), key
    assert info["version"] == cygrad.__version__
    assert "-ffast-math" not in info["flags"]
    if os.environ.get("CYGRAD_NATIVE", "") != "1":
        assert "-march=native" not in info["flags"]
    assert ("-pthread" in info["flags"]) == info["threaded"]
    # the threads are cygrad's own pool, or OpenMP's in the CYGRAD_OPENMP=1 build
    assert ("-fopenmp " in info["flags"] + " ") == info["openmp"]
    assert info["openmp"] == (os.environ.get("CYGRAD_EXPECT_OPENMP", "") == "1")
    assert int(info["cython_version"].split(".")[0]) >= 3


def test_built_with_threads_when_required():
    """CI sets CYGRAD_REQUIRE_THREADS=1 for the build and the tests: a serial build fails here."""
    if os.environ.get("CYGRAD_REQUIRE_THREADS", "") != "1":
        pytest.skip("CYGRAD_REQUIRE_THREADS is not set")
    info = cygrad.build_info()
    assert info["threaded"], info


def test_the_openmp_build_runs_loops_on_openmp_teams():
    """CI's OpenMP step (CYGRAD_OPENMP=1, CYGRAD_EXPECT_OPENMP=1): its loops run on
    OpenMP teams (counted by the pool's stats) and give the pool's bits."""
    if os.environ.get("CYGRAD_EXPECT_OPENMP", "") != "1":
        pytest.skip("CYGRAD_EXPECT_OPENMP is not set")
    from cygrad import kernels as K
    from cygrad.kernels import _parallel
    assert _parallel.openmp() and "OpenMP" in cygrad.build_info()["thread_layer"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((700, 300)).astype(np.float32)
    b = rng.standard_normal((300, 500)).astype(np.float32)
    _parallel.stats(reset=True)
    with cygrad.threads(2):
        two = K.matmul(a, b)
    assert _parallel.stats()["loops"] >= 1
    with cygrad.threads(1):
        np.testing.assert_array_equal(K.matmul(a, b), two)


def test_debug_flag_matches_environment():
    if "CYGRAD_EXPECT_DEBUG" not in os.environ:
        pytest.skip("CYGRAD_EXPECT_DEBUG is not set")
    assert cygrad.build_info()["debug"] == (os.environ["CYGRAD_EXPECT_DEBUG"] == "1")


def test_sanitizer_flag_matches_environment():
    """CI's sanitizer step sets CYGRAD_EXPECT_SANITIZE=1: the build it tests must be one."""
    if "CYGRAD_EXPECT_SANITIZE" not in os.environ:
        pytest.skip("CYGRAD_EXPECT_SANITIZE is not set")
    flags = cygrad.build_info()["flags"]
    assert ("-fsanitize=address,undefined" in flags) == (
        os.environ["CYGRAD_EXPECT_SANITIZE"] == "1"), flags


def test_installed_package_is_tested():
    """The tests must exercise the built extension, not a source checkout."""
    pkg = pathlib.Path(cygrad.__file__).resolve().parent
    assert any(pkg.glob("kernels/_gemm*.so")) or any(pkg.glob("kernels/_gemm*.pyd"))


def test_thread_controls():
    n0 = cygrad.get_num_threads()
    assert n0 >= 1
    with cygrad.threads(1) as n:
        assert n == 1 and cygrad.get_num_threads() == 1
        with cygrad.threads(3):
            assert cygrad.get_num_threads() == 3
        assert cygrad.get_num_threads() == 1
    assert cygrad.get_num_threads() == n0
    cygrad.set_num_threads(2)
    try:
        assert cygrad.get_num_threads() == 2
    finally:
        cygrad.set_num_threads(n0)
    for bad in (0, -1, 1.5, "2", True, None):
        with pytest.raises(ValueError, match=r"int in \[1, 256\]"):
            cygrad.set_num_threads(bad)
        with pytest.raises(ValueError, match=r"int in \[1, 256\]"):
            with cygrad.threads(bad):
                pass


def test_default_threads_follow_omp_num_threads(monkeypatch):
    from cygrad import _config

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _config._default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")
    assert _config._default_threads() == 4
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _config._default_threads() == len(os.sched_getaffinity(0))


def test_more_threads_than_cores_still_correct(rng):
    a = rng.standard_normal((200, 300))
    b = rng.standard_normal((300, 100))
    with cygrad.threads(7):
        c = cygrad.kernels.matmul(a, b)
        t = cygrad.kernels.tanh(a.reshape(-1))
    np.testing.assert_allclose(c, a @ b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t, np.tanh(a.reshape(-1)), rtol=1e-13)
