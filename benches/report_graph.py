"""Graph-executor overhead in one run: a window-model training step built from
graph ops vs. the same step as direct kernel calls (B in {1, 32, 512}, 1 and 2
threads), and the cost of one tiny op (forward + backward) beside PyTorch eager.

    python benches/report_graph.py
"""

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        subprocess.run([sys.executable, "-m", "pytest", os.path.join(here, "bench_graph.py"),
                        "--benchmark-only", "-q", "-p", "no:cacheprovider",
                        f"--benchmark-json={out}", "--benchmark-min-rounds=10"] + argv,
                       check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            data = json.load(f)
    t = defaultdict(dict)
    for b in data["benchmarks"]:
        t[(b["group"], b["extra_info"]["threads"])][b["extra_info"]["impl"]] = \
            b["stats"]["median"]
    print("| training step | threads | direct µs | graph µs | graph / direct |")
    print("|---|---:|---:|---:|---:|")
    for (g, nt), v in sorted(t.items()):
        if "graph" in v:
            print(f"| {g} | {nt} | {v['direct'] * 1e6:.0f} | {v['graph'] * 1e6:.0f} | "
                  f"{v['graph'] / v['direct']:.2f} |")
    for (g, nt), v in sorted(t.items()):
        if "cygrad" in v:
            line = f"\n{g}: cygrad {v['cygrad'] * 1e6:.1f} µs"
            if "torch" in v:
                line += f", PyTorch eager {v['torch'] * 1e6:.1f} µs"
            print(line + " (two ops: add and sum, then backward)")


if __name__ == "__main__":
    main(sys.argv[1:])
