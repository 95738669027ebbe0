"""Run the kernel benchmarks once and print, per group and thread count, the
ratio numpy_time / cygrad_time (> 1: cygrad is faster), from one run.

    python benches/report_kernels.py [extra pytest args, e.g. -k softmax]
"""

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

from _harness import peak  # noqa: E402  (benches/_harness.py: shared by the reports)


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [sys.executable, "-m", "pytest", here, "--benchmark-only", "-q",
               "-p", "no:cacheprovider", f"--benchmark-json={out}",
               "--benchmark-min-rounds=5", "--benchmark-max-time=0.25",
               "--benchmark-warmup=on"] + argv
        # This workplace sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for old OpenBLAS
        # builds; they slow a current NumPy, so the peer runs without them.
        env = {k: v for k, v in os.environ.items()
               if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        with open(out) as f:
            data = json.load(f)
    times = defaultdict(dict)
    flops = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        times[(b["group"], info["threads"])][info["impl"]] = b["stats"]["median"]
        if "flops" in info:
            flops[b["group"]] = info["flops"]
    mi = data.get("machine_info", {})
    print("# cygrad kernels vs NumPy reference (median times, one run)\n")
    print(f"CPU: {mi.get('cpu', {}).get('brand_raw', '?')}, python {mi.get('python_version')}\n")
    print(f"Machine peak (FLOP/s = cores x clock x FLOP/cycle): {peak()}\n")
    print("| kernel | threads | cygrad µs | numpy µs | speed-up | cygrad GFLOP/s | numpy GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (group, nt), t in sorted(times.items()):
        if "cygrad" in t and "numpy" in t:
            gf = ""
            if group in flops:
                gf = (f" {flops[group] / t['cygrad'] / 1e9:.1f} | "
                      f"{flops[group] / t['numpy'] / 1e9:.1f} |")
            else:
                gf = " | |"
            print(f"| {group} | {nt} | {t['cygrad'] * 1e6:.1f} | {t['numpy'] * 1e6:.1f} | "
                  f"{t['numpy'] / t['cygrad']:.2f}x |{gf}")


if __name__ == "__main__":
    main(sys.argv[1:])
