"""Differential fuzzing of cygrad.kernels against cygrad.kernels.reference (issue 13's probe,
made part of the project). Run by tests/kernels/test_fuzz.py in a child process, so that a
crash or a hang is a failing test that names its input, not a dead test run:

    python tests/kernels/fuzz_kernels.py --log LOG [--seconds S] [--examples N] [--seed K]

Hypothesis draws shapes (empty, one, odd, a few hundred), dtypes, byte orders,
strides (sliced, Fortran, negative), misaligned starts and read-only inputs, and
outputs that are fresh, the very input (in place) or overlapping it. Two kinds of
case, each with its oracle:

- valid (any layout of the inputs): the kernel must give the reference's answer,
  computed on plain float64 copies;
- invalid (a wrong dtype, a mismatched shape, an out that partly overlaps an input
  or cannot be written, an index out of range, a non-finite learning rate): the
  kernel must raise TypeError, ValueError or IndexError naming the function or the argument,
  and leave every array it would update unchanged.

Before each example the case is written to LOG, so a crash leaves its input
behind. Prints one JSON line of counts; exits 1 when an example failed.
"""

import argparse
import json
import sys
import time
import traceback

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st

from cygrad import kernels as K
from cygrad import reference as R

ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "hardtanh", "gelu", "silu"]
LAYOUTS = ["c", "c", "big", "misaligned", "strided", "fortran", "reversed", "readonly"]
COUNTS = {"examples": 0, "valid": 0, "clean_errors": 0, "failures": 0}
FAILURES = []
LOG = None


class Invalid(Exception):
    """What a case expects: the kernel refuses the call (names listed)."""


# ------------------------------------------------------------------ layouts

def layout(a, how):
    """An array equal to ``a`` laid out as ``how`` says."""
    if how == "c" or a.ndim == 0 and how in ("strided", "fortran", "reversed"):
        return np.array(a, copy=True)
    if how == "big":
        return a.astype(a.dtype.newbyteorder(">"))
    if how == "misaligned":
        buf = np.zeros(a.nbytes + a.itemsize + 1, np.uint8)
        start = 1 if buf.ctypes.data % a.itemsize == 0 else 0
        out = np.frombuffer(buf, a.dtype, count=a.size, offset=start).reshape(a.shape)
        out[...] = a
        return out
    if how == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        view = big[..., ::2]
        view[...] = a
        return view
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "reversed":
        flipped = np.ascontiguousarray(a[::-1])
        return flipped[::-1]
    if how == "readonly":
        out = np.array(a, copy=True)
        out.flags.writeable = False
        return out
    raise AssertionError(how)


def f64(a):
    return np.array(a, dtype=np.float64, copy=True)


def close(got, want, dtype, what, scale=1.0):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape}, reference {want.shape}")
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (3e-5, 2e-6)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


def floats(draw, shape, dtype, lo=-4.0, hi=4.0):
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(dtype)


def ints(draw, shape, high, dtype=np.int64):
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


# ------------------------------------------------------------------ valid cases

def case_activation(draw):
    name = draw(st.sampled_from(ACTS))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=3)))
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 300)),)
    z = floats(draw, shape, dtype)
    backward = draw(st.booleans())
    how = draw(st.sampled_from(LAYOUTS))
    out_kind = draw(st.sampled_from(["none", "fresh", "inplace"]))
    describe(f"{name}{'_backward' if backward else ''} {shape} {np.dtype(dtype)} {how} "
             f"out={out_kind}")
    if not backward:
        want = getattr(R, name)(f64(z))
        x = layout(z, how)
        if out_kind == "inplace":
            x = np.array(z, copy=True)
            got = getattr(K, name)(x, out=x)
        elif out_kind == "fresh":
            got = getattr(K, name)(x, out=np.empty(shape, dtype))
        else:
            got = getattr(K, name)(x)
    else:
        g = floats(draw, shape, dtype)
        saved = np.asarray(getattr(R, name)(z)) if R.ACTIVATIONS[name][2] == "output" else z
        want = getattr(R, name + "_backward")(f64(g), f64(saved))
        gx, sx = layout(g, how), layout(saved, draw(st.sampled_from(LAYOUTS)))
        fn = getattr(K, name + "_backward")
        if out_kind == "inplace":
            gx = np.array(g, copy=True)
            got = fn(gx, sx, out=gx)
        elif out_kind == "fresh":
            got = fn(gx, sx, out=np.empty(shape, dtype))
        else:
            got = fn(gx, sx)
    assert got.dtype == dtype, (got.dtype, dtype)
    close(got, want, dtype, name)


def case_matmul(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    big = draw(st.integers(0, 4)) == 0
    top = 80 if big else 9
    m, k, n = (draw(st.integers(0, top)) for _ in range(3))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    a = floats(draw, (k, m) if ta else (m, k), dtype, -1, 1)
    b = floats(draw, (n, k) if tb else (k, n), dtype, -1, 1)
    acc = draw(st.booleans())
    ha, hb = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS))
    describe(f"matmul m={m} k={k} n={n} ta={ta} tb={tb} acc={acc} {np.dtype(dtype)} {ha}/{hb}")
    want = (f64(a).T if ta else f64(a)) @ (f64(b).T if tb else f64(b))
    if acc:
        c0 = floats(draw, (m, n), dtype, -1, 1)
        out = np.array(c0, copy=True)
        got = K.matmul(layout(a, ha), layout(b, hb), trans_a=ta, trans_b=tb, out=out,
                       accumulate=True)
        assert got is out
        want = want + f64(c0)
    else:
        got = K.matmul(layout(a, ha), layout(b, hb), trans_a=ta, trans_b=tb)
    close(got, want, dtype, "matmul", scale=max(k, 1))


def case_bias(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    B, H = draw(st.integers(0, 40)), draw(st.integers(1, 40))
    z, b = floats(draw, (B, H), dtype), floats(draw, (H,), dtype)
    hz, hb = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS))
    describe(f"add_bias/bias_grad {B}x{H} {np.dtype(dtype)} {hz}/{hb}")
    close(K.add_bias(layout(z, hz), layout(b, hb)), f64(z) + f64(b), dtype, "add_bias")
    close(K.bias_grad(layout(z, hz)), f64(z).sum(0), dtype, "bias_grad", scale=max(B, 1))


def case_losses(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    B, C = draw(st.integers(1, 40)), draw(st.integers(1, 12))
    how = draw(st.sampled_from(LAYOUTS))
    kind = draw(st.sampled_from(["softmax", "bce", "margin"]))
    describe(f"{kind} B={B} C={C} {np.dtype(dtype)} {how}")
    if kind == "softmax":
        logits = floats(draw, (B, C), dtype, -8, 8)
        labels = ints(draw, (B,), C, draw(st.sampled_from([np.int64, np.int32, np.intp])))
        loss, d = K.softmax_cross_entropy(layout(logits, how), layout(labels, how))
        wl, wd = R.softmax_cross_entropy(f64(logits), labels)
    elif kind == "bce":
        s = floats(draw, (B,), dtype, -8, 8)
        t = ints(draw, (B,), 2).astype(dtype)
        loss, d = K.sigmoid_binary_cross_entropy(layout(s, how), layout(t, how))
        wl, wd = R.sigmoid_binary_cross_entropy(f64(s), f64(t))
    else:
        s, sc = floats(draw, (B,), dtype), floats(draw, (B,), dtype)
        margin = draw(st.sampled_from([1.0, 0.5, 0.0]))
        loss, d, dc = K.max_margin(layout(s, how), layout(sc, how), margin=margin)
        wl, wd, wdc = R.max_margin(f64(s), f64(sc), margin=margin)
        close(dc, wdc, dtype, "max_margin d_corrupt")
    close(loss, wl, dtype, kind + " loss")
    close(d, wd, dtype, kind + " gradient")


def case_embedding(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    V, d = draw(st.integers(1, 30)), draw(st.integers(1, 9))
    B, w = draw(st.integers(0, 20)), draw(st.integers(1, 5))
    table = floats(draw, (V, d), dtype)
    win = ints(draw, (B, w), V, draw(st.sampled_from([np.int64, np.int32, np.uint16])))
    dX = floats(draw, (B, w * d), dtype)
    kind = draw(st.sampled_from(["gather", "scatter", "sgd", "adagrad", "adam"]))
    ht, hw, hx = (draw(st.sampled_from(LAYOUTS)) for _ in range(3))
    lr = draw(st.sampled_from([0.1, 1e-3, 2.5]))
    describe(f"embedding_{kind} V={V} d={d} B={B} w={w} {np.dtype(dtype)} {win.dtype} "
             f"{ht}/{hw}/{hx}")
    if kind == "gather":
        close(K.embedding_gather(layout(table, ht), layout(win, hw)),
              R.embedding_gather(f64(table), win), dtype, "embedding_gather")
        return
    # the updated array is plain (writable, native); the others take any layout
    if kind == "scatter":
        got, want = np.array(table, copy=True), f64(table)
        K.embedding_scatter_add(got, layout(win, hw), layout(dX, hx))
        R.embedding_scatter_add(want, win, f64(dX))
    elif kind == "sgd":
        got, want = np.array(table, copy=True), f64(table)
        K.embedding_sgd_update(got, layout(win, hw), layout(dX, hx), lr)
        R.embedding_sgd_update(want, win, f64(dX), lr)
    elif kind == "adam":
        step, wd, dec = (draw(st.sampled_from(c)) for c in ([1, 3, 10], [0.0, 0.01], [0, 1]))
        m0, v0 = floats(draw, (V, d), dtype), np.abs(floats(draw, (V, d), dtype)) + 0.1
        got, want = np.array(table, copy=True), f64(table)
        ms, wms = [np.array(m0, copy=True), np.array(v0, copy=True)], [f64(m0), f64(v0)]
        K.embedding_adam_update(got, *ms, layout(win, hw), layout(dX, hx), step, lr,
                                weight_decay=wd, decoupled=bool(dec))
        R.embedding_adam_update(want, *wms, win, f64(dX), step, lr, weight_decay=wd,
                                decoupled=bool(dec))
        for a, b, n in zip(ms, wms, ("exp_avg", "exp_avg_sq")):
            close(a, b, dtype, "embedding_adam " + n, scale=(w * B + 1) ** 2)
    else:
        acc0 = np.abs(floats(draw, (V, d), dtype))
        got, want = np.array(table, copy=True), f64(table)
        acc, wacc = np.array(acc0, copy=True), f64(acc0)
        K.embedding_adagrad_update(got, acc, layout(win, hw), layout(dX, hx), lr)
        R.embedding_adagrad_update(want, wacc, win, f64(dX), lr)
        close(acc, wacc, dtype, "embedding_adagrad accum", scale=w * B + 1)
    close(got, want, dtype, "embedding_" + kind, scale=w * B + 1)


def case_dense_updates(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = (draw(st.integers(0, 30)), draw(st.integers(1, 30)))
    p0, g = floats(draw, shape, dtype), floats(draw, shape, dtype)
    hg = draw(st.sampled_from(LAYOUTS))
    kind = draw(st.sampled_from(["sgd", "adagrad", "outer", "adam"]))
    lr = draw(st.sampled_from([0.1, 1e-3, 2.5]))
    describe(f"{kind} {shape} {np.dtype(dtype)} {hg}")
    got, want = np.array(p0, copy=True), f64(p0)
    if kind == "sgd":
        K.sgd_update(got, layout(g, hg), lr)
        R.sgd_update(want, f64(g), lr)
    elif kind == "adagrad":
        acc0 = np.abs(floats(draw, shape, dtype))
        acc, wacc = np.array(acc0, copy=True), f64(acc0)
        K.adagrad_update(got, acc, layout(g, hg), lr)
        R.adagrad_update(want, wacc, f64(g), lr)
        close(acc, wacc, dtype, "adagrad accum")
    elif kind == "adam":
        step, wd, dec = (draw(st.sampled_from(c)) for c in ([1, 3, 10], [0.0, 0.01], [0, 1]))
        m0, v0 = floats(draw, shape, dtype), np.abs(floats(draw, shape, dtype)) + 0.1
        ms, wms = [np.array(m0, copy=True), np.array(v0, copy=True)], [f64(m0), f64(v0)]
        K.adam_update(got, *ms, layout(g, hg), step, lr, weight_decay=wd, decoupled=bool(dec))
        R.adam_update(want, *wms, f64(g), step, lr, weight_decay=wd, decoupled=bool(dec))
        for a, b, n in zip(ms, wms, ("exp_avg", "exp_avg_sq")):
            close(a, b, dtype, "adam " + n, scale=16)
    else:
        B = draw(st.integers(1, 12))
        delta = floats(draw, (B, shape[0]), dtype)
        x = floats(draw, (B, shape[1]), dtype)
        K.outer_accumulate(got, layout(delta, hg), layout(x, draw(st.sampled_from(LAYOUTS))))
        R.outer_accumulate(want, f64(delta), f64(x))
        close(got, want, dtype, "outer_accumulate", scale=B)
        return
    close(got, want, dtype, kind + "_update")


def case_viterbi(draw):
    T = draw(st.integers(1, 6))
    lengths = draw(st.lists(st.integers(0, 7), min_size=1, max_size=4))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    # distinct scores: the best path is unique, whatever the order of additions
    seed = draw(st.integers(0, 2**32 - 1))
    scores = (np.random.default_rng(seed).permutation(n * T).reshape(n, T) * 0.37).astype(dtype)
    allowed = np.random.default_rng(seed + 1).random((T, T)) < 0.7
    np.fill_diagonal(allowed, True)        # some path always exists
    start = np.ones(T, bool)
    hs, ho = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS))
    describe(f"constrained_viterbi T={T} lengths={lengths} {np.dtype(dtype)} {hs}/{ho}")
    got = K.constrained_viterbi(layout(scores, hs), layout(offsets, ho), layout(allowed, hs),
                                start)
    want = R.constrained_viterbi(f64(scores), offsets, allowed, start)
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ invalid cases

def case_invalid(draw):
    """A call the kernel must refuse by name, changing nothing."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    other = np.float64 if dtype == np.float32 else np.float32
    n = draw(st.integers(1, 50))
    x = floats(draw, (n,), dtype)
    kind = draw(st.sampled_from([
        "dtype", "mixed", "shape", "overlap", "out_layout", "lr", "ids", "ids_dtype",
        "matmul_shape", "labels", "update_layout"]))
    describe(f"invalid {kind} n={n} {np.dtype(dtype)}")
    touched = []      # arrays that must come out unchanged

    def watch(a):
        touched.append((a, np.array(a, copy=True)))
        return a

    act = draw(st.sampled_from(ACTS))
    if kind == "dtype":
        bad = x.astype(draw(st.sampled_from([np.int64, np.float16, np.complex128, np.bool_])))
        call = lambda: getattr(K, act)(bad)                                   # noqa: E731
        names = (act, "z")
    elif kind == "mixed":
        call = lambda: getattr(K, act + "_backward")(x, x.astype(other))        # noqa: E731
        names = (act, "saved", "grad_out", "dtype")
    elif kind == "shape":
        y = floats(draw, (n + draw(st.integers(1, 3)),), dtype)
        call = lambda: getattr(K, act + "_backward")(x, y)                      # noqa: E731
        names = (act, "saved", "grad_out", "shape")
    elif kind == "overlap":         # buf[:-1] and buf[1:] share n - 1 elements
        buf = watch(floats(draw, (max(n, 2) + 1,), dtype))
        call = lambda: getattr(K, act)(buf[:-1], out=buf[1:])                   # noqa: E731
        names = (act, "out", "overlap")
    elif kind == "out_layout":
        how = draw(st.sampled_from(["big", "misaligned", "strided", "readonly"]))
        out = layout(np.zeros((n,), dtype), how)
        if n == 1 and how == "strided":
            out = out.astype(out.dtype.newbyteorder(">"))
        call = lambda: getattr(K, act)(x, out=out)                              # noqa: E731
        names = (act, "out")
    elif kind == "lr":
        p = watch(floats(draw, (n,), dtype))
        lr = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        call = lambda: K.sgd_update(p, x, lr)                                   # noqa: E731
        names = ("sgd_update", "lr")
    elif kind in ("ids", "ids_dtype"):
        V = draw(st.integers(1, 10))
        table = watch(floats(draw, (V, 3), dtype))
        win = ints(draw, (2, 2), V)
        if kind == "ids":
            win[draw(st.integers(0, 1)), draw(st.integers(0, 1))] = draw(
                st.sampled_from([V, V + 1000, -1, -(2**40)]))
        else:
            win = win.astype(np.float64)
        dX = floats(draw, (2, 6), dtype)
        which = draw(st.sampled_from(["gather", "scatter", "sgd", "adagrad"]))
        if which == "gather":
            call = lambda: K.embedding_gather(table, win)                       # noqa: E731
        elif which == "scatter":
            call = lambda: K.embedding_scatter_add(table, win, dX)              # noqa: E731
        elif which == "sgd":
            call = lambda: K.embedding_sgd_update(table, win, dX, 0.1)          # noqa: E731
        else:
            acc = watch(np.ones((V, 3), dtype))
            call = lambda: K.embedding_adagrad_update(table, acc, win, dX, 0.1)  # noqa: E731
        names = ("embedding", "windows")
    elif kind == "matmul_shape":
        a = floats(draw, (3, n), dtype)
        b = floats(draw, (n + 1, 2), dtype)
        call = lambda: K.matmul(a, b)                                           # noqa: E731
        names = ("matmul", "shape")
    elif kind == "labels":
        C = draw(st.integers(1, 5))
        logits = floats(draw, (n, C), dtype)
        labels = ints(draw, (n,), C)
        labels[draw(st.integers(0, n - 1))] = draw(st.sampled_from([C, -1, 2**40]))
        call = lambda: K.softmax_cross_entropy(logits, labels)                  # noqa: E731
        names = ("softmax_cross_entropy", "labels")
    else:      # update_layout: an array updated in place that cannot be written as it is
        how = draw(st.sampled_from(["big", "misaligned", "strided", "readonly"]))
        p = watch(layout(floats(draw, (max(n, 2),), dtype), how))
        g = floats(draw, (max(n, 2),), dtype)
        call = lambda: K.sgd_update(p, g, 0.1)                                  # noqa: E731
        names = ("sgd_update", "param")
    try:
        call()
    except (TypeError, ValueError, IndexError) as e:
        msg = str(e)
        if not any(s in msg for s in names):
            raise AssertionError(f"error does not name {names}: {msg!r}")
    else:
        raise AssertionError("accepted an invalid call")
    for a, before in touched:
        if not np.array_equal(a, before, equal_nan=True):
            raise AssertionError("an array changed although the call was refused")
    raise Invalid


CASES = [case_activation, case_matmul, case_bias, case_losses, case_embedding,
         case_dense_updates, case_viterbi, case_invalid]


# ------------------------------------------------------------------ driver

def describe(text):
    LOG.write(text + "\n")
    LOG.flush()


def run(case, examples, seed):
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def check(data):
        COUNTS["examples"] += 1
        try:
            case(data.draw)
        except Invalid:
            COUNTS["clean_errors"] += 1
        except Exception as e:
            COUNTS["failures"] += 1
            kind = " ".join(LOG_LAST[0].split()[:2]) + ": " + str(e).splitlines()[0][:120]
            KINDS[kind] = KINDS.get(kind, 0) + 1
            if len(FAILURES) < 20:
                FAILURES.append(LOG_LAST[0] + "\n" + traceback.format_exc(limit=3))
        else:
            COUNTS["valid"] += 1

    hseed(seed)(check)()


LOG_LAST = [""]
KINDS = {}


def main(argv=None):
    global LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="keep drawing new rounds until this much time has passed")
    ap.add_argument("--examples", type=int, default=40, help="examples per case and round")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    raw = open(args.log, "w")

    class Log:
        def write(self, text):
            LOG_LAST[0] = text.rstrip("\n")
            raw.write(text)

        def flush(self):
            raw.flush()

    LOG = Log()
    start, rounds = time.monotonic(), 0
    while True:
        for i, case in enumerate(CASES):
            run(case, args.examples, args.seed * 1000 + rounds * len(CASES) + i)
        rounds += 1
        if time.monotonic() - start >= args.seconds:
            break
    COUNTS["rounds"] = rounds
    COUNTS["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(COUNTS))
    for k, v in sorted(KINDS.items(), key=lambda kv: -kv[1]):
        print(f"{v:6d}  {k}", file=sys.stderr)
    for f in FAILURES:
        print(f, file=sys.stderr)
    return 1 if COUNTS["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
