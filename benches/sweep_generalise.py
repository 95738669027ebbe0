"""Dev-set sweep of the tagger's generalisation options (issue 14).

Trains the CoNLL-2003 window model once per configuration and seed with
``cygrad.ner.train.train`` and reports dev F1, overall and on entities whose
surface form is seen / unseen in training, as mean ± spread (min-max) over the
seeds. Tune on the validation split only.

    python benches/sweep_generalise.py --seeds 0 1 2 --out benches/results/generalise.md
    python benches/sweep_generalise.py --configs base drop_in --seeds 0   # a quick look
    python benches/sweep_generalise.py --configs glove.k3.h500.e40 --seeds 0 1 2 3 4 5 \
        --ensemble 3        # and the models of seeds 0-2 and 3-5 together

Needs the data in ../shared/data/conll2003 (or CYGRAD_CONLL_DIR).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from cygrad.ner.data import read_conll
from cygrad.ner.evaluate import evaluate, gold_tags
from cygrad.ner.model import Config
from cygrad.ner.train import TrainConfig, score, train

# name -> (model settings, training settings), on top of the CLI's defaults
CONFIGS = {
    "base": ({}, {}),
    "drop_in": ({}, {"dropout": 0.5}),
    "drop_h": ({}, {"hidden_dropout": 0.5}),
    "drop_both": ({}, {"dropout": 0.5, "hidden_dropout": 0.5}),
    "drop_in.3": ({}, {"dropout": 0.3}),
    "wdrop": ({}, {"word_dropout": 0.25}),
    "wdrop1": ({}, {"word_dropout": 1.0}),
    "drop_in+wdrop": ({}, {"dropout": 0.5, "word_dropout": 0.25}),
    "drop_both+wdrop": ({}, {"dropout": 0.5, "hidden_dropout": 0.5, "word_dropout": 0.25}),
    "drop_in+wdrop1": ({}, {"dropout": 0.5, "word_dropout": 1.0}),
    "drop_in.3+wdrop1": ({}, {"dropout": 0.3, "word_dropout": 1.0}),
    "wdrop4": ({}, {"word_dropout": 4.0}),
    "pre_shape": ({"prefix_dim": 20, "shape_dim": 10}, {}),
    "pre_shape+drop_in+wdrop": ({"prefix_dim": 20, "shape_dim": 10},
                                {"dropout": 0.5, "word_dropout": 0.25}),
    "pre_shape+drop_in+wdrop1": ({"prefix_dim": 20, "shape_dim": 10},
                                 {"dropout": 0.5, "word_dropout": 1.0}),
    "crf": ({"loss": "crf"}, {}),
    "crf+pre_shape+drop_in+wdrop1": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10},
                                     {"dropout": 0.5, "word_dropout": 1.0}),
    "ngram": ({"ngram_dim": 20}, {}),
    "crf+all": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10, "ngram_dim": 20},
                {"dropout": 0.5, "word_dropout": 1.0}),
    "crf+all+hdrop": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10, "ngram_dim": 20},
                      {"dropout": 0.5, "hidden_dropout": 0.3, "word_dropout": 1.0}),
    "crf+pre_shape+drop_in+wdrop1+hdrop": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10},
                                           {"dropout": 0.5, "hidden_dropout": 0.3,
                                            "word_dropout": 1.0}),
    "crf+all.6": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10, "ngram_dim": 20},
                  {"dropout": 0.6, "word_dropout": 1.0}),
    "crf+ps+d+w1.b128": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10},
                         {"dropout": 0.5, "word_dropout": 1.0, "batch_size": 128, "lr": 0.04}),
    "crf+ps+d+w1.b256": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10},
                         {"dropout": 0.5, "word_dropout": 1.0, "batch_size": 256, "lr": 0.06}),
    "crf+all.b256": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10, "ngram_dim": 20},
                     {"dropout": 0.5, "word_dropout": 1.0, "batch_size": 256, "lr": 0.06}),
    "b256.d6": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10},
                {"dropout": 0.6, "word_dropout": 1.0, "batch_size": 256, "lr": 0.06}),
    "b256.w2": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10},
                {"dropout": 0.5, "word_dropout": 2.0, "batch_size": 256, "lr": 0.06}),
    "b256.lr04": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10},
                  {"dropout": 0.5, "word_dropout": 1.0, "batch_size": 256, "lr": 0.04}),
    "b256.h500": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10, "hidden": (500,)},
                  {"dropout": 0.5, "word_dropout": 1.0, "batch_size": 256, "lr": 0.06}),
    "b256.k3": ({"loss": "crf", "prefix_dim": 20, "shape_dim": 10, "k": 3},
                {"dropout": 0.5, "word_dropout": 1.0, "batch_size": 256, "lr": 0.06}),
}


def _on(base, model=None, train=None):
    """The settings of configuration ``base`` with these added."""
    mk, tk = CONFIGS[base]
    return {**mk, **(model or {})}, {**tk, **(train or {})}


# parameter averaging, and the scores shared within documents (doc_context)
CONFIGS.update({
    "b256.avg": _on("crf+ps+d+w1.b256", train={"average_params": True}),
    "b256.doc5": _on("crf+ps+d+w1.b256", model={"doc_context": 0.5}),
    "b256.avg.doc5": _on("crf+ps+d+w1.b256", model={"doc_context": 0.5},
                         train={"average_params": True}),
    "b256.k3.avg": _on("b256.k3", train={"average_params": True}),
})

# pretrained vectors (#30): "vectors" in the training settings names them (cygrad.ner.vectors)
DEFAULTS = "b256.avg.doc5"      # what `cygrad train` runs without options
GLOVE = {"vectors": "glove-6b-50d"}
CONFIGS.update({
    "glove": _on(DEFAULTS, train=GLOVE),
    "glove.frozen": _on(DEFAULTS, train={**GLOVE, "freeze_vectors": True}),
    "glove.d3": _on(DEFAULTS, train={**GLOVE, "dropout": 0.3}),
    "glove.k3": _on(DEFAULTS, model={"k": 3}, train=GLOVE),
    "glove.h500": _on(DEFAULTS, model={"hidden": (500,)}, train=GLOVE),
    "glove.lr04": _on(DEFAULTS, train={**GLOVE, "lr": 0.04}),
    "glove.w0": _on(DEFAULTS, train={**GLOVE, "word_dropout": 0.0}),
    "glove.w3": _on(DEFAULTS, train={**GLOVE, "word_dropout": 3.0}),
    "glove.hd3": _on(DEFAULTS, train={**GLOVE, "hidden_dropout": 0.3}),
    "glove.doc7": _on(DEFAULTS, model={"doc_context": 0.7}, train=GLOVE),
    # with the character n-gram bags (compiled since #28's bag plan tasks)
    "glove.ng25": _on(DEFAULTS, model={"ngram_dim": 25}, train=GLOVE),
    "glove.ng25.h500": _on(DEFAULTS, model={"ngram_dim": 25, "hidden": (500,)}, train=GLOVE),
    # longer training: the 20-epoch runs still improved at their last epochs
    "glove.e40": _on(DEFAULTS, train={**GLOVE, "epochs": 40, "patience": 6}),
    "glove.h500.e40": _on(DEFAULTS, model={"hidden": (500,)},
                          train={**GLOVE, "epochs": 40, "patience": 6}),
    "glove.k3.e40": _on(DEFAULTS, model={"k": 3}, train={**GLOVE, "epochs": 40, "patience": 6}),
    # a narrower hidden layer: the first layer's products are most of an epoch (#28)
    "h200": _on(DEFAULTS, model={"hidden": (200,)}),
    "glove.h200": _on(DEFAULTS, model={"hidden": (200,)}, train=GLOVE),
    # the best of the above (k3.e40) widened, deepened, with n-gram bags (#30: 94.0 sought)
    "glove.k3.h500.e40": _on(DEFAULTS, model={"k": 3, "hidden": (500,)},
                             train={**GLOVE, "epochs": 40, "patience": 6}),
    "glove.k4.h500.e40": _on(DEFAULTS, model={"k": 4, "hidden": (500,)},
                             train={**GLOVE, "epochs": 40, "patience": 6}),
    "glove.k5.h500.e40": _on(DEFAULTS, model={"k": 5, "hidden": (500,)},
                             train={**GLOVE, "epochs": 40, "patience": 6}),
    # longer, more patient: seeds that stopped at epoch 16-17 under patience 6
    "glove.k4.h500.e60": _on(DEFAULTS, model={"k": 4, "hidden": (500,)},
                             train={**GLOVE, "epochs": 60, "patience": 10}),
    "glove.k5.h500.e60": _on(DEFAULTS, model={"k": 5, "hidden": (500,)},
                             train={**GLOVE, "epochs": 60, "patience": 10}),
    "glove.k3.2h.e40": _on(DEFAULTS, model={"k": 3, "hidden": (300, 300)},
                           train={**GLOVE, "epochs": 40, "patience": 6}),
    "glove.k3.ng25.e40": _on(DEFAULTS, model={"k": 3, "ngram_dim": 25},
                             train={**GLOVE, "epochs": 40, "patience": 6}),
    "random": _on(DEFAULTS),    # the defaults: random 50-d word vectors, trained
    "none": _on(DEFAULTS, model={"dim": 0}),    # no word table: the other features only
})

# the best of these (k3.h500.e40) with another step size or input dropout
CONFIGS.update({
    "glove.k3.h500.e40.lr04": _on("glove.k3.h500.e40", train={"lr": 0.04}),
    "glove.k3.h500.e40.lr09": _on("glove.k3.h500.e40", train={"lr": 0.09}),
    "glove.k3.h500.e40.d6": _on("glove.k3.h500.e40", train={"dropout": 0.6}),
})


def data_dir():
    d = os.environ.get("CYGRAD_CONLL_DIR")
    if d:
        return d
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "..", "..", "shared", "data", "conll2003")


def run(name, seed, train_s, dev_s, keep=None):
    """One training run's dev scores; ``keep`` (a list): the model is appended to it
    (for --ensemble)."""
    mk, tk = CONFIGS[name]
    tk = dict(tk)
    vectors = tk.pop("vectors", None)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()        # (reading the vectors included)
        model, hist = train(train_s, dev_s, out, Config(**mk), TrainConfig(seed=seed, **tk),
                            vectors=vectors, log=lambda *a: None, progress=False)
        secs = time.perf_counter() - t0
    sc = score(model, dev_s)
    if keep is not None:
        keep.append(model)
    best = max(hist, key=lambda h: h.get("dev_f1", 0))
    return {"config": name, "seed": seed, "f1": sc.f1, "seen": sc.seen.f1,
            "unseen": sc.unseen.f1, "best_epoch": best["epoch"], "epochs": len(hist),
            "epoch_s": float(np.median([h["seconds"] for h in hist])), "total_s": secs}


def groups(n, k):
    """(start, end) of each run of k consecutive seeds among n (none for k = 0; a
    last run shorter than k is left out)."""
    return [(i, i + k) for i in range(0, n - k + 1, k)] if k > 0 else []


def ensemble(name, seeds, models, dev_s, members=None):
    """Dev F1 of the models together: each token's scores averaged over the models
    (and a CRF's transitions), then shared within documents and decoded as one
    model's. A CRF's sequence score is linear in both, so this decodes the sum of
    the members' sequence scores. ``members``: the models' own dev F1 if known."""
    first = models[0]
    tags = ensemble_tags(models, dev_s)
    sc = evaluate(gold_tags(first, dev_s), tags, tokens=[s.tokens for s in dev_s],
                  seen=first.vocab.entities or None)
    if members is None:
        members = [score(m, dev_s).f1 for m in models]
    return {"config": f"{name} x{len(models)}", "seeds": list(seeds), "f1": sc.f1,
            "seen": sc.seen.f1, "unseen": sc.unseen.f1, "members": list(members)}


def ensemble_tags(models, dev_s):
    """The tags of the models together (see ensemble), one list per sentence. The
    models must share their vocabulary (words, tags, features) and settings."""
    first = models[0]
    for i, m in enumerate(models[1:], 1):
        if m.vocab != first.vocab or m.config != first.config:
            raise ValueError(f"ensemble: model {i} has another vocabulary or other settings "
                             f"than model 0; only models of one configuration can be averaged")
    enc = first.encode(dev_s)
    scores = np.mean([m.token_scores(enc) for m in models], axis=0)
    own = first.config.objective.shapes(len(first.vocab.tags))     # e.g. the CRF's "A"
    saved = {k: first.params[k] for k in own}
    try:
        for k in saved:
            first.params[k] = np.mean([m.params[k] for m in models], axis=0)
        first._share_in_documents(scores, enc)
        return first.tags(first.decode(scores, enc), enc.offsets)
    finally:
        first.params.update(saved)


def table(rows):
    out = ["| config | settings | dev F1 | seen F1 | unseen F1 | best epoch | s/epoch |",
           "|---|---|---:|---:|---:|---:|---:|"]
    by = {}
    for r in rows:
        by.setdefault(r["config"], []).append(r)
    for name, rs in by.items():
        def cell(k):
            v = 100 * np.array([r[k] for r in rs])
            return f"{v.mean():.2f} [{v.min():.2f}-{v.max():.2f}]" if len(v) > 1 else f"{v[0]:.2f}"
        mk, tk = CONFIGS[name]
        settings = (", ".join(f"{k}={v}" for k, v in {**mk, **tk}.items())
                    or "Config() and TrainConfig() (the previous CLI defaults)")
        out.append(f"| {name} | {settings} | {cell('f1')} | {cell('seen')} | {cell('unseen')} "
                   f"| {np.mean([r['best_epoch'] for r in rs]):.1f} "
                   f"| {np.median([r['epoch_s'] for r in rs]):.2f} |")
    return "\n".join(out)


def ensemble_table(ens):
    out = ["| ensemble | seeds | dev F1 | members' dev F1 (mean) | seen F1 | unseen F1 |",
           "|---|---|---:|---:|---:|---:|"]
    for e in ens:
        out.append(f"| {e['config']} | {' '.join(map(str, e['seeds']))} | {100 * e['f1']:.2f} "
                   f"| {100 * np.mean(e['members']):.2f} | {100 * e['seen']:.2f} "
                   f"| {100 * e['unseen']:.2f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--jsonl", help="append every run as a JSON line here")
    ap.add_argument("--ensemble", type=int, default=0, metavar="K",
                    help="also score the models of each K consecutive seeds together "
                         "(their token scores averaged; printed and in --out, not in --jsonl)")
    ap.add_argument("--table", metavar="JSONL", help="print the table of runs saved by --jsonl "
                    "(no training)")
    a = ap.parse_args()
    if a.table:
        with open(a.table) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return 0
    d = data_dir()
    train_s = read_conll(os.path.join(d, "train.txt"))
    dev_s = read_conll(os.path.join(d, "valid.txt"))
    if not 0 <= a.ensemble <= len(a.seeds):
        ap.error(f"--ensemble: K must be between 0 and the number of seeds "
                 f"({len(a.seeds)}), got {a.ensemble}")
    scored = groups(len(a.seeds), a.ensemble)
    last = scored[-1][1] if scored else 0   # the seeds from here on are not scored together
    rows, ens = [], []
    for name in a.configs:
        models = []         # the models of the current group (kept until it is scored)
        for idx, seed in enumerate(a.seeds):
            r = run(name, seed, train_s, dev_s, models if idx < last else None)
            rows.append(r)
            print(json.dumps(r), flush=True)
            if a.jsonl:
                with open(a.jsonl, "a") as f:
                    f.write(json.dumps(r) + "\n")
            if models and len(models) == a.ensemble:
                group = rows[-a.ensemble:]
                e = ensemble(name, [x["seed"] for x in group], models, dev_s,
                             [x["f1"] for x in group])
                ens.append(e)
                print(json.dumps(e), flush=True)
                models.clear()
    text = table(rows)
    if ens:
        text += "\n\n" + ensemble_table(ens)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write("# Generalisation sweep (dev split of CoNLL-2003)\n\n"
                    f"`python benches/sweep_generalise.py --configs {' '.join(a.configs)} "
                    f"--seeds {' '.join(map(str, a.seeds))}"
                    + (f" --ensemble {a.ensemble}" if a.ensemble else "")
                    + "`; mean [min-max] over the seeds. "
                    "Seen / unseen: entities whose exact surface form occurs / does not occur "
                    "as an entity in the training split.\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
