"""Training the window model: minibatch SGD or Adagrad over shuffled windows,
dev F1 after every epoch, early stopping, an atomic checkpoint after every
epoch that ``resume=True`` continues from (same seed, same result), the best
model by dev F1 saved beside it, and a plot of loss and dev F1.

The step: the model's graph (cygrad.ner.model.window_logits) under its loss,
compiled with cygrad.compile (one call per batch: forward, backward and the
optimiser's update; one plan serves the CRF's sentence batches of every size:
dynamic rows); ``TrainConfig(compile=False)`` (``--no-compile``) runs the same graph
on the eager executor. tests/ner/test_ner.py checks that both give the same parameters,
for every model the command line trains.
"""

import dataclasses
import hashlib
import json
import os
import time

import numpy as np

import cygrad as cg
from cygrad.ner.checkpoint import (  # noqa: F401  (CHECKPOINT, checkpoint_path: for callers)
    CHECKPOINT,
    RESUME_MUST_MATCH,
    check_model_settings,
    checkpoint_path,
    checkpoint_settings,
    load_checkpoint,
    lock_directory,
    save_checkpoint,
)
from cygrad.ner.data import UNK, Vocab
from cygrad.ner.evaluate import gold_tags, score, tags_of  # noqa: F401  (callers import score here)
from cygrad.ner.model import Config, WindowModel
from cygrad.optim import SGD, Adagrad


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adagrad"       # or "sgd"
    lr: float = 0.03
    seed: int = 0
    patience: int = 4                # epochs without a better dev F1 before stopping
    shuffle: bool = True
    min_count: int = 1               # rarer training words share the <unk> row
    freeze_vectors: bool = False
    compile: bool = True             # the compiled step (cygrad.compile); False: eager graph
    dropout: float = 0.0             # on the window input (training only)
    hidden_dropout: float = 0.0      # on each hidden layer's output
    word_dropout: float = 0.0        # alpha: a word becomes <unk> w.p. alpha / (alpha + count)
    average_params: bool = False     # score and save the mean of the parameters at the ends
                                     # of the epochs so far (Polyak averaging, per epoch)

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adagrad"):
            raise ValueError(f"optimizer must be 'sgd' or 'adagrad', got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"epochs, batch_size and lr must be positive: {self}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) \
                or self.patience < 1:
            raise ValueError(f"patience must be an integer >= 1 (epochs without a better dev "
                             f"F1 before stopping), got {self.patience!r}")
        for name in ("dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0.0 <= self.word_dropout < float("inf"):
            raise ValueError(f"word_dropout must be >= 0, got {self.word_dropout!r}")


class Trainer:
    def __init__(self, model, tcfg, comm=None):
        self.model, self.tcfg = model, tcfg
        self.comm = comm            # an MPI communicator: data-parallel training
        if tcfg.freeze_vectors and model.vectors is None:
            raise ValueError("freeze_vectors (--freeze-vectors) needs pretrained vectors "
                             "(--vectors)")
        self.t = {k: cg.tensor(v, requires_grad=k not in model.FIXED)
                  for k, v in model.params.items()}
        trainable = [t for t in self.t.values() if t.requires_grad]
        # --freeze-vectors: the rows of E that came from the vectors, as they came (the
        # rows a step touched are put back after it; the other rows of E train)
        self.frozen = None
        self.objective = model.config.objective
        if tcfg.freeze_vectors:
            rows = np.flatnonzero(model.vector_rows >= 0)
            self.frozen = (np.isin(np.arange(len(model.vocab.words)), rows),
                           model.params["E"].copy())
        opt = Adagrad if tcfg.optimizer == "adagrad" else SGD
        self.opt = opt(trainable, lr=tcfg.lr)
        self.rank, self.size, self.step_opt = 0, 1, self.opt
        if comm is not None:        # the ranks' gradients averaged before each update
            from cygrad import distributed as dist
            self.rank, self.size = comm.Get_rank(), comm.Get_size()
            self.step_opt = dist.DistributedOptimizer(self.opt, comm)
        # the model's arrays are the tensors' arrays: it sees every update
        model.params = {k: t.data for k, t in self.t.items()}
        v = model.vocab
        self.positive_tag = np.array([t[2:] == model.config.positive for t in v.tags],
                                     dtype=np.int64)
        if self.objective.binary and not self.positive_tag.any():
            types = sorted({t[2:] for t in v.tags if len(t) > 2})
            raise ValueError(f"--positive {model.config.positive!r}: no tag of that type in "
                             f"the training data (its types: {', '.join(types)})")
        self.suffix_of_word = np.array([v.suffix_index.get(w[-3:], v.suffix_index["<unk>"])
                                        for w in v.words], dtype=np.int64)
        self.prefix_of_word = np.array([v.prefix_index.get(w[:3], v.prefix_index.get(UNK, 0))
                                        for w in v.words], dtype=np.int64)
        self.drop = (tcfg.dropout, tcfg.hidden_dropout)
        self.keyed = any(self.drop)
        self.unk_prob = None
        self.bags = None            # (ptr, items) of the training data's n-gram bags
        self.loss_fn = self._loss_fn()
        self._step = self._make_step()

    def _make_step(self):
        """The training step: compiled (one plan serves every batch up to its rows: CRF
        batches of whole sentences vary in size), or the eager graph."""
        if not self.tcfg.compile:
            return self._eager_step
        return cg.compile(self.loss_fn, optimizer=self.step_opt, dynamic_rows=True)

    def _loss_fn(self):
        """The training loss as a function of the batch's arrays, over the model's
        one description (WindowModel.logits_graph)."""
        m, t, cfg = self.model, self.t, self.model.config
        drop = self.drop

        def logits(words, suffixes, cases, prefixes, shapes, ngrams, key):
            bags = (ngrams,) + self.bags if cfg.ngram_dim else None
            return m.logits_graph(t, words, suffixes, cases, dropout=drop, key=key,
                                  prefixes=prefixes, shapes=shapes, ngrams=bags)
        return self.objective.loss_fn(self, logits)

    def set_data(self, enc):
        """What the steps need from the training data as a whole: word dropout's
        probabilities, the n-gram bags."""
        if enc.ngrams is not None:
            bags = (enc.ngram_ptr, enc.ngram_items)
            if self.bags is not None and not all(np.array_equal(a, b)
                                                 for a, b in zip(self.bags, bags)):
                # a compiled step holds the bags it traced with as constants
                self._step = self._make_step()
            self.bags = bags
        self.set_word_counts(enc)

    def set_word_counts(self, enc):
        """Word dropout's probabilities from the training windows' centre words:
        alpha / (alpha + count) for each word id (never for padding or <unk>)."""
        a = self.tcfg.word_dropout
        if not a:
            return
        counts = np.bincount(enc.words[:, self.model.config.k],
                             minlength=len(self.model.vocab.words)).astype(np.float64)
        self.unk_prob = a / (a + counts)
        self.unk_prob[:3] = 0.0                     # padding and <unk> itself
        self.unk_id = self.model.vocab.word_index[UNK]

    def _eager_step(self, *args):
        loss = self.loss_fn(*args)
        self.step_opt.zero_grad()
        loss.backward()
        self.step_opt.step()
        self.step_opt.zero_grad()
        return loss.item()

    def step(self, words, suffixes, cases, labels, rng=None, prefixes=None, shapes=None,
             lengths=None, ngrams=None, share=None):
        """One step on a batch of windows; returns its mean loss (before the update).
        With dropout or word dropout, ``rng`` draws the step's key and <unk> words.
        The CRF loss needs whole sentences: ``lengths`` (sentence lengths, summing
        to the batch). Distributed, ``share`` is this rank's part of the global batch
        (what :meth:`batches` hands out with it)."""
        loss, args = self._step_batch(words, suffixes, cases, labels, rng, prefixes, shapes,
                                      lengths, ngrams, share)
        if self.frozen is not None:
            self._restore_frozen(args)
        return loss

    def _restore_frozen(self, args):
        """--freeze-vectors: the rows of E that came from the vectors go back to them after
        a step: every word row it touched (the batch's words as the step used them, after
        word dropout, and max-margin's corrupt words); distributed, every rank's rows (each
        rank applies the gradient rows of all), so every rank takes part in every step's
        gathering, with or without examples."""
        mask, E0 = self.frozen
        ids = np.zeros(0, np.int64) if args is None else np.concatenate(
            [np.asarray(a, dtype=np.int64).reshape(-1)
             for a in self.objective.words_touched(args)])
        if self.comm is not None and self.size > 1:
            ids = np.concatenate(self.comm.allgather(ids))
        ids = np.unique(ids)
        ids = ids[mask[ids]]
        E = self.t["E"].data
        E[ids] = E0[ids]

    def _step_batch(self, words, suffixes, cases, labels, rng, prefixes, shapes, lengths,
                    ngrams, share):
        """(the mean loss, the step's arguments, None when it had none)."""
        cfg, obj = self.model.config, self.objective
        self.model._ids(words, suffixes, cases, prefixes, shapes)    # needed ones given
        if rng is None and (self.keyed or self.unk_prob is not None or obj.draws):
            raise ValueError("this training step draws random numbers (dropout, word "
                             "dropout or corrupt windows): pass rng=")
        # a feature the model does not read: any array of the batch's shape
        prefixes = words if prefixes is None else prefixes
        shapes = words if shapes is None else shapes
        if cfg.ngram_dim and (ngrams is None or self.bags is None):
            raise ValueError("this model reads character n-grams: call set_data(enc) with the "
                             "training data and pass ngrams=")
        ngrams = words if ngrams is None else ngrams
        extra = ()
        # distributed: every rank draws what one process draws for the whole global
        # batch (its rows R; this rank's rows start at a) and takes its share
        # (share None: the whole batch is this rank's, as with one rank)
        if self.comm is None:
            share = None
        elif share is None and self.size > 1:
            raise ValueError("a step of a distributed trainer needs share= (what batches() "
                             "hands out with the batch)")
        if self.unk_prob is not None:
            if share is not None:
                R, a = share[0], share[1]
                u = rng.random((R,) + words.shape[1:])[a:a + len(words)]
            else:
                u = rng.random(words.shape)
            drop = u < self.unk_prob[words]
            words = np.where(drop, self.unk_id, words)
        if self.comm is not None:   # this rank's examples: the weight of its gradient
            self.step_opt.weight = obj.examples(self, labels)
        if self.keyed:
            key = int(rng.integers(0, 2 ** 62))
            if share is None:
                extra = (np.array(key, dtype=np.int64),)
            else:   # the masks of this rank's rows of the global batch: (key, first row)
                extra = (np.array([key, obj.first_row(share)], dtype=np.int64),)
        if share is not None and len(words) == 0:
            # no example of the global batch on this rank: it draws what the others
            # draw, and takes part in the exchange with nothing
            obj.skip_draws(self, rng, share)
            self._empty_exchange()
            return 0.0, None
        args = obj.targets(self, (words, suffixes, cases, prefixes, shapes, ngrams), labels,
                           lengths, rng, share)
        if args is None:                # nothing to learn from in this batch
            if self.comm is not None:   # the other ranks' exchange needs this rank too
                self._empty_exchange()
            return 0.0, None
        return self._step(*args, *extra), args

    def _empty_exchange(self):
        """Distributed: this rank's part in a step it has no examples for."""
        self.step_opt.weight = 0
        self.step_opt.zero_grad()
        self.step_opt.step()
        self.step_opt.zero_grad()

    def calibrate(self, enc, n=20000):
        """After an epoch: the objective's calibration (max-margin's threshold, on the
        first ``n`` training windows)."""
        self.objective.calibrate(self, enc, n)

    def batches(self, enc, rng):
        """(token indices, sentence lengths, share) of the epoch's batches: shuffled
        windows in groups of batch_size, or, for an objective that trains on whole
        sentences (the CRF), shuffled whole sentences (their lengths given), each
        batch closed once it holds batch_size tokens. Distributed, ``share`` is
        (the global batch's rows, this rank's first row, positive windows before it,
        positive windows in all); else None."""
        n, B = len(enc), self.tcfg.batch_size
        share = None
        if not self.objective.sentences:
            order = rng.permutation(n) if self.tcfg.shuffle else np.arange(n)
            G = B * self.size       # distributed: a global batch, this rank's share of it
            for lo in range(0, n, G):
                batch = np.sort(order[lo:lo + G])
                if self.size > 1:
                    # (fewer windows than ranks, the epoch's last: some ranks get none,
                    # and take part in the step with no examples)
                    parts = np.array_split(batch, self.size)
                    a = sum(len(q) for q in parts[:self.rank])
                    pos = self.positive_tag[enc.labels[batch]]
                    share = (len(batch), a, int(pos[:a].sum()), int(pos.sum()))
                    batch = parts[self.rank]
                yield batch, None, share
            return
        off = enc.offsets
        S = len(off) - 1
        order = rng.permutation(S) if self.tcfg.shuffle else np.arange(S)
        lens = np.diff(off)[order]
        ends = np.cumsum(lens)
        lo = 0
        G = B * self.size           # distributed: this rank's sentences of a global batch
        while lo < S:
            # the first sentence whose end reaches G tokens past lo's start
            base = ends[lo - 1] if lo else 0
            hi = min(S, int(np.searchsorted(ends, base + G, side="left")) + 1)
            a, b = lo, hi
            if self.size > 1:
                if hi - lo < self.size:
                    # fewer sentences than ranks (the epoch's last): one each, the other
                    # ranks none (they take part in the step with no examples)
                    edges = [min(lo + j, hi) for j in range(self.size + 1)]
                else:
                    # consecutive sentences, about the same number of tokens per rank
                    cut = np.searchsorted(ends[lo:hi] - base, np.arange(1, self.size) *
                                          (ends[hi - 1] - base) / self.size,
                                          side="left") + lo
                    cut = np.clip(cut, lo + np.arange(1, self.size), hi - self.size
                                  + np.arange(1, self.size))
                    for j in range(1, len(cut)):    # no rank without sentences
                        cut[j] = max(cut[j], cut[j - 1] + 1)
                    edges = [lo, *cut.tolist(), hi]
                a, b = edges[self.rank], edges[self.rank + 1]
                rows = int(ends[hi - 1] - base)
                first = int((ends[a - 1] if a else 0) - base)
                share = (rows, first, 0, 0)
            sents = order[a:b]
            idx = np.concatenate([np.arange(off[i], off[i + 1]) for i in sents]) \
                if len(sents) else np.zeros(0, np.int64)
            yield idx, lens[a:b], share
            lo = hi

    def epoch(self, enc, rng, progress=None, order_rng=None):
        """One pass over the training windows in batches (shuffled by ``order_rng``,
        default ``rng``); returns the mean loss (over every rank's windows).
        Distributed, every rank passes the same ``rng`` (the one process's): each
        draws what one process draws for the whole global batch and takes its share,
        so that N ranks train the model of one process with N x batch_size."""
        total, seen = 0.0, 0
        for b, (idx, lengths, share) in enumerate(self.batches(enc, order_rng or rng)):
            loss = self.step(enc.words[idx], enc.suffixes[idx], enc.cases[idx], enc.labels[idx],
                             rng, enc.prefixes[idx], enc.shapes[idx], lengths,
                             None if enc.ngrams is None else enc.ngrams[idx], share)
            total += loss * len(idx)
            seen += len(idx)
            if progress is not None:
                progress.update(len(idx) * self.size)
                if b % 50 == 0:
                    progress.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        if self.comm is not None:
            from mpi4py import MPI
            both = np.array([total, seen], dtype=np.float64)
            self.comm.Allreduce(MPI.IN_PLACE, both, op=MPI.SUM)
            total, seen = both
        return total / max(seen, 1)


def train(train_sents, dev_sents, out_dir, mcfg=None, tcfg=None, resume=False, vectors=None,
          log=print, progress=True, threads=None, distributed=False, model_fields=None,
          data_name=None, _comm=None):
    """Train a window model; returns (model, history). See the module docstring.

    ``threads``: the kernels' threads for this call only (a ``cygrad.threads``
    block: the process-wide count is the caller's to set, as the CLI does); with
    ``distributed``, each rank's (cygrad.distributed.init).

    ``distributed``: one rank of an MPI job (``mpiexec -n N cygrad train ...
    --distributed``): each rank trains on its share of every global batch of N x
    batch_size windows, drawing the random numbers one process with that batch size
    draws (the shuffle, word dropout, corrupt windows, the dropout key, the masks
    of its rows of the global batch) and taking its share of them, so that the job
    trains one process's model (to rounding), the gradients averaged over the ranks
    (weighted by their examples) before each update; rank 0 alone logs,
    evaluates, writes the model and the checkpoints; the ranks' parameters are
    checked identical after every epoch. Returns the model on rank 0, None on the
    others.

    ``resume``: the training settings in RESUME_MUST_MATCH must be the checkpoint's,
    and so must ``mcfg``'s (all its fields, or those named in ``model_fields``: the
    command line passes the options given again); ModelError names the first that
    differs.

    ``vectors``: pretrained word vectors (cygrad.ner.vectors.Vectors, or what
    cygrad.ner.vectors.load takes: a name or a path). ``data_name``: what the
    training data was (recorded in the model: "demo" lets ``cygrad evaluate`` find
    the bundled corpus's held-out part)."""
    given_mcfg = mcfg
    mcfg = mcfg or Config()
    tcfg = tcfg or TrainConfig()
    comm, rank = _comm, (0 if _comm is None else _comm.Get_rank())
    if distributed:
        from cygrad import distributed as dist
        rank, size = dist.init(threads=threads)
        threads = None
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        if rank != 0:
            log, progress = (lambda *a, **k: None), False
    if not resume and not any(len(s.tokens) for s in train_sents):
        raise ValueError("no training sentences (an empty file, or only -DOCSTART- lines?)")
    if comm is not None:
        _check_ranks_agree(comm, mcfg, tcfg, train_sents, dev_sents, resume)
    if threads is not None:     # for this call only
        with cg.threads(threads):
            return train(train_sents, dev_sents, out_dir, mcfg=given_mcfg, tcfg=tcfg,
                         resume=resume, vectors=vectors, log=log, progress=progress,
                         threads=None, distributed=False, model_fields=model_fields,
                         data_name=data_name, _comm=comm)
    os.makedirs(out_dir, exist_ok=True)
    lock = lock_directory(out_dir) if rank == 0 else None   # (held until train returns)
    ckpt_dir = os.path.join(out_dir, CHECKPOINT)
    state = None
    if resume:
        model, trainer, state = load_checkpoint(ckpt_dir, tcfg, comm)
        if given_mcfg is not None:
            check_model_settings(model.config, given_mcfg, model_fields)
        mcfg = model.config
        log(f"resuming after epoch {state['epoch']} from {ckpt_dir}")
    else:
        if isinstance(vectors, (str, os.PathLike)):
            from cygrad.ner.vectors import load as _load_vectors
            vectors = _load_vectors(vectors)
        if vectors is not None:     # the model records the vectors it needs
            mcfg = dataclasses.replace(mcfg, vectors=vectors.source,
                                       vectors_sha256=vectors.sha256)
        vocab = Vocab.build(train_sents, min_count=tcfg.min_count, vectors=vectors)
        model = WindowModel(mcfg, vocab, seed=tcfg.seed, vectors=vectors)
        if vectors is not None:
            n = model.init_from_vectors()
            log(f"pretrained vectors for {n} of {len(vocab.words)} words "
                f"({vectors.source}, {len(vectors)} words)")
        trainer = Trainer(model, tcfg, comm)
    if comm is not None:            # every rank starts from rank 0's parameters and state
        from cygrad import distributed as dist
        dist.broadcast_parameters(list(trainer.t.values()), comm=comm)
        if isinstance(trainer.opt, Adagrad):
            dist.broadcast_parameters(trainer.opt.state, comm=comm)
    tr = model.encode(train_sents)
    trainer.set_data(tr)
    dv = model.encode(dev_sents) if dev_sents else None
    rng = np.random.default_rng(tcfg.seed)
    history, best_f1, start, bad = [], -1.0, 0, 0
    average = None                  # name -> float64 mean over the epochs so far
    if state is not None:
        rng.bit_generator.state = state["rng"]
        history, best_f1, start, bad = state["history"], state["best_f1"], state["epoch"], \
            state["bad_epochs"]
        average = state.get("average")
    log(f"{len(tr)} training windows, {len(dv) if dv else 0} dev windows, vocabulary "
        f"{len(model.vocab.words)} words, tags {model.vocab.tags}, threads "
        f"{cg.get_num_threads()}" + (f", {trainer.size} ranks (global batch "
                                     f"{trainer.size * tcfg.batch_size})" if comm else ""))
    bar_cls = _tqdm() if progress else None
    for epoch in range(start, tcfg.epochs):
        if bad >= tcfg.patience or best_f1 >= 1.0:      # F1 100%: nothing left to gain
            break
        t0 = time.perf_counter()
        bar = bar_cls(total=len(tr), desc=f"epoch {epoch + 1}", unit="win",
                      unit_scale=True, leave=False) if bar_cls else None
        if comm is None:
            loss = trainer.epoch(tr, rng, bar)
        else:       # the shuffle from (seed, epoch), the same on every rank and rank count
            # the one process's random stream on every rank (the shuffle, word dropout,
            # corrupt windows: each rank takes its share of the global batch's draws)
            loss = trainer.epoch(tr, rng, bar)
            dist.check_identical(list(trainer.t.values()), comm)     # else every rank raises
        trainer.calibrate(tr)
        if bar is not None:
            bar.close()
        secs = time.perf_counter() - t0
        entry = {"epoch": epoch + 1, "loss": loss, "seconds": secs,
                 "windows_per_s": len(tr) / secs}
        raw = None
        if tcfg.average_params:
            # the running mean of the epochs' end points; scored and saved in place of
            # the parameters, which training continues from
            if average is None:
                average = {k: a.astype(np.float64) for k, a in model.params.items()}
            else:
                for k, a in model.params.items():
                    average[k] += (a - average[k]) / (epoch + 1)
            raw = {k: a.copy() for k, a in model.params.items()}
            for k, a in model.params.items():
                a[...] = average[k]
            trainer.calibrate(tr)       # max-margin: the threshold of the averaged model
        if model.vectors is not None:   # words past the vocabulary: the vectors' map
            model.fit_vector_map()
        if dv is not None and rank == 0:
            sc = score(model, dev_sents, dv)
            entry.update(dev_p=sc.precision, dev_r=sc.recall, dev_f1=sc.f1, dev_acc=sc.accuracy)
            if sc.seen is not None:
                entry.update(dev_f1_seen=sc.seen.f1, dev_f1_unseen=sc.unseen.f1)
            improved = sc.f1 > best_f1
            log(f"epoch {epoch + 1:3d}  loss {loss:.4f}  dev {sc.summary()}  "
                f"{secs:.2f}s ({len(tr) / secs:,.0f} windows/s)")
        else:
            improved = True
            built = getattr(trainer._step, "plans_built", None)    # (compiled steps)
            log(f"epoch {epoch + 1:3d}  loss {loss:.4f}  {secs:.2f}s"
                + (f"  ({built} plans built so far)" if built is not None else ""))
        if comm is not None:        # rank 0's verdict (and dev scores) for every rank
            improved, entry = comm.bcast((improved, entry), root=0)
        history.append(entry)
        if improved:
            best_f1 = entry.get("dev_f1", best_f1)
            bad = 0
            if rank == 0:
                model.save(out_dir, extra={"history": history,
                                           "train": dataclasses.asdict(tcfg),
                                           "train_data": data_name})
        else:
            bad += 1
        if raw is not None:
            for k, a in model.params.items():
                a[...] = raw[k]
        if rank == 0:
            save_checkpoint(ckpt_dir, model, trainer, tcfg, rng, history, best_f1, epoch + 1,
                             bad, average)
            _plot(history, os.path.join(out_dir, "training.png"))
        if comm is not None:
            comm.Barrier()          # the checkpoint is committed before any rank goes on
    if best_f1 >= 1.0 and len(history) < tcfg.epochs:
        log("early stop: dev F1 is 100.00, no epoch can improve on it")
    elif bad >= tcfg.patience:
        log(f"early stop: no better dev F1 for {tcfg.patience} epochs")
    if rank != 0:
        return None, history
    best = WindowModel.load(out_dir)
    lock.close()
    return best, history


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:   # pragma: no cover - tqdm is a dependency
        return None
    return tqdm


def _plot(history, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:blue")
    if any("dev_f1" in h for h in history):
        ax2 = ax.twinx()
        f1 = [100 * h.get("dev_f1", np.nan) for h in history]
        ax2.plot(epochs, f1, "s-", color="tab:red")
        ax2.set_ylabel("dev F1 (entity level)", color="tab:red")
        best = int(np.nanargmax(f1))        # the epoch of the saved model
        ax2.axvline(epochs[best], color="0.6", linestyle=":", linewidth=1)
        ax2.annotate(f"best: epoch {epochs[best]}, F1 {f1[best]:.2f}", (epochs[best], f1[best]),
                     textcoords="offset points", xytext=(4, -12), fontsize=8,
                     color="tab:red")
    ax.set_title("cygrad window NER")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _check_ranks_agree(comm, mcfg, tcfg, train_sents, dev_sents, resume):
    """Every rank of a distributed run must train the same job: the same model and
    training settings and the same data in the same order. One small allgather of
    the settings and a digest of the data; every rank raises the same ValueError,
    naming what differs (instead of a mismatched exchange, a hang, or a silently
    other model)."""
    def digest(sents):
        h = hashlib.sha256()
        for s in sents:
            h.update("\x1f".join(s.tokens).encode("utf-8", "surrogatepass") + b"\x1e")
            h.update("\x1f".join(s.tags).encode("utf-8", "surrogatepass") + b"\x1d")
        return h.hexdigest()
    settings = {"model " + k: v for k, v in dataclasses.asdict(mcfg).items()}
    settings.update({k: v for k, v in dataclasses.asdict(tcfg).items()})
    settings["resume"] = bool(resume)
    mine = (json.dumps(settings, sort_keys=True, default=str), digest(train_sents),
            digest(dev_sents or []))
    every = comm.allgather(mine)
    ref = json.loads(every[0][0])
    for r, (st, tr, dv) in enumerate(every[1:], 1):
        other = json.loads(st)
        for k in sorted(set(ref) | set(other)):
            if ref.get(k) != other.get(k):
                raise ValueError(f"--distributed: rank {r} was started with {k} = "
                                 f"{other.get(k)!r}, rank 0 with {ref.get(k)!r}: every rank "
                                 f"must run the same command")
        if tr != every[0][1]:
            raise ValueError(f"--distributed: rank {r} read other training data than rank 0 "
                             f"(another file, or its sentences in another order)")
        if dv != every[0][2]:
            raise ValueError(f"--distributed: rank {r} read another dev set than rank 0")
