"""Peak memory of `cygrad tag` by input size (#31): raw text (one document: tagged
in two passes) and --tokenized CoNLL documents (chunks of whole documents), made
by repeating a CoNLL file's sentences to each size; beside it, the whole input
tagged at once (what `cygrad tag` did before: read it all, encode it all).

    python benches/report_tag_memory.py --model conll-model --conll ../shared/data/conll2003 \
        --sizes 10 100 --out benches/results/tag-memory.md
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

from _harness import write_report  # noqa: E402  (benches/_harness.py)
from cygrad.ner.data import read_conll

AT_ONCE = r"""
import sys
from cygrad.ner.model import WindowModel
from cygrad.ner.data import Sentence, tokenize
m = WindowModel.load(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
sents = [Sentence(t, ["O"] * len(t)) for t in tokenize(text)]
enc = m.encode(sents, with_labels=False)
tags = m.tags(m.predict(enc), enc.offsets)
sys.stdout.write("".join(" ".join(s.tokens) + "\n" for s in sents))
"""


def make_inputs(sents, mb, d):
    raw = "\n".join(" ".join(s.tokens) for s in sents) + "\n\n"
    docs, doc = [], None
    for s in sents:
        if s.doc != doc:
            docs.append("-DOCSTART-\n\n")
            doc = s.doc
        docs.append("".join(t + "\n" for t in s.tokens) + "\n")
    tok = "".join(docs)
    paths = {}
    for kind, unit in (("raw text", raw), ("tokenized", tok)):
        p = os.path.join(d, f"{kind[:3]}{mb}.txt")
        with open(p, "w", encoding="utf-8") as f:
            n = 0
            while n < mb * 1_000_000:
                f.write(unit)
                n += len(unit)
        paths[kind] = p
    return paths


WRAP = ("import os, resource, subprocess, sys\n"
        "with open(os.devnull, 'w') as null:\n"
        "    subprocess.run(sys.argv[1:], stdout=null, check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak(cmd):
    """Wall seconds and peak RSS (MiB) of one command, run under a fresh wrapper
    process (RUSAGE_CHILDREN's maximum is over that command alone)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", WRAP] + cmd, capture_output=True, text=True,
                       check=True)
    return time.perf_counter() - t0, int(r.stdout.split()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--conll", default=os.environ.get("CYGRAD_CONLL_DIR"))
    ap.add_argument("--sizes", nargs="+", type=int, default=[10, 100], help="MB")
    ap.add_argument("--at-once-max", type=int, default=10,
                    help="largest size (MB) also tagged all at once")
    ap.add_argument("--out")
    a = ap.parse_args()
    src = os.path.join(a.conll, "valid.txt") if a.conll else None
    if src is None:
        from cygrad.ner import corpus
        src = corpus.path("test")
    sents = read_conll(src)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for mb in sorted(a.sizes):
            paths = make_inputs(sents, mb, d)
            for kind, p in paths.items():
                cmd = [sys.executable, "-m", "cygrad", "tag", "--model", a.model, "--input", p]
                if kind == "tokenized":
                    cmd.append("--tokenized")
                secs, rss = peak(cmd)
                rows.append((mb, kind, "cygrad tag", secs, rss))
                print(rows[-1], flush=True)
            if mb <= a.at_once_max:
                secs, rss = peak([sys.executable, "-c", AT_ONCE, a.model, paths["raw text"]])
                rows.append((mb, "raw text", "all at once (before)", secs, rss))
                print(rows[-1], flush=True)
    lines = ["# Peak memory of `cygrad tag` by input size", "",
             f"`python benches/report_tag_memory.py {' '.join(sys.argv[1:])}`; "
             f"{os.cpu_count()} cores; inputs repeat {os.path.basename(src)}'s sentences. "
             "Peak RSS is the process's maximum resident set.", "",
             "| input | kind | how | seconds | peak RSS (MiB) |", "|---:|---|---|---:|---:|"]
    lines += [f"| {mb} MB | {kind} | {how} | {s:.1f} | {r:.0f} |" for mb, kind, how, s, r in rows]
    write_report(a.out, lines)


if __name__ == "__main__":
    main()
