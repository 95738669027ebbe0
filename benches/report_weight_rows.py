"""A linear layer on the data, its weight gradient and update split by the rows of W
(and its forward by the same rows) against the earlier plan (the forward by the
batch's rows from B = 128 on, the weight gradient by the input's columns): compiled
MLP steps (Adam unless named), both plans in one process, on the same batches.

    python benches/report_weight_rows.py --out benches/results/weight-rows.md
    python benches/report_weight_rows.py --busy     # a CPU-bound process on one core

Each round sets the thread count, warms both plans at it (so that no timed block
starts with a sleeping helper), then times them in the order A B B A, ``--seconds``
each block. Figures: samples per second (median over rounds) and the per-round
ratio new / earlier. Both plans first train a few steps from the same parameters
and must end with the same bits (the split changes who computes what, not what).
"""
import argparse
import os
import platform
import time

import numpy as np

import cygrad as cg
from _harness import Busy, median, write_report
from cygrad import nn, optim
from cygrad.compiler import lowering

# (input, hidden, classes, batch, optimiser)
CASES = [(784, 256, 10, 128, "adam"), (784, 256, 10, 32, "adam"), (784, 256, 10, 512, "adam"),
         (784, 256, 10, 2048, "adam"), (784, 256, 10, 128, "sgd"), (512, 512, 10, 128, "adam"),
         (1024, 128, 10, 128, "adam"), (256, 256, 10, 128, "adam"), (64, 128, 10, 32, "adam")]


def make(case, earlier):
    D, H, C, B, opt_name = case
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(D, H, generator=rng), nn.ReLU(),
                          nn.Linear(H, C, generator=rng))
    opt = (optim.Adam(model.parameters(), lr=1e-3) if opt_name == "adam"
           else optim.SGD(model.parameters(), lr=0.01))
    saved = lowering.WGRAD_ROWS
    lowering.WGRAD_ROWS = 1 << 62 if earlier else saved     # (read when a plan is built)
    try:
        step = cg.compile(lambda x, y: cg.softmax_cross_entropy(model(x), y),
                          optimizer=opt, strict=True)
        x = np.zeros((B, D), np.float32)
        step(x, np.zeros(B, np.int64))      # builds the plan (a step on zeros)
    finally:
        lowering.WGRAD_ROWS = saved
    return model, step


def batches(case, n=8):
    D, _, C, B, _ = case
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((B, D)).astype(np.float32), rng.integers(0, C, B))
            for _ in range(n)]


def same_bits(case):
    """Both plans, 5 steps from the same parameters at 2 threads: the same bits?"""
    runs = []
    for earlier in (True, False):
        model, step = make(case, earlier)
        with cg.threads(2):
            for x, y in batches(case, 5):
                step(x, y)
        runs.append([p.data.copy() for p in model.parameters()])
    return all(np.array_equal(a, b) for a, b in zip(*runs))


def block(step, data, seconds):
    n, i = 0, 0
    t = time.perf_counter()
    while True:
        x, y = data[i % len(data)]
        step(x, y)
        n += 1
        i += 1
        el = time.perf_counter() - t
        if el >= seconds:
            return n * x.shape[0] / el


def measure(case, rounds, seconds):
    data = batches(case)
    plans = {"earlier": make(case, True)[1], "new": make(case, False)[1]}
    text = plans["new"].describe(*data[0]).splitlines()
    rates = {(k, nt): [] for k in plans for nt in (1, 2)}
    ratios = {nt: [] for nt in (1, 2)}
    for r in range(rounds):
        for nt in ((1, 2) if r % 2 == 0 else (2, 1)):
            cg.set_num_threads(nt)
            for step in plans.values():     # warm both at this thread count
                block(step, data, 0.03)
            got = {k: [] for k in plans}
            for k in ("earlier", "new", "new", "earlier"):
                got[k].append(block(plans[k], data, seconds))
            for k in plans:
                rates[k, nt].append(sum(got[k]) / 2)
            ratios[nt].append(rates["new", nt][-1] / rates["earlier", nt][-1])
    return rates, ratios, text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.15)
    ap.add_argument("--busy", action="store_true", help="a CPU-bound process on one core")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    busy = Busy()
    if a.busy:
        busy.start()
    rows = []
    for case in CASES:
        bits = same_bits(case)
        rates, ratios, text = measure(case, a.rounds, a.seconds)
        rows.append((case, bits, rates, ratios, text))
        D, H, C, B, o = case
        print(f"{D}-{H}-{C} B={B} {o}: new/earlier 1t {median(ratios[1]):.3f} "
              f"2t {median(ratios[2]):.3f}", flush=True)
    busy.stop()
    state = "busy (a CPU-bound loop pinned to the last core)" if a.busy else "idle"
    lines = [
        "# A layer on the data: weight gradient by W's rows against the earlier plan (#29)",
        "",
        f"`python benches/report_weight_rows.py --rounds {a.rounds} --seconds {a.seconds}"
        f"{' --busy' if a.busy else ''}` on {os.cpu_count()} cores ({platform.machine()}), "
        f"{time.strftime('%Y-%m-%d')}, {state}; cygrad {cg.__version__}, numpy {np.__version__}.",
        "",
        "Compiled steps of nn.Sequential(Linear(D, H), ReLU, Linear(H, C)) with softmax "
        "cross-entropy, float32, random inputs. *earlier*: the plan before the rule (forward "
        "by the batch's rows from B = 128, weight gradient by the input's columns); *new*: "
        "cygrad's plan now (by W's rows: the forward and the weight gradient split by W's "
        "rows where the batch has at most 2 H rows; otherwise the earlier plan). "
        "Samples/s, median of "
        f"{a.rounds} rounds; each round warms both plans at its thread count, then times "
        "them A B B A. Ratio: the median of the per-round ratios new / earlier [min, max]. "
        "Same bits: both plans trained 5 steps at 2 threads from the same parameters end "
        "with equal parameters.",
        "",
        "| D-H-C, batch, optimiser | by W's rows | same bits | 1 thr: earlier | new | "
        "new / earlier | 2 thr: earlier | new | new / earlier | 2 thr / 1 thr: earlier | new |",
        "|---|:-:|:-:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (D, H, C, B, o), bits, rates, ratios, text in rows:
        med = {k: median(v) for k, v in rates.items()}
        cells = [f"{D}-{H}-{C}, {B}, {o}",
                 "yes" if any("linear_wgrad" in t for t in text) else "no",
                 "yes" if bits else "**no**"]
        for nt in (1, 2):
            rs = ratios[nt]
            cells += [f"{med['earlier', nt]:,.0f}", f"{med['new', nt]:,.0f}",
                      f"{median(rs):.3f} [{min(rs):.2f}, {max(rs):.2f}]"]
        cells += [f"{med['earlier', 2] / med['earlier', 1]:.2f}",
                  f"{med['new', 2] / med['new', 1]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The new plans:", ""]
    for (D, H, C, B, o), _, _, _, text in rows[:1]:
        lines += [f"{D}-{H}-{C}, batch {B}, {o}:", "", "```", *text, "```"]
    write_report(a.out, lines)
    if not all(r[1] for r in rows):
        raise SystemExit("the two plans trained different bits")


if __name__ == "__main__":
    main()
