"""Tagging speed of a trained NER model, in tokens/s.

    python benches/report_tagging.py --model DIR [--data FILE] [--threads 1 2] [--busy]

Two figures for every thread count, over the tokens of a CoNLL file (default: the
CoNLL-2003 validation split from $CYGRAD_CONLL_DIR or ../shared/data/conll2003):
the tagger in process (encode, scores, the model's sharing of scores within
each document, Viterbi, tag strings: what `cygrad tag` does between reading and
writing text), median of 7 runs; and the `cygrad tag
--tokenized` command on the same tokens, its wall time minus the time of the same
command on empty input (start-up: interpreter, imports, model load), median of 3.
``--busy``: the same beside a CPU-bound process pinned to the last core
(report_contention.py's), started before the first timing and stopped after the last.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import cygrad

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Busy  # noqa: E402  (benches/_harness.py)
from cygrad.ner import cli
from cygrad.ner.data import Sentence, read_conll
from cygrad.ner.model import WindowModel

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(os.environ.get("CYGRAD_CONLL_DIR", os.path.join(
    HERE, "..", "..", "shared", "data", "conll2003")), "valid.txt")


def _command_seconds(model, path, nt):
    cmd = [sys.executable, "-m", "cygrad", "tag", "--model", model, "--input", path,
           "--tokenized", "--threads", str(nt)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--busy", action="store_true",
                    help="beside a CPU-bound process pinned to the last core")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.data):
        sys.exit(f"report_tagging: no data file {args.data}: give --data FILE (CoNLL format), "
                 f"or set CYGRAD_CONLL_DIR to the directory holding valid.txt")
    model = WindowModel.load(args.model)
    sents = [Sentence(s.tokens, ["O"] * len(s.tokens), s.doc) for s in read_conll(args.data)]
    n = sum(len(s.tokens) for s in sents)
    with tempfile.TemporaryDirectory() as tmp:
        tokens, empty = os.path.join(tmp, "tokens.txt"), os.path.join(tmp, "empty.txt")
        with open(tokens, "w", encoding="utf-8") as f:     # the documents kept
            f.write("\n\n".join(("-DOCSTART-\n\n" if i == 0 or s.doc != sents[i - 1].doc
                                  else "") + "\n".join(s.tokens)
                                 for i, s in enumerate(sents)) + "\n")
        open(empty, "w").close()
        busy = None
        if args.busy:
            busy = Busy(sorted(os.sched_getaffinity(0))[-1])
            busy.start()
        print(f"{n} tokens from {args.data}" + (", one core busy" if busy else ", idle")
              + "\n")
        print("| threads | tagger tokens/s (median of 7) | `cygrad tag` tokens/s after start-up |")
        print("|---:|---:|---:|")
        for nt in args.threads:
            with cygrad.threads(nt):
                ts = []
                for _ in range(7):
                    t = time.perf_counter()
                    cli._predict_tags(model, sents)
                    ts.append(time.perf_counter() - t)
            run = np.median([_command_seconds(args.model, tokens, nt) for _ in range(3)])
            start = np.median([_command_seconds(args.model, empty, nt) for _ in range(3)])
            print(f"| {nt} | {n / np.median(ts):,.0f} | {n / max(run - start, 1e-9):,.0f} |")
        if busy is not None:
            busy.stop()


if __name__ == "__main__":
    main()
