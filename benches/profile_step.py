"""Where a compiled step's time goes, per stage, at 1 and 2 threads (#29).

Trains the default `cygrad train` model (the CRF window tagger, compiled) for a
number of batches of CoNLL-2003 (or the bundled corpus) and reports, per stage
of its largest plan, the wall time at 1 thread and at N threads and their
ratio, the time outside the plan (Python, the per-call set-up), and the thread
pool's counters (chunks run by helpers, time the caller waited for them,
fallbacks to one thread). Rounds alternate the thread counts in one process:

    python benches/profile_step.py --conll ../shared/data/conll2003 --batches 300
    python benches/profile_step.py --numpy-between   # NumPy products between steps

``--numpy-between`` runs a NumPy matrix product (OpenBLAS, all its threads)
after every step, as a program that evaluates or prepares data with NumPy
does: it shows what OpenBLAS's spinning workers cost cygrad's pool
(``CYGRAD_BLAS_ON_POOL=1`` in the environment: OpenBLAS's jobs run on cygrad's
pool instead, cygrad.blas_on_pool).
"""
import argparse
import os
import sys
import time

import numpy as np

import cygrad as cg
from cygrad.compiler import _plan
from cygrad.kernels import _parallel
from cygrad.ner import cli
from cygrad.ner.data import Vocab, read_conll
from cygrad.ner.model import WindowModel
from cygrad.ner.train import Trainer


def load(conll):
    if conll:
        return read_conll(os.path.join(conll, "train.txt"))
    from cygrad.ner import corpus
    return read_conll(corpus.path("train"))


def run_round(trainer, enc, batches, threads, numpy_between):
    cg.set_num_threads(threads)
    _parallel.stats(reset=True)
    rng = np.random.default_rng(0)
    step = trainer._step
    for bp in step._plans.values():
        if hasattr(bp, "plan"):
            bp.plan.stage_times(reset=True)
    a = np.ones((512, 512), np.float32)
    t_step = 0.0
    t_all = time.perf_counter()
    for b, (idx, lengths, _) in enumerate(trainer.batches(enc, rng)):
        if b == batches:
            break
        t0 = time.perf_counter()
        trainer.step(enc.words[idx], enc.suffixes[idx], enc.cases[idx], enc.labels[idx],
                     rng, enc.prefixes[idx], enc.shapes[idx], lengths, None)
        t_step += time.perf_counter() - t0
        if numpy_between:
            a @ a
    t_all = time.perf_counter() - t_all
    stages = {}
    for bp in step._plans.values():
        if hasattr(bp, "plan"):
            secs, tasks, runs = bp.plan.stage_times(reset=True)
            if runs:
                stages[bp.batch] = (bp.text.splitlines(), secs, runs, tasks, bp.task_labels)
    return t_step, t_all, stages, _parallel.stats(reset=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conll", default=os.environ.get("CYGRAD_CONLL_DIR"))
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--numpy-between", action="store_true")
    args = ap.parse_args()
    sents = load(args.conll)
    # the settings of `cygrad train` with its defaults (the command line's own)
    mcfg, tcfg = cli.configs(cli.build_parser().parse_args(["train", "--out", "-"]))
    model = WindowModel(mcfg, Vocab.build(sents, min_count=tcfg.min_count), seed=tcfg.seed)
    trainer = Trainer(model, tcfg)
    enc = model.encode(sents)
    trainer.set_data(enc)
    _plan.set_timing(True)
    run_round(trainer, enc, 100, 1, False)      # plans built
    res = {1: [], args.threads: []}
    for _ in range(args.rounds):
        for th in (1, args.threads):
            res[th].append(run_round(trainer, enc, args.batches, th, args.numpy_between))
    print(f"# compiled step profile: default CRF tagger, {args.batches} batches x "
          f"{args.rounds} rounds, 1 vs {args.threads} threads"
          + (", a 512x512 NumPy product after every step" if args.numpy_between else ""))
    print(f"`python benches/profile_step.py {' '.join(sys.argv[1:])}`\n")
    med = {th: int(np.argsort([r[0] for r in rs])[len(rs) // 2]) for th, rs in res.items()}
    one, many = res[1][med[1]], res[args.threads][med[args.threads]]
    print(f"| | 1 thread | {args.threads} threads | ratio |\n|---|---:|---:|---:|")
    print(f"| step calls (s) | {one[0]:.3f} | {many[0]:.3f} | {one[0] / many[0]:.2f} |")
    cap = max(one[2], key=lambda k: one[2][k][2])      # the plan run most
    text, s1, runs, k1, labels = one[2][cap]
    sN, kN = many[2][cap][1], many[2][cap][3]
    plan_1, plan_n = s1.sum(), sN.sum()
    print(f"| plan (capacity {cap}, {runs} runs) (s) | {plan_1:.3f} | {plan_n:.3f} | "
          f"{plan_1 / plan_n:.2f} |")
    for i, line in enumerate(text):
        print(f"| {line[:110]} | {s1[i]:.3f} | {sN[i]:.3f} | {s1[i] / max(sN[i], 1e-12):.2f} |")
    print(f"\nper task, thread seconds (summed over the threads that ran its chunks):\n\n"
          f"| stage | task (m, k, h) | 1 thread | {args.threads} threads | ratio |\n"
          "|---:|---|---:|---:|---:|")
    for (si, name, dims, *_), a, b in zip(labels, k1, kN):
        print(f"| {si} | {name} {dims} | {a:.4f} | {b:.4f} | {b / max(a, 1e-12):.2f} |")
    st = many[3]
    print(f"\npool at {args.threads} threads: {st}")
    waits = [r[3]["wait_ns"] * 1e-9 for r in res[args.threads]]
    print("caller's wait for helpers per round (s): " + ", ".join(f"{w:.3f}" for w in waits))


if __name__ == "__main__":
    main()
