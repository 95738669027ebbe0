"""Differential fuzzing of every kernel against the NumPy reference, in a child
process (tests/kernels/fuzz_kernels.py): valid inputs in every layout must give the
reference's answer, invalid ones a clear error that names them and changes
nothing; a crash or a hang fails here with the input that caused it.

Bounded by default (a fixed number of examples per case); CYGRAD_FUZZ_SECONDS=S
keeps drawing new rounds for S seconds (CI sets it)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow     # the kernel fuzzer and the reproducers, in child processes

HERE = pathlib.Path(__file__).parent


def test_kernels_against_reference_in_a_child_process(tmp_path):
    seconds = float(os.environ.get("CYGRAD_FUZZ_SECONDS", "0") or 0)
    log = tmp_path / "fuzz.log"
    cmd = [sys.executable, str(HERE / "fuzz_kernels.py"), "--log", str(log),
           "--examples", "60", "--seconds", str(seconds)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600 + 2 * seconds)
    except subprocess.TimeoutExpired:
        last = log.read_text().splitlines()[-1:] if log.exists() else []
        raise AssertionError(f"the fuzzer hung; last case: {last}") from None
    last = log.read_text().splitlines()[-1:] if log.exists() else []
    assert proc.returncode >= 0, f"the fuzzer crashed (signal {-proc.returncode}) on {last}"
    assert proc.returncode == 0, proc.stdout + proc.stderr[-6000:]
    counts = json.loads(proc.stdout.splitlines()[-1])
    assert counts["failures"] == 0
    # both kinds of case were drawn, many times
    assert counts["valid"] >= 200 and counts["clean_errors"] >= 20, counts


def test_the_issues_reproducers_fail_cleanly_or_work():
    """tests/kernels/probe_robustness.py: every reproducer class of issue 13 (threads, aliasing
    and mutated index arrays, byte order, overlap, graph misuse, malformed model and
    checkpoint files, CLI calls, fork), each in its own process: 0 crashes, hangs and
    wrong answers."""
    proc = subprocess.run([sys.executable, str(HERE / "probe_robustness.py")],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    counts = json.loads(proc.stdout.splitlines()[-1])
    assert counts["cases"] >= 40 and counts.get("clean error", 0) >= 25, counts
