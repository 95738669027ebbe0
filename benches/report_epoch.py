"""Seconds per `cygrad train` epoch on CoNLL-2003: the current defaults compiled
(cygrad.compile, the default) and on the eager graph (--no-compile), and the
previous defaults, at the default thread count and at one thread, idle and beside
a busy loop, interleaved round by round; with the number of plans the compiled
step built over the epoch.

    python benches/report_epoch.py [--rounds 3] [--conll ../shared/data/conll2003]

Each run is `cygrad train --train train.txt --epochs 1` (no dev set), timed by the
epoch line it prints (the epoch alone: no start-up, no data loading).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _harness import Busy, write_report  # noqa: E402  (benches/_harness.py)

# the defaults before issue 14 (a per-token softmax over windows of 64)
PREVIOUS = ["--loss", "softmax", "--prefix-dim", "0", "--shape-dim", "0", "--dropout", "0",
            "--word-dropout", "0", "--batch-size", "64", "--lr", "0.03", "--no-average-params",
            "--doc-context", "0"]
CONFIGS = {"defaults": [], "defaults --no-compile": ["--no-compile"],
           "previous defaults": PREVIOUS,
           # a narrower hidden layer (#28: the first layer's products are most of an epoch)
           "defaults --hidden 200": ["--hidden", "200"]}


def epoch_seconds(data, args, threads):
    cmd = [sys.executable, "-m", "cygrad", "train", "--train", os.path.join(data, "train.txt"),
           "--epochs", "1", "--no-progress"] + args
    if threads:
        cmd += ["--threads", str(threads)]
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run(cmd + ["--out", os.path.join(out, "m")], capture_output=True,
                           text=True, check=True)
    m = re.search(r"epoch\s+1\s+loss\s+\S+\s+([\d.]+)s(?:\s+\((\d+) plans)?", r.stdout)
    if not m:
        raise RuntimeError(f"no epoch line in: {r.stdout[-500:]}")
    PLANS.setdefault(tuple(args), set()).add(m.group(2) or "-")
    return float(m.group(1))


PLANS = {}


VECTORS = "defaults --vectors glove-6b-50d"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conll", default=os.environ.get("CYGRAD_CONLL_DIR", os.path.join(
        HERE, "..", "..", "shared", "data", "conll2003")))
    ap.add_argument("--loads", nargs="+", default=["idle", "busy"])
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS) + [VECTORS],
                    default=list(CONFIGS),
                    help=f"which to run ({VECTORS!r}: the defaults with GloVe, needs the "
                         f"vectors extra)")
    ap.add_argument("--out")
    a = ap.parse_args()
    configs = {name: CONFIGS.get(name, ["--vectors", "glove-6b-50d"]) for name in a.configs}
    cores = sorted(os.sched_getaffinity(0))
    busy = Busy(cores[-1])
    times = {}
    try:
        for r in range(a.rounds):
            for load in a.loads:
                busy.start() if load == "busy" else busy.stop()
                for name, args in configs.items():
                    for nt in (None, 1):
                        times.setdefault((load, name, nt), []).append(
                            epoch_seconds(a.conll, args, nt))
            print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    finally:
        busy.stop()
    lines = ["# `cygrad train` epoch on CoNLL-2003: the defaults compiled and eager, and the "
             "previous defaults", "",
             f"`python benches/report_epoch.py {' '.join(sys.argv[1:])}`: {len(cores)} cores, "
             f"{time.strftime('%Y-%m-%d %H:%M')}; busy: a CPU-bound loop pinned to core "
             f"{cores[-1]}. Seconds per epoch as `cygrad train` prints it, median [min-max] "
             f"of {a.rounds} interleaved rounds.", "",
             f"Previous defaults: `{' '.join(PREVIOUS)}`.", "",
             "| configuration | load | default threads | --threads 1 |", "|---|---|---:|---:|"]

    def cell(v):
        return f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"
    for name in configs:
        for load in a.loads:
            lines.append(f"| {name} | {load} | {cell(times[load, name, None])} "
                         f"| {cell(times[load, name, 1])} |")
    lines += ["", "Plans the compiled step built over the epoch: " + "; ".join(
        f"{name}: {', '.join(sorted(PLANS.get(tuple(args), {'-'})))}"
        for name, args in configs.items()) + " (- : the eager graph)."]
    write_report(a.out, lines)


if __name__ == "__main__":
    main()
