"""Training checkpoints of the window model: one directory per epoch written whole
(the model, the optimiser state, the training state and the random generator's),
committed by one atomic rename of ``current.json``; the settings a resumed run must
share with its checkpoint (one list); and the lock that keeps a second run out of
a model directory."""

import dataclasses
import hashlib
import json
import os

import numpy as np

from cygrad.ner.model import ModelError, WindowModel, _atomic_write, _fsync_dir, _remove
from cygrad.optim import Adagrad

#: the checkpoint's directory inside a model directory
CHECKPOINT = "checkpoint"


def checkpoint_path(ckpt_dir):
    """The directory of the committed checkpoint in ``ckpt_dir`` (``current.json``
    names it), or None when there is none."""
    cur = os.path.join(ckpt_dir, "current.json")
    if not os.path.isfile(cur):
        return ckpt_dir if os.path.isfile(os.path.join(ckpt_dir, "state.json")) else None
    try:
        with open(cur, encoding="utf-8") as f:
            name = json.load(f)["dir"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ModelError(f"{cur}: corrupt checkpoint pointer ({e})") from None
    if not isinstance(name, str) or os.path.basename(name) != name \
            or not os.path.isdir(os.path.join(ckpt_dir, name)):
        raise ModelError(f"{cur}: names no checkpoint directory ({name!r})")
    return os.path.join(ckpt_dir, name)


def save_checkpoint(ckpt_dir, model, trainer, tcfg, rng, history, best_f1, epoch, bad,
                     average=None):
    """The checkpoint as one unit: a new directory written whole (the model, the
    optimiser state, the training state and RNG), then ``current.json`` naming it
    (one atomic rename: the commit), then the older directories go. A process
    killed at any point leaves the previous checkpoint or this one, never a mix."""
    os.makedirs(ckpt_dir, exist_ok=True)
    name = f"epoch-{epoch:04d}"
    d = os.path.join(ckpt_dir, name)
    if os.path.exists(d):       # left by a run killed before it committed this epoch
        _remove(d)
    os.makedirs(d)
    arrays = {}     # optimiser state; the parameters are in <checkpoint>/model
    if isinstance(trainer.opt, Adagrad):
        names = [k for k, t in trainer.t.items() if t.requires_grad]
        arrays.update({f"adagrad/{k}": g for k, g in zip(names, trainer.opt.state)})
    if average is not None:
        arrays.update({f"average/{k}": a for k, a in average.items()})
    model.save(os.path.join(d, "model"))
    digest = _atomic_write(os.path.join(d, "state.npz"), lambda f: np.savez(f, **arrays))
    meta = {"epoch": epoch, "history": history, "best_f1": best_f1, "bad_epochs": bad,
            "rng": rng.bit_generator.state, "train": dataclasses.asdict(tcfg),
            "state_sha256": digest}
    _atomic_write(os.path.join(d, "state.json"), lambda f: f.write(json.dumps(meta).encode()))
    _fsync_dir(ckpt_dir)
    _atomic_write(os.path.join(ckpt_dir, "current.json"),
                  lambda f: f.write(json.dumps({"dir": name, "epoch": epoch}).encode()))
    for old in sorted(os.listdir(ckpt_dir)):
        if old.startswith("epoch-") and old != name:
            _remove(os.path.join(ckpt_dir, old))


#: the training settings a resumed run must share with its checkpoint (the CLI takes
#: those not given again from the checkpoint); every model setting (Config) must too
RESUME_MUST_MATCH = ("optimizer", "batch_size", "seed", "min_count", "freeze_vectors",
                     "dropout", "hidden_dropout", "word_dropout", "average_params")


def check_model_settings(saved, mcfg, fields):
    """A resumed run's model settings against the checkpoint's model: each of
    ``fields`` (None: every Config field) must match, or ModelError names it."""
    names = [f.name for f in dataclasses.fields(saved)] if fields is None else fields
    for name in names:
        a, b = getattr(saved, name), getattr(mcfg, name)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = tuple(a), tuple(b)
        if a != b:
            raise ModelError(f"resume: the checkpoint's model was built with {name}={a!r}, "
                             f"not {b!r} (start a new --out, or give the checkpoint's)")


def lock_directory(out_dir):
    """An exclusive lock on ``out_dir`` (its file .lock, which holds the owner's pid) for
    as long as the returned file stays open: a second ``cygrad train`` into the same
    directory is refused by name instead of both writing its files."""
    import fcntl
    path = os.path.join(out_dir, ".lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        owner = f.read().strip() or "?"
        f.close()
        raise ModelError(f"{out_dir}: another training run (pid {owner}) is writing this "
                         f"directory; wait for it, or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def checkpoint_settings(ckpt_dir):
    """The TrainConfig a checkpoint was written with, or None if there is none or
    it cannot be read (resuming then reports why)."""
    base = checkpoint_path(ckpt_dir)
    if base is None:
        return None
    from cygrad.ner.train import TrainConfig
    try:
        with open(os.path.join(base, "state.json"), encoding="utf-8") as f:
            train_meta = dict(json.load(f)["train"])
        if "fused" in train_meta:
            train_meta["compile"] = train_meta.pop("fused")
        return TrainConfig(**train_meta)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def load_checkpoint(ckpt_dir, tcfg, comm=None):
    base = checkpoint_path(ckpt_dir)
    if base is None:
        raise ModelError(f"{ckpt_dir}: no checkpoint to resume from")
    path = os.path.join(base, "state.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        npz = os.path.join(base, "state.npz")
        with open(npz, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != meta["state_sha256"]:
                raise ModelError(f"{npz}: checksum mismatch: corrupt checkpoint")
        for key in ("epoch", "history", "best_f1", "bad_epochs", "rng", "train"):
            meta[key]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ModelError(f"{base}: cannot read the checkpoint ({type(e).__name__}: {e})") \
            from None
    from cygrad.ner.train import TrainConfig, Trainer
    train_meta = dict(meta["train"])
    if "fused" in train_meta:       # checkpoints written before cygrad.compile
        train_meta["compile"] = train_meta.pop("fused")
    try:
        saved = TrainConfig(**train_meta)
    except TypeError as e:
        raise ModelError(f"{path}: cannot read the checkpoint's training settings ({e})") \
            from None
    for field in RESUME_MUST_MATCH:
        if getattr(saved, field) != getattr(tcfg, field):
            raise ModelError(f"resume: the checkpoint was trained with {field}="
                             f"{getattr(saved, field)!r}, not {getattr(tcfg, field)!r}")
    model = WindowModel.load(os.path.join(base, "model"))
    with np.load(npz, allow_pickle=False) as z:
        trainer = Trainer(model, tcfg, comm)
        if isinstance(trainer.opt, Adagrad):
            names = [k for k, t in trainer.t.items() if t.requires_grad]
            trainer.opt.state = [np.ascontiguousarray(z[f"adagrad/{k}"]) for k in names]
        avg = {k[len("average/"):]: np.ascontiguousarray(z[k]) for k in z.files
               if k.startswith("average/")}
    if saved.average_params:
        if set(avg) != set(model.params) or any(avg[k].shape != model.params[k].shape
                                                 for k in avg):
            raise ModelError(f"{npz}: the checkpoint lacks the averaged parameters "
                             f"(or they do not fit the model)")
        meta["average"] = avg
    return model, trainer, meta
