"""A scaling model of a compiled step past two cores (#29).

What one step of the default tagger (the CRF window model, compiled) is made of,
measured at one thread with the plan's task timer (cygrad.compiler._plan.
set_timing): for every stage of the plan (one loop of the thread pool), each
group's work and how many chunks it can be cut into (its index space over its
grain: a group over one table's rows is one chunk); and the time outside the plan
(Python, the per-call set-up). The model projects a step at p threads:

    T(p) = outside + sum over stages of [ max(work / p, largest group's work /
           min(p, its chunks)) + sync(p) ]

sync(2), the cost of one loop with a helper (waking it, the claims, the wait for
the last chunk, the imbalance the chunks leave), is what the measured 2-thread
step takes beyond the model without it; sync(p) = sync(2) * p / 2 beyond (one
wake-up of all helpers, then every helper's claims on one shared counter: linear
in p, an assumption, not a measurement, on a 2-core machine). It says which
part stops scaling first. At 3-8 threads this machine is oversubscribed: those
thread counts run for correctness only (the same parameters bit for bit,
checked here), not timed. Rounds alternate 1 and 2 threads; medians.

    python benches/scaling_model.py --conll ../shared/data/conll2003 \
        --out benches/results/scaling.md
"""

import argparse
import os
import sys
import time

import numpy as np

import cygrad as cg
from cygrad.compiler import _plan

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import profile_step  # noqa: E402
from _harness import write_report  # noqa: E402  (benches/_harness.py)
from cygrad.ner import cli  # noqa: E402
from cygrad.ner.data import Vocab  # noqa: E402
from cygrad.ner.model import WindowModel  # noqa: E402
from cygrad.ner.train import Trainer  # noqa: E402


def build(conll):
    sents = profile_step.load(conll)
    mcfg, tcfg = cli.configs(cli.build_parser().parse_args(["train", "--out", "-"]))
    model = WindowModel(mcfg, Vocab.build(sents, min_count=tcfg.min_count), seed=tcfg.seed)
    trainer = Trainer(model, tcfg)
    enc = model.encode(sents)
    trainer.set_data(enc)
    return model, trainer, enc


def chunks_of(space):
    kind, n, grain = space
    return max(1, -(-int(n) // max(1, int(grain))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conll", default=os.environ.get("CYGRAD_CONLL_DIR"))
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    _, trainer, enc = build(a.conll)
    _plan.set_timing(True)
    profile_step.run_round(trainer, enc, 100, 1, False)         # plans built
    res = {1: [], 2: []}
    for _ in range(a.rounds):
        for nt in (1, 2):
            res[nt].append(profile_step.run_round(trainer, enc, a.batches, nt, False))
    mid = sorted(res[1], key=lambda r: r[0])[len(res[1]) // 2]
    t_step, _, stages, _ = mid
    t_two = float(np.median([r[0] for r in res[2]])) / a.batches
    cap = max(stages, key=lambda k: stages[k][2])
    text, stage_s, runs, task_s, labels = stages[cap]
    per_step = t_step / a.batches
    plan_s = stage_s.sum() / runs
    outside = per_step - plan_s
    # per stage: its groups' work (thread seconds a step) and chunk counts
    groups = {}
    for (si, name, dims, space, gi), secs in zip(labels, task_s / runs):
        g = groups.setdefault((si, gi), {"work": 0.0, "chunks": chunks_of(space),
                                         "space": space, "tasks": []})
        g["work"] += secs
        g["tasks"].append(name)
    nst = len(stage_s)
    sync = {"two": 0.0}

    def project(p):
        t = outside
        parts = {"outside the plan": outside, "loops (synchronisation)": 0.0,
                 "parallel work": 0.0, "groups that cannot split": 0.0}
        for s in range(nst):
            gs = [g for (si, _), g in groups.items() if si == s]
            work = sum(g["work"] for g in gs)
            even = work / p
            worst = max(g["work"] / min(p, g["chunks"]) for g in gs)
            st = max(even, worst)
            t += st
            if worst > even:
                parts["groups that cannot split"] += st
            else:
                parts["parallel work"] += st
            if p > 1:
                lc = sync["two"] * p / 2
                t += lc
                parts["loops (synchronisation)"] += lc
        return t, parts

    sync["two"] = max(0.0, (t_two - project(2)[0]) / nst)      # calibrated on 2 threads

    # correctness at 1-8 threads: the same parameters after a few steps
    digests = {}
    for nt in (1, 2, 3, 4, 8):
        _, tr2, enc2 = build(a.conll)
        cg.set_num_threads(nt)
        rng = np.random.default_rng(0)
        for b, (idx, lengths, _) in enumerate(tr2.batches(enc2, rng)):
            if b == 20:
                break
            tr2.step(enc2.words[idx], enc2.suffixes[idx], enc2.cases[idx], enc2.labels[idx],
                     rng, enc2.prefixes[idx], enc2.shapes[idx], lengths, None)
        digests[nt] = b"".join(t.data.tobytes() for t in tr2.t.values())
    same = all(d == digests[1] for d in digests.values())

    lines = [
        "# Scaling model of the default tagger's compiled step", "",
        f"`python benches/scaling_model.py {' '.join(sys.argv[1:])}`; "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}; one thread's profile "
        f"over {a.batches} batches (plan capacity {cap} rows).", "",
        f"Measured per step at 1 thread: {1e3 * per_step:.3f} ms, of which the plan "
        f"{1e3 * plan_s:.3f} ms ({nst} stages) and {1e3 * outside:.3f} ms outside it "
        f"(Python, the per-call set-up). Measured at 2 threads: {1e3 * t_two:.3f} ms "
        f"({per_step / t_two:.2f}x), which puts sync(2) at {1e6 * sync['two']:.1f} us a "
        f"stage.", "",
        "| stage | group | index space (size / grain) | chunks | work (ms) |",
        "|---:|---|---|---:|---:|"]
    for (si, gi), g in sorted(groups.items()):
        kind, n, grain = g["space"]
        lines.append(f"| {si} | {', '.join(g['tasks'])} | {kind} {n} / {grain} | "
                     f"{g['chunks']} | {1e3 * g['work']:.3f} |")
    lines += ["", "Projected step time (the model above; 1-2 threads are measured, the "
              "rest projected):", "",
              "| threads | step (ms) | speed-up | outside the plan | loops | parallel work "
              "| groups that cannot split |", "|---:|---:|---:|---:|---:|---:|---:|"]
    t1 = project(1)[0]
    first = None
    for p in (1, 2, 4, 8, 16, 32, 64):
        t, parts = project(p)
        share = {k: v / t for k, v in parts.items()}
        if first is None and p > 2 and share["parallel work"] < 0.5:
            first = (p, max((k for k in share if k != "parallel work"), key=share.get))
        lines.append(f"| {p} | {1e3 * t:.3f} | {t1 / t:.2f} | "
                     f"{100 * share['outside the plan']:.0f}% | "
                     f"{100 * share['loops (synchronisation)']:.0f}% | "
                     f"{100 * share['parallel work']:.0f}% | "
                     f"{100 * share['groups that cannot split']:.0f}% |")
    lines += ["", f"Parameters after 20 steps at 1, 2, 3, 4 and 8 threads (3-8 "
              f"oversubscribed here): {'bitwise the same' if same else 'DIFFERENT'}."]
    if first:
        lines += ["", f"What stops scaling first: from {first[0]} threads on, less than half "
                  f"of a step is parallel work; the largest other part is "
                  f"\"{first[1]}\"."]
    write_report(a.out, lines)


if __name__ == "__main__":
    main()
