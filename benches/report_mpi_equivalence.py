"""N ranks against one process (#31): `mpiexec -n N cygrad train --distributed` with
--batch-size B and `cygrad train` with N x B, one epoch on the bundled corpus (or a
CoNLL file), shuffled, with input, hidden and word dropout; the largest relative
difference of any parameter (|a - b| / max |a| per array, the worst array).

    python benches/report_mpi_equivalence.py [--ranks 2 3] \
        [--out benches/results/mpi-equivalence.md]

Needs the mpi extra (mpi4py and mpiexec). Adagrad's first step (lr g / (|g| + eps))
turns the rounding of a gradient summed in another order (N ranks add their shares;
one process sums the batch) into up to lr on near-zero gradients, so its column is
larger than SGD's: same model, rounding amplified.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from _harness import write_report  # noqa: E402  (benches/_harness.py)
from cygrad.ner.model import WindowModel


def run(args, out, n=None):
    cmd = [sys.executable, "-m", "cygrad", "train", *args, "--out", out]
    if n:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
        cmd = [mpiexec, "-n", str(n)] + cmd + ["--distributed"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train", help="CoNLL training file (default: the bundled corpus)")
    ap.add_argument("--out")
    a = ap.parse_args()
    losses = ["crf", "softmax", "logistic", "max-margin"]
    opts = {"sgd": ["--optimizer", "sgd", "--lr", "0.1"], "adagrad": []}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in a.ranks:
            for loss in losses:
                cells = []
                for name, extra in opts.items():
                    base = ["--epochs", "1", "--no-progress", "--no-average-params",
                            "--hidden-dropout", "0.3", "--loss", loss] + extra
                    if a.train:
                        base += ["--train", a.train]
                    p1, pn = os.path.join(d, "one"), os.path.join(d, "n")
                    run(base + ["--batch-size", str(a.batch * n)], p1)
                    run(base + ["--batch-size", str(a.batch)], pn, n=n)
                    x, y = WindowModel.load(p1).params, WindowModel.load(pn).params
                    cells.append(max(float(np.abs(x[k] - y[k]).max() /
                                           (np.abs(x[k]).max() + 1e-30)) for k in x))
                    shutil.rmtree(p1)
                    shutil.rmtree(pn)
                rows.append((n, loss, *cells))
                print(rows[-1], flush=True)
    lines = ["# N ranks against one process with N x the batch", "",
             f"`python benches/report_mpi_equivalence.py {' '.join(sys.argv[1:])}`: one epoch "
             f"({'the bundled corpus' if not a.train else a.train}), --batch-size {a.batch} "
             f"per rank, shuffled, input dropout 0.5, hidden dropout 0.3, word dropout 1.0; "
             "the largest relative parameter difference (worst array).", "",
             "| ranks | loss | SGD | Adagrad |", "|---:|---|---:|---:|"]
    lines += [f"| {n} | {loss} | {s:.1e} | {g:.1e} |" for n, loss, s, g in rows]
    write_report(a.out, lines)


if __name__ == "__main__":
    main()
