"""What every report under benches/ shares: the busy process, the peak FLOP rate,
pinning and thread settings, worker processes per thread count, interleaved timing
with medians, and writing the report (printed, and saved under benches/results/).

The reports are scripts (``python benches/report_*.py``): Python puts their folder
first on ``sys.path``, so ``from _harness import Busy`` works from any of them.
"""

import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# -------------------------------------------------------------- the busy loop

# the loop ends by itself when the script that started it is gone
_BUSY = ("import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nparent = os.getppid()\n"
         "while os.getppid() == parent:\n    for _ in range(1000000):\n        pass\n")


class Busy:
    """A CPU-bound process pinned to one core, started and stopped on demand (the
    "busy" machine state of every report)."""

    def __init__(self, core=None):
        self.core = sorted(os.sched_getaffinity(0))[-1] if core is None else core
        self.p = None
        atexit.register(self.stop)

    def start(self):
        if self.p is None:
            self.p = subprocess.Popen([sys.executable, "-c", _BUSY, str(self.core)])
            time.sleep(0.05)

    def stop(self):
        if self.p is not None:
            self.p.kill()
            self.p.wait()
            self.p = None

    def state(self, name):
        """Enter machine state ``name``: "busy" starts the loop, anything else stops it."""
        (self.start if name == "busy" else self.stop)()


# ------------------------------------------------------------ the machine

def peak():
    """cores x clock x FLOP/cycle, from what the machine says of itself: the clock is
    /proc/cpuinfo's (it may be the nominal, not the boost, frequency); FLOP/cycle
    per core assumes two FMA pipes of the widest vector the CPU has (float32)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        mhz = max(float(line.split(":")[1]) for line in info.splitlines()
                  if line.startswith("cpu MHz"))
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
    except (OSError, ValueError, StopIteration):
        return "unknown"
    width = 16 if " avx512f" in flags else 8 if " avx2" in flags else 4   # f32 lanes
    per_cycle = 2 * 2 * width if " fma" in flags else 2 * width
    cores = len(os.sched_getaffinity(0))
    return (f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle (f32) = "
            f"{cores * mhz / 1000 * per_cycle:.0f} GFLOP/s")


def pin_cores(nt):
    """Let this process run on nt cores only: whatever thread pools a library
    starts (XLA's ignores its thread flags in recent JAX), it cannot use more."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > nt:
        os.sched_setaffinity(0, cores[:nt])


def thread_env(nt, base=None):
    """The environment of a worker told to use nt threads: every library's variable
    (OpenMP, OpenBLAS, MKL, XLA), OpenBLAS's workplace overrides dropped (they slow a
    current NumPy)."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OMP_NUM_THREADS=str(nt), OPENBLAS_NUM_THREADS=str(nt), MKL_NUM_THREADS=str(nt),
               XLA_FLAGS=(env.get("XLA_FLAGS", "") +
                          f" --xla_cpu_multi_thread_eigen={'true' if nt > 1 else 'false'}"
                          f" intra_op_parallelism_threads={nt}").strip())
    return env


def run_workers(script, threads, extra_args):
    """Run ``script --worker N --json FILE *extra_args`` in a fresh process for each
    thread count N (:func:`thread_env`); returns the JSON results."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for nt in threads:
            out = os.path.join(tmp, f"t{nt}.json")
            subprocess.run([sys.executable, os.path.abspath(script), "--worker", str(nt),
                            "--json", out, *extra_args], check=True, env=thread_env(nt))
            with open(out) as f:
                results.append(json.load(f))
    return results


# ------------------------------------------------------------ timing

def median(xs):
    return statistics.median(xs)


def interleave(fns, rounds, block=0.1, idle=0.05):
    """{name: [seconds per call, one per round]}; fns: {name: (call, sync)}. Each
    round times every contender for a block of about ``block`` seconds (after an
    untimed call that wakes its threads), in an order rotated from round to round,
    with ``idle`` seconds of sleep between blocks (so that no library's spinning
    threads slow the next one)."""
    per_call = {}
    for name, (call, sync) in fns.items():      # warm-up and block size
        call()
        sync()
        t = time.perf_counter()
        reps = 0
        while time.perf_counter() - t < 0.05 or reps < 3:
            call()
            reps += 1
        sync()
        per_call[name] = (time.perf_counter() - t) / reps
        time.sleep(idle)
    n = {k: max(1, int(block / v)) for k, v in per_call.items()}
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            call, sync = fns[name]
            call()              # untimed: wakes this library's threads after the idle
            sync()
            t = time.perf_counter()
            for _ in range(n[name]):
                call()
            sync()
            times[name].append((time.perf_counter() - t) / n[name])
            time.sleep(idle)
    return times


# ------------------------------------------------------------ the report

def write_report(path, lines):
    """Print the report (a list of lines) and write it to ``path`` (its folder made if
    needed; None: printed only); returns the text."""
    text = "\n".join(lines) + "\n"
    print(text)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return text
