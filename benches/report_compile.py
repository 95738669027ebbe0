"""Compiled training steps (cygrad.compile) against the eager graph, and against the
hand-fused window step they replaced, as ratios measured in one interleaved run.

    python benches/report_compile.py                    # idle
    python benches/report_compile.py --busy             # beside one busy process
    python benches/report_compile.py --quick            # fewer rounds and sizes
    python benches/report_compile.py --baseline /path/to/python
        # also the hand-fused step (cygrad._window._FusedStep) of an older cygrad
        # installed for that interpreter, timed in a worker process between ours
    python benches/report_compile.py --before /path/to/old/checkout --cases window,ner
        # also the compiled step of another checkout (built in place: python setup.py
        # build_ext --inplace), timed in a worker process between ours ("before/compiled":
        # the cost of what changed, e.g. the guards)

Each round times every contender on the same case back to back (order alternating),
so the ratio of one round sees one machine state; the report gives the median ratio
over the rounds and its range. Times are per training step (forward, backward and
update), inputs made outside the timed loop.

Cases:
  window   the lecture's window model (one table V=20000 d=50, w=5, H=300, C=9, tanh,
           softmax, SGD): compiled vs eager (and vs the old fused step if present)
  ner      the CLI's default model (word/suffix/casing tables, Adagrad): same
  deep     2 hidden layers 300-100, Adagrad; margin: max-margin with corrupt windows;
  average  the averaged window: compiled vs eager
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import cygrad as cg
import cygrad.optim  # noqa: F401  (older cygrads do not import it themselves)

try:
    from cygrad._window import _FusedStep  # the hand-fused step, until it is removed
except ImportError:
    _FusedStep = None


def _params(rng, shapes, dt):
    out = []
    for s in shapes:
        if len(s) == 1:
            out.append(np.zeros(s, dt))
        else:
            out.append(rng.uniform(-0.1, 0.1, s).astype(dt))
    return out


def make_case(name, B, dt=np.float32, V=20000, only=None):
    """(contenders: name -> step(i)), for a case; step(i) runs step number i.
    ``only``: build just that contender."""
    rng = np.random.default_rng(0)
    d, w, H, C = 50, 5, 300, 9
    n_batches = 8
    wins = [rng.integers(0, V, (B, w)) for _ in range(n_batches)]
    labs = [rng.integers(0, C, B) for _ in range(n_batches)]
    contenders = {}
    if name in ("window", "ner"):
        if name == "window":
            tables = [(V, d)]
            opt_cls = cg.optim.SGD
        else:
            tables = [(V, d), (3000, 20), (6, 5)]
            opt_cls = cg.optim.Adagrad
        D = w * sum(t[1] for t in tables)
        ids = [[rng.integers(0, t[0], (B, w)) for _ in range(n_batches)] for t in tables]
        init = _params(rng, tables + [(H, D), (H,), (C, H), (C,)], dt)

        def build(compiled):
            ts = [cg.tensor(a, requires_grad=True) for a in init]
            nt = len(tables)
            opt = opt_cls(ts, lr=0.01)

            def loss_fn(*a):
                xs = [cg.embedding_windows(ts[k], a[k], sparse=True) for k in range(nt)]
                x = cg.concat(xs, axis=1) if nt > 1 else xs[0]
                h = cg.tanh(cg.linear(x, ts[nt], ts[nt + 1]))
                return cg.softmax_cross_entropy(cg.linear(h, ts[nt + 2], ts[nt + 3]), a[nt])
            if compiled:
                step = cg.compile(loss_fn, optimizer=opt, strict=True)
                return lambda i: step(*[ids[k][i % n_batches] for k in range(nt)],
                                      labs[i % n_batches])

            def eager(i):
                opt.zero_grad()
                loss = loss_fn(*[ids[k][i % n_batches] for k in range(nt)], labs[i % n_batches])
                loss.backward()
                opt.step()
            return eager

        if only in (None, "compiled"):
            contenders["compiled"] = build(True)
        if only in (None, "eager"):
            contenders["eager"] = build(False)
        if _FusedStep is not None and only in (None, "fused"):
            arrs = [a.copy() for a in init]
            nt = len(tables)
            kw = {}
            if opt_cls is cg.optim.Adagrad:
                acc = [np.zeros_like(a) for a in arrs]
                kw = dict(optimizer="adagrad", accumulators={
                    "tables": acc[:nt], "W": acc[nt], "b": acc[nt + 1], "U": acc[nt + 2],
                    "c": acc[nt + 3]})
            fs = _FusedStep(arrs[:nt], *arrs[nt:], w, **kw)
            contenders["fused"] = lambda i: fs.step([ids[k][i % n_batches] for k in range(nt)],
                                                    labs[i % n_batches], 0.01)
        return contenders
    if name in ("deep", "average", "margin"):
        if name == "deep":
            shapes = [(V, d), (300, w * d), (300,), (100, 300), (100,), (C, 100), (C,)]
        elif name == "average":
            shapes = [(V, d), (H, d), (H,), (C, H), (C,)]
        else:
            shapes = [(V, d), (H, w * d), (H,), (1, H), (1,)]
        init = _params(rng, shapes, dt)
        corrupt = []
        for i in range(n_batches):
            c = wins[i].copy()
            c[:, w // 2] = rng.integers(0, V, B)
            corrupt.append(c)

        def build(compiled):
            ts = [cg.tensor(a, requires_grad=True) for a in init]
            opt = cg.optim.Adagrad(ts, lr=0.01)
            E = ts[0]

            def scores(win):
                x = cg.embedding_windows(E, win, sparse=True)
                if name == "average":
                    x = x.reshape(x.shape[0], w, d).mean(axis=1)
                h = x
                for k in range(1, len(ts) - 2, 2):
                    h = cg.tanh(cg.linear(h, ts[k], ts[k + 1]))
                return cg.linear(h, ts[-2], ts[-1])

            if name == "margin":
                def loss_fn(win, cor):
                    return cg.max_margin(scores(win).reshape(B), scores(cor).reshape(B))
                data = lambda i: (wins[i % n_batches], corrupt[i % n_batches])   # noqa: E731
            else:
                def loss_fn(win, lab):
                    return cg.softmax_cross_entropy(scores(win), lab)
                data = lambda i: (wins[i % n_batches], labs[i % n_batches])      # noqa: E731
            if compiled:
                step = cg.compile(loss_fn, optimizer=opt, strict=True)
                return lambda i: step(*data(i))

            def eager(i):
                opt.zero_grad()
                loss = loss_fn(*data(i))
                loss.backward()
                opt.step()
            return eager

        return {"compiled": build(True), "eager": build(False)}
    raise ValueError(name)


def time_steps(fn, seconds):
    fn(0)
    fn(1)       # the first call traces: not timed
    n, t0, i = 0, time.perf_counter(), 2
    while True:
        fn(i)
        i += 1
        n += 1
        el = time.perf_counter() - t0
        if el >= seconds and n >= 3:
            return el / n


def worker(only):
    """Serve timings of one contender (the fused step, or the compiled step of the
    cygrad this process imports): one JSON request per line on stdin."""
    import json
    cases = {}
    for line in sys.stdin:
        req = json.loads(line)
        key = (req["case"], req["B"], req["threads"])
        with cg.threads(req["threads"]):
            if key not in cases:
                cases[key] = make_case(req["case"], req["B"], only=only)[only]
            t = time_steps(cases[key], req["seconds"])
        print(json.dumps({"t": t}), flush=True)


class Baseline:
    """The fused step of another cygrad (another interpreter), in a worker process."""

    def __init__(self, python, src=None):
        import json
        self.json = json
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        only = "fused"
        if src is not None:         # another checkout's compiled step
            env["PYTHONPATH"] = os.path.join(os.path.abspath(src), "src")
            only = "compiled"
        self.p = subprocess.Popen([python, os.path.abspath(__file__), "--worker", only],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env, cwd="/")

    def timer(self, case, B, nt, seconds):
        def run(_):
            self.p.stdin.write(self.json.dumps({"case": case, "B": B, "threads": nt,
                                                "seconds": seconds}) + "\n")
            self.p.stdin.flush()
            return self.json.loads(self.p.stdout.readline())["t"]
        return run

    def close(self):
        self.p.kill()


def busy_loop():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", action="store_true", help="run beside one busy process")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--cases", default=None, help="comma-separated case names")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seconds", type=float, default=0.15, help="per contender and round")
    ap.add_argument("--baseline", metavar="PYTHON",
                    help="an interpreter with an older cygrad that has the fused step")
    ap.add_argument("--before", metavar="CHECKOUT",
                    help="another checkout, built in place, whose compiled step is timed too")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    base_proc = Baseline(args.baseline) if args.baseline else None
    before_proc = Baseline(sys.executable, args.before) if args.before else None
    rounds = args.rounds or (3 if args.quick else 7)
    plan = [("window", B) for B in (1, 8, 32, 128, 512, 2048)] + \
           [("ner", B) for B in (1, 8, 32, 128, 512, 2048)] + \
           [(c, B) for c in ("deep", "margin", "average") for B in (32, 512)]
    if args.quick:
        plan = [p for p in plan if p[1] in (8, 32, 512)]
    if args.cases:
        keep = args.cases.split(",")
        plan = [p for p in plan if p[0] in keep]
    thread_counts = [int(t) for t in args.threads.split(",")]
    busy = busy_loop() if args.busy else None
    try:
        rows = []
        for case, B in plan:
            for nt in thread_counts:
                with cg.threads(nt):
                    cont = make_case(case, B)
                    timers = {n: (lambda f: lambda: time_steps(f, args.seconds))(f)
                              for n, f in cont.items()}
                    if base_proc is not None and case in ("window", "ner") \
                            and "fused" not in cont:
                        timers["fused"] = (lambda f: lambda: f(0))(
                            base_proc.timer(case, B, nt, args.seconds))
                    if before_proc is not None:
                        timers["before"] = (lambda f: lambda: f(0))(
                            before_proc.timer(case, B, nt, args.seconds))
                    names = list(timers)
                    per = {n: [] for n in names}
                    for r in range(rounds):
                        order = names if r % 2 == 0 else names[::-1]
                        for n in order:
                            per[n].append(timers[n]())
                rows.append((case, B, nt, per))
                base = per["compiled"]
                parts = []
                for other in ("before", "fused", "eager"):
                    if other in per:
                        rat = [o / c for o, c in zip(per[other], base)]
                        parts.append(f"{other}/compiled {statistics.median(rat):.2f}x "
                                     f"[{min(rat):.2f}-{max(rat):.2f}]")
                print(f"{case:8s} B={B:5d} threads={nt}  compiled "
                      f"{statistics.median(base) * 1e6:9.1f} us  " + "  ".join(parts),
                      flush=True)
    finally:
        if busy is not None:
            busy.kill()
        for proc in (base_proc, before_proc):
            if proc is not None:
                proc.close()
    print(f"\n{'busy' if args.busy else 'idle'}; {rounds} rounds; cygrad {cg.__version__} "
          f"{cg.build_info()['gemm_path']}; ratio > 1: compiled faster", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
