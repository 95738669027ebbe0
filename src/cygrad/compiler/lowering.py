"""The lowering table: for each graph op a plan can run, how its forward and its
backward become plan tasks (cygrad.compiler.builder.Task). One entry per op name,
registered here beside the op's kernels; an op without an entry is refused by
lookup, naming the op (builder._lowering).

A lowering's forward ``fwd(bld, node, name, parents, ctx)`` (``bld`` the builder) places
the node's value (``bld.val[id(node)]``, a view) and adds its tasks; its backward
``bwd(bld, node, name, parents, g)`` turns the upstream gradient view ``g`` into its
parents' (``bld.grad[id(parent)]``) and into parameter updates (``bld.bias_bwd``,
``bld.param_mode``, the embedding segments). ``dense_params(node)`` lists the
parameters whose dense gradient the op contributes to (the builder counts them, so
that a parameter used twice is updated once, from the sum). Losses are forward-only
(the graph's root): their forward writes the gradient of the loss too, and sets
``bld.div_per_row``, the loss's divisor per row of the batch (a mean's; 0: a sum, the
divisor 1; None: a weighted mean's, per call).

Adding an op with a plan kernel: its task in ``_plan.pyx`` (an enum code, its name
in ``TASK_CODES``, its branch of ``_task``) and its entry here.
"""

import numpy as np

from cygrad.compiler.builder import (
    COL_GRAIN,
    COLS,
    ROW_GRAIN,
    ROW_MODE,
    ROWS,
    U_ADAGRAD,
    U_ADAM,
    U_ADD,
    U_NONE,
    U_SGD,
    WGRAD_ROWS,
    Task,
    Unsupported,
    View,
)
from cygrad.graph import Tensor, Traced
from cygrad.kernels._elementwise import ACT_CODES

# activations whose derivative follows from the output (for relu, leaky_relu with a
# slope >= 0 and hardtanh, the output has the input's sign and clipping), so that
# the output may overwrite the input
FROM_OUTPUT = ("sigmoid", "tanh", "relu", "leaky_relu", "hardtanh")


class Lowering:
    """An op's forward and backward lowerings and what the builder needs to know."""

    __slots__ = ("fwd", "bwd", "loss", "folded", "dense_params")

    def __init__(self, fwd, bwd=None, loss=False, folded=False, dense_params=None):
        self.fwd, self.bwd, self.loss, self.folded = fwd, bwd, loss, folded
        self.dense_params = dense_params or (lambda node: ())


LOWERINGS = {}


def register(names, fwd, bwd=None, **kw):
    for n in (names,) if isinstance(names, str) else names:
        LOWERINGS[n] = Lowering(fwd, bwd, **kw)


def _fwd_embedding_windows(bld, node, name, pa, ctx):
    table = pa[0]
    if table._op is not None:
        raise Unsupported("embedding_windows of a computed table")
    (windows,) = ctx.saved
    B, w = windows.shape
    V, d = table.shape
    tv = bld.leaf(table)
    iv = bld.ids(windows, "embedding_windows", V, "windows")
    out = bld.new(B, w * d)
    bld.add(Task("gather", (ROWS, B, ROW_GRAIN), [tv, iv, out],
                   [(tv, "r", "all"), (iv, "r", ROWS), (out, "w", ROWS)], w=w, h=d,
                   m=B))
    bld.val[id(node)] = out
    bld.info[id(node)] = ("emb", table, iv, B, w, d, bool(ctx.kw))


def _fwd_embedding_bag_windows(bld, node, name, pa, ctx):
    table = pa[0]
    if table._op is not None:
        raise Unsupported("embedding_bag_windows of a computed table")
    (windows,) = ctx.saved
    ptr, items, fixed = ctx.kw
    if not fixed:
        raise Unsupported("embedding_bag_windows with ptr or items among the step's "
                          "arguments (a plan holds them as constants: close over them)")
    B, w = windows.shape
    V, d = table.shape
    tv = bld.leaf(table)
    iv = bld.ids(windows, "embedding_bag_windows", len(ptr) - 1, "windows")
    bags = bld.bag_consts(ptr, items)
    out = bld.new(B, w * d)
    bld.add(Task("bag", (ROWS, B, ROW_GRAIN), [tv, iv, bags[0], bags[1], out],
                 [(tv, "r", "all"), (iv, "r", ROWS), (bags[0], "r", "all"),
                  (bags[1], "r", "all"), (out, "w", ROWS)], w=w, h=d, m=B))
    bld.val[id(node)] = out
    bld.info[id(node)] = ("bag", table, iv, B, w, d, bags)


def _fwd_layer_norm(bld, node, name, pa, ctx):
    x, weight, bias = pa
    eps = ctx.kw[3]
    if x.ndim != 2:
        raise Unsupported("layer_norm of other than a 2-D value (B, D)")
    if not all(isinstance(p, Tensor) and p._op is None for p in (weight, bias)):
        raise Unsupported("layer_norm with a computed weight or bias")
    xv = bld.value(x)
    B, D = x.shape
    if xv.cols != D:
        raise Unsupported("layer_norm of a reshaped input")
    wv, bv = bld.leaf(weight), bld.leaf(bias)
    out, xh, rs = bld.new(B, D), bld.new(B, D), bld.new(B, 1)
    bld.add(Task("ln", (ROWS, B, ROW_GRAIN), [xv, wv, bv, out, xh, rs],
                 [(xv, "r", ROWS), (wv, "r", "all"), (bv, "r", "all"), (out, "w", ROWS),
                  (xh, "w", ROWS), (rs, "w", ROWS)], h=D, m=B, alpha=eps))
    bld.val[id(node)] = out
    bld.info[id(node)] = (x, weight, bias, xh, rs)


def _bwd_layer_norm(bld, node, name, pa, g):
    x, weight, bias, xh, rs = bld.info[id(node)]
    B, D = x.shape
    dx = gx = None
    if isinstance(x, Tensor) and x.requires_grad:
        dx = bld.grad[id(x)] = bld.new(B, D)
    if id(weight) in bld.pindex:
        gx = bld.new(B, D)
    if dx is not None or gx is not None:
        wv = bld.leaf(weight)
        acc = [(g, "r", ROWS), (wv, "r", "all"), (xh, "r", ROWS), (rs, "r", ROWS)]
        acc += [(v, "w", ROWS) for v in (dx, gx) if v is not None]
        bld.add(Task("ln_bwd", (ROWS, B, ROW_GRAIN), [g, wv, xh, rs, dx, gx], acc, h=D,
                     m=B))
    # (the weight's and the bias's gradients: column sums, as the eager op's bias_grad)
    if gx is not None:
        bld.bias_bwd(weight, gx)
    if id(bias) in bld.pindex:
        bld.bias_bwd(bias, g)


def _fwd_concat(bld, node, name, pa, ctx):
    axis, _ = ctx.kw
    if any(p.ndim != 2 for p in pa) or axis not in (1, -1):
        raise Unsupported("concat other than of 2-D values along the last axis")
    B = pa[0].shape[0]
    total = sum(p.shape[1] for p in pa)
    out = bld.new(B, total)
    col = 0
    for p in pa:
        if p._op is None:
            raise Unsupported("concat of a leaf tensor")
        v = bld.val[id(p)]
        if v.rows != B or v.cols != p.shape[1]:
            raise Unsupported("concat of a reshaped value")
        if v.buf.ext is not None:       # a reshaped argument: its view may not move
            raise Unsupported("concat of an argument (reshaped)")
        v.buf, v.off, v.ld = out.buf, col, total
        col += p.shape[1]
    bld.val[id(node)] = out


def _by_weight_rows(bld, x, W):
    """Whether a linear layer's weight gradient (and update) is split by the rows of
    W, and its forward by the same rows (the output's columns): where the input
    needs no gradient (a layer on the data), W is trained and has at least
    WGRAD_ROWS rows, and the batch has at most twice as many rows as W. Chunk c of
    the forward, of the weight gradient and of the update then covers the same rows
    of W and of their optimiser state, so that where the pool hands chunk c to the
    same thread each time (as it mostly does: the caller claims first) those rows
    stay in that thread's cache, and each thread reads all of the input; split by
    the input's columns (as a layer whose input gradient is needed must be), the
    update writes columns of W that the forward read on the other thread, so that
    half of W moves between the cores every step: that costs more than every thread
    reading the input up to B = 2 H (benches/results/weight-rows.md)."""
    H = W.shape[0]
    return (not (isinstance(x, Tensor) and x.requires_grad) and id(W) in bld.pindex
            and H >= WGRAD_ROWS and x.shape[0] <= 2 * H)


def _fwd_linear(bld, node, name, pa, ctx):
    if name == "linear":
        x, W, b = pa
    else:       # x @ W.T, W a leaf (H, D): a linear layer without its bias
        x, wt = pa
        if not (isinstance(wt, Tensor) and wt._op is not None
                and wt._op.name == "transpose" and isinstance(wt._parents[0], Tensor)
                and wt._parents[0]._op is None and wt._parents[0].ndim == 2
                and isinstance(x, (Tensor, Traced)) and x.ndim == 2):
            raise Unsupported("matmul other than x @ W.T (x 2-D, W a (H, D) leaf "
                               "tensor) has no plan kernel")
        W, b = wt._parents[0], None
    xv = bld.value(x)
    Wv = bld.leaf(W)
    bv = bld.leaf(b) if b is not None else None
    B, D = x.shape
    H = W.shape[0]
    if xv.cols != D:
        raise Unsupported(f"{name} of a reshaped input")
    out = bld.new(B, H)
    rd = [(bv, "r", "all")] if bv is not None else []
    if _by_weight_rows(bld, x, W) or (B < ROW_MODE and H >= 2 * COL_GRAIN):
        space = (COLS, H, COL_GRAIN)
        acc = [(xv, "r", "all"), (Wv, "r", "all"), (out, "w", COLS)] + rd
    else:
        space = (ROWS, B, ROW_GRAIN)
        acc = [(xv, "r", ROWS), (Wv, "r", "all"), (out, "w", ROWS)] + rd
    bld.add(Task("linear", space, [xv, Wv, bv, out], acc, m=B, k=D, h=H))
    bld.work += B * D * H
    bld.val[id(node)] = out
    bld.info[id(node)] = (x, W, b)


def _fwd_transpose(bld, node, name, pa, ctx):
    (a,) = pa      # only as the right operand of a matmul (checked there)
    if not (isinstance(a, Tensor) and a._op is None and a.ndim == 2):
        raise Unsupported("transpose of a computed value")


def _fwd_add(bld, node, name, pa, ctx):
    a, b = pa
    if not (isinstance(a, Tensor) and a._op is not None and a.ndim == 2
            and isinstance(b, Tensor) and b._op is None and b.ndim == 1
            and b.shape[0] == a.shape[1]):
        raise Unsupported("add other than a computed (B, H) value + a (H,) leaf "
                           "tensor (a bias) has no plan kernel")
    av, bv = bld.val[id(a)], bld.leaf(b)
    out = av if bld.writable(av) else bld.new(av.rows, av.cols)
    bld.add(Task("bias", ("elem", av.rows, av.cols), [av, bv, out],
                 [(av, "r", "elem"), (bv, "r", "all"), (out, "w", "elem")],
                 m=av.rows, h=av.cols))
    bld.val[id(node)] = out


def _fwd_act(bld, node, name, pa, ctx):
    (z,) = pa
    if z._op is None:
        raise Unsupported(f"{name} of a leaf tensor")
    zv = bld.val[id(z)]
    alpha = float(ctx.kw.get("negative_slope", 0.01)) if name == "leaky_relu" else 0.0
    from_out = name in FROM_OUTPUT and not (name == "leaky_relu" and alpha < 0)
    out = zv if from_out and bld.writable(zv) else bld.new(zv.rows, zv.cols)
    bld.add(Task("act", ("elem", zv.rows, zv.cols), [zv, out],
                   [(zv, "r", "elem"), (out, "w", "elem")], act=ACT_CODES[name],
                   m=zv.rows, h=zv.cols, alpha=alpha))
    bld.val[id(node)] = out
    bld.info[id(node)] = (out if from_out else zv, ACT_CODES[name], alpha)
    # (the saved value: the output where the derivative follows from it; the output
    # may be a new buffer when the input may not be overwritten)


def _fwd_dropout(bld, node, name, pa, ctx):
    (x,) = pa
    p, _, stream, karr, _ = ctx.kw
    if karr is None:
        raise Unsupported("dropout with a key that is not an argument of the step (the "
                           "plan would reuse one mask at every step); pass the key as "
                           "an int64 array argument")
    if x._op is None:
        raise Unsupported("dropout of a leaf tensor")
    xv = bld.val[id(x)]
    from cygrad.kernels._elementwise import DROPOUT_MAX_ELEMENTS, DROPOUT_MAX_KEY
    if xv.rows * xv.cols > DROPOUT_MAX_ELEMENTS:
        raise Unsupported(f"dropout of {xv.rows * xv.cols} elements (at most 2**32)")
    live = bld.live.get(id(karr))
    if live is not None:    # nn.Dropout's own counter: the step advances it
        kv = View(bld.ext_buf("live", id(karr), karr), 1, 1, 8)
        bld.live_used[id(karr)] = live
    else:
        kv = bld.ids(karr, "dropout", DROPOUT_MAX_KEY, "key")
    out = bld.new(xv.rows, xv.cols)
    nkey = 1 if live is not None else int(np.asarray(karr).size)   # 2: (key, row)
    bld.add(Task("dropout", ("elem", xv.rows, xv.cols), [xv, kv, out],
                   [(xv, "r", "elem"), (kv, "r", "all"), (out, "w", "elem")],
                   m=xv.rows, h=xv.cols, k=stream, alpha=p, w=nkey))
    bld.val[id(node)] = out
    bld.info[id(node)] = (kv, p, stream, nkey)


def _fwd_reshape(bld, node, name, pa, ctx):
    (a,) = pa
    if type(a) is not Traced and a._op is None and id(a) in bld.pindex:
        raise Unsupported("reshape of a parameter (its gradient would not reach it): "
                          "reshape it outside loss_fn, or keep it in the shape it is used in")
    src = bld.value(a)      # (an argument's view: read-only, see Builder.writable)
    if node.ndim == 0 or a.ndim == 0 or node.shape[0] != a.shape[0] \
            or src.cols != int(np.prod(node.shape[1:])):
        raise Unsupported(f"reshape from {a.shape} to {node.shape} (only reshapes "
                           f"that keep the batch axis have a plan kernel)")
    bld.val[id(node)] = src


def _fwd_mean(bld, node, name, pa, ctx):
    (a,) = pa
    axis, keepdims = ctx.kw
    if a.ndim != 3 or axis != 1 or keepdims or a._op is None:
        raise Unsupported(f"mean over axis {axis} of shape {a.shape} (only the window "
                           f"axis 1 of a (B, w, d) value has a plan kernel)")
    B, w, d = a.shape
    src = bld.val[id(a)]
    out = bld.new(B, d)
    bld.add(Task("mean", (ROWS, B, ROW_GRAIN), [src, out],
                   [(src, "r", ROWS), (out, "w", ROWS)], m=B, w=w, h=d))
    bld.val[id(node)] = out


def _bwd_add(bld, node, name, pa, g):
    a, b = pa
    if a.requires_grad:
        bld.grad[id(a)] = g         # + hands the gradient on
    if id(b) in bld.pindex:
        bld.bias_bwd(b, g)


def _bwd_transpose(bld, node, name, pa, g):
    pass                             # folded into its matmul


def _bwd_linear(bld, node, name, pa, g):
    x, W, b = bld.info[id(node)]
    B, D = x.shape
    H = W.shape[0]
    xv, Wv = bld.value(x), bld.leaf(W)
    if b is not None and id(b) in bld.pindex:
        bld.bias_bwd(b, g)
    dx = None
    if isinstance(x, Tensor) and x.requires_grad:
        dx = bld.new(B, D)
        bld.grad[id(x)] = dx
    wmode, wsv, wlast = U_NONE, None, False
    if id(W) in bld.pindex:
        wmode, wsv, wlast = bld.param_mode(W, D)
    if dx is not None or wmode != U_NONE:
        # (a later use of a weight: its product into scratch, then added to the gradient
        # buffer, as the eager graph adds two products: the same bits)
        scr = bld.new(H, D) if wmode in (U_ADAGRAD, U_ADAM, U_ADD) else None
        wsv2 = bld.adam_v(W, wmode)
        v = [g, Wv, xv, dx, wsv, scr, wsv2]
        acc = [(g, "r", "all"),
               (Wv, "w" if wmode in (U_SGD, U_ADAGRAD, U_ADAM) else "r", COLS),
               (xv, "r", COLS)]
        if wsv2 is not None:
            acc.append((wsv2, "w", COLS))
        if dx is not None:
            acc.append((dx, "w", COLS))
        if wsv is not None:
            acc.append((wsv, "w", COLS))
        if scr is not None:
            acc.append((scr, "w", COLS))
        if dx is None and _by_weight_rows(bld, x, W):
            # no input gradient: W's rows, as the forward's columns and the gradient's
            # (chunk c updates the rows of W and of their moments that chunk c of the
            # forward read; W itself declared only where the task updates it, not
            # for a gradient buffer)
            acc = [(g, "r", COLS), (xv, "r", "all")] + [
                (s, "w", "all") for s in (wsv2, wsv, scr) if s is not None]
            if wmode in (U_SGD, U_ADAGRAD, U_ADAM):
                acc.append((Wv, "w", "all"))
            bld.add(Task("linear_wgrad", (COLS, H, COL_GRAIN), v, acc, mode=wmode, m=B,
                         k=D, h=H, pidx=bld.pindex.get(id(W), 0)))
        else:
            bld.add(Task("linear_bwd", (COLS, D, COL_GRAIN), v, acc, mode=wmode, m=B, k=D,
                         h=H, pidx=bld.pindex.get(id(W), 0)))
        bld.work += 2 * B * D * H
    if wlast:
        bld.dense_update(W, wsv)


def _bwd_act(bld, node, name, pa, g):
    (z,) = pa
    saved, code, alpha = bld.info[id(node)]
    bld.add(Task("act_bwd", ("elem", g.rows, g.cols), [g, saved, g],
                   [(g, "r", "elem"), (saved, "r", "elem"), (g, "w", "elem")], act=code,
                   m=g.rows, h=g.cols, alpha=alpha))
    bld.grad[id(z)] = g


def _bwd_dropout(bld, node, name, pa, g):
    kv, p, stream, nkey = bld.info[id(node)]
    bld.add(Task("dropout", ("elem", g.rows, g.cols), [g, kv, g],
                   [(g, "r", "elem"), (kv, "r", "all"), (g, "w", "elem")],
                   m=g.rows, h=g.cols, k=stream, alpha=p, w=nkey))
    bld.grad[id(pa[0])] = g


def _bwd_reshape(bld, node, name, pa, g):
    bld.grad[id(pa[0])] = g


def _bwd_mean(bld, node, name, pa, g):
    (a,) = pa
    B, w, d = a.shape
    out = bld.new(B, w * d)
    bld.add(Task("mean_bwd", (ROWS, B, ROW_GRAIN), [g, out],
                   [(g, "r", ROWS), (out, "w", ROWS)], m=B, w=w, h=d))
    bld.grad[id(a)] = out


def _bwd_concat(bld, node, name, pa, g):
    col = 0
    for p in pa:
        c = p.shape[1]
        if p.requires_grad:
            bld.grad[id(p)] = View(g.buf, g.rows, c, bld.item, off=g.off + col, ld=g.ld)
        col += c


def _bwd_embedding_windows(bld, node, name, pa, g):
    _, table, iv, B, w, d, sparse = bld.info[id(node)]
    if id(table) in bld.pindex:
        bld.segments.setdefault(id(table), (table, []))[1].append((iv, g, B, w, d))
        bld.segment_dense.setdefault(id(table), []).append(not sparse)
        if not sparse:
            bld.dense_tables.add(id(table))


def _bwd_embedding_bag_windows(bld, node, name, pa, g):
    _, table, iv, B, w, d, bags = bld.info[id(node)]
    if id(table) in bld.pindex:
        entry = bld.bag_segments.setdefault(id(table), (table, [], bags))
        if entry[2] is not bags:
            raise Unsupported("one bag table used with two different (ptr, items)")
        entry[1].append((iv, g, B, w, d))


def _loss_softmax_cross_entropy(bld, node, name, pa, ctx):
    (logits,) = pa
    reduction, weight = ctx.shapes
    lv = bld.value(logits)
    B, C = logits.shape
    if logits._op is None or lv.ld != C:
        raise Unsupported("softmax_cross_entropy of a leaf or strided value")
    yv = bld.ids(ctx.kw, name, C, "labels")
    d = lv if bld.writable(lv) else bld.new(B, C)
    v = [lv, yv, d]
    acc = [(lv, "r", ROWS), (yv, "r", ROWS), (d, "w", ROWS)]
    bld.div_per_row = 1.0 if reduction == "mean" else 0.0
    if weight is not None:
        bld.xent_weights = weight       # read (and checked) at every call
        wv = View(bld.ext_buf("weights", id(weight), weight), C, 1, 8)
        v.append(wv)
        acc.append((wv, "r", "all"))
        if reduction == "mean":
            if yv.buf.ext is not None:
                raise Unsupported("a weighted mean over constant labels")
            bld.div_per_row = None
            bld.xent_w = (weight, yv.buf, B)
    bld.add(Task("xent", (ROWS, B, ROW_GRAIN), v, acc, m=B, h=C))
    bld.grad[id(logits)] = d


def _loss_mse_loss(bld, node, name, pa, ctx):
    (pred,) = pa
    pv = bld.value(pred)
    if pred._op is None or pred.ndim not in (1, 2) or pv.ld != pv.cols:
        raise Unsupported("mse_loss of a leaf, strided or more than 2-D value")
    B, n = pv.rows, pv.cols
    targets = ctx.kw
    tv = bld._targets(targets, bld.arg_of.get(id(targets)), "value", B, n)
    d = bld.new(B, n)
    bld.add(Task("mse", (ROWS, B, ROW_GRAIN), [pv, tv, d],
                   [(pv, "r", ROWS), (tv, "r", ROWS), (d, "w", ROWS)], m=B, h=n))
    bld.grad[id(pred)] = d
    bld.div_per_row = float(n) if ctx.shapes == "mean" else 0.0


def _loss_sigmoid_binary_cross_entropy(bld, node, name, pa, ctx):
    (s,) = pa
    sv = bld.value(s)
    B = s.shape[0]
    if not (s.ndim == 1 or s.ndim == 2 and s.shape[1] == 1) or s._op is None \
            or sv.ld != 1:
        raise Unsupported("sigmoid_binary_cross_entropy of a leaf or strided value")
    targets = ctx.kw
    tv = bld._targets(targets, bld.arg_of.get(id(targets)), "target", B, 1)
    d = bld.new(B, 1)
    bld.add(Task("bce", (ROWS, B, ROW_GRAIN), [sv, tv, d],
                   [(sv, "r", ROWS), (tv, "r", ROWS), (d, "w", ROWS)], m=B))
    bld.grad[id(s)] = d
    bld.div_per_row = 1.0 if ctx.shapes == "mean" else 0.0


def _loss_max_margin(bld, node, name, pa, ctx):
    s, sc = pa
    if s._op is None or sc._op is None:
        raise Unsupported("max_margin of leaf tensors")
    sv, scv = bld.value(s), bld.value(sc)
    B = s.shape[0]
    if sv.ld != 1 or scv.ld != 1:
        raise Unsupported("max_margin of strided values")
    ds, dsc = bld.new(B, 1), bld.new(B, 1)
    bld.add(Task("margin", (ROWS, B, ROW_GRAIN), [sv, scv, ds, dsc],
                   [(sv, "r", ROWS), (scv, "r", ROWS), (ds, "w", ROWS),
                    (dsc, "w", ROWS)], m=B, alpha=float(ctx.kw)))
    bld.grad[id(s)], bld.grad[id(sc)] = ds, dsc
    bld.div_per_row = 1.0 if ctx.shapes == "mean" else 0.0


def _loss_crf_nll(bld, node, name, pa, ctx):
    """The CRF's sentences (T_CRF, over the batch's sentences): the scores' gradient;
    the transitions' gradient and update come in the backward part below."""
    scores, trans = pa
    lengths, tags, allowed, reduction, _ = ctx.kw
    if reduction not in ("token_mean", "sum", "mean"):
        raise Unsupported(f"crf_nll with reduction={reduction!r}")
    sv = bld.value(scores)
    N, C = scores.shape
    if scores._op is None or sv.ld != C:
        raise Unsupported("crf_nll of a leaf or strided value")
    if trans._op is not None or id(trans) not in bld.pindex:
        raise Unsupported("crf_nll with transitions that are not a parameter being trained")
    j = bld.arg_of.get(id(lengths))
    if j is None:
        raise Unsupported("crf_nll with constant lengths (pass them as an argument)")
    if j in bld.inputs:
        raise Unsupported(f"argument {bld.traced[j].name!r} is used both as lengths and "
                          f"otherwise")
    if bld.arg_of.get(id(tags)) is None:
        raise Unsupported("crf_nll with constant tags (pass them as an argument)")
    bld.inputs[j] = {"kind": "lengths", "shape": lengths.shape}
    yv = bld.ids(tags, "crf_nll", C, "tags")
    d = bld.new(N, C)
    S = lengths.shape[0]
    bld.add(Task("crf", ("sents", max(S, 1), 8), [sv, yv, d],
                 [(sv, "r", "all"), (yv, "r", "all"), (d, "w", "all")], m=N, h=C))
    bld.crf = {"lengths_arg": j, "tags": yv, "allowed": allowed, "C": C, "S": S, "N": N,
               "trans": trans, "d": d, "per_sentence": reduction == "mean"}
    bld.grad[id(scores)] = d
    # token_mean: / the batch's rows; mean: / its sentences (the runner counts them)
    bld.div_per_row = 1.0 if reduction == "token_mean" else 0.0


def _bwd_crf_nll(bld, node, name, pa, g):
    """The transitions' gradient (the sentences' counts summed in sentence order) and
    the update of the transition parameter."""
    trans = pa[1]
    W2 = trans.size
    mode, sv, last = bld.param_mode(trans, W2)
    tv = bld.leaf(trans)
    scr = bld.new(1, W2)
    v2 = bld.adam_v(trans, mode)
    # the sentences' counts live outside the workspace: reading the scores' gradient,
    # which T_CRF writes, puts this task in a stage after it
    acc = [(tv, "w", "all"), (scr, "w", "all"), (bld.crf["d"], "r", "all")]
    if sv is not None:
        acc.append((sv, "w", "all"))
    if v2 is not None:
        acc.append((v2, "w", "all"))
    bld.add(Task("crf_dt", ("one", 1, 1), [tv, sv, scr, v2], acc, mode=mode, h=W2,
                 pidx=bld.pindex[id(trans)]))
    if last:
        bld.dense_update(trans, sv)


def _linear_params(node):
    if node._op.name == "matmul":       # x @ W.T: W behind the transpose
        return (node._parents[1]._parents[0],)
    return node._parents[1:]


register("embedding_windows", _fwd_embedding_windows, _bwd_embedding_windows)
register("embedding_bag_windows", _fwd_embedding_bag_windows, _bwd_embedding_bag_windows)
register("concat", _fwd_concat, _bwd_concat)
register("layer_norm", _fwd_layer_norm, _bwd_layer_norm,
         dense_params=lambda node: node._parents[1:])
register(("linear", "matmul"), _fwd_linear, _bwd_linear, dense_params=_linear_params)
register("transpose", _fwd_transpose, _bwd_transpose, folded=True)
register("add", _fwd_add, _bwd_add, dense_params=lambda node: node._parents[1:])
register(tuple(ACT_CODES), _fwd_act, _bwd_act)
register("dropout", _fwd_dropout, _bwd_dropout)
register("reshape", _fwd_reshape, _bwd_reshape)
register("mean", _fwd_mean, _bwd_mean)
register("softmax_cross_entropy", _loss_softmax_cross_entropy, loss=True)
register("mse_loss", _loss_mse_loss, loss=True)
register("sigmoid_binary_cross_entropy", _loss_sigmoid_binary_cross_entropy, loss=True)
register("max_margin", _loss_max_margin, loss=True)
register("crf_nll", _loss_crf_nll, _bwd_crf_nll, loss=True,
         dense_params=lambda node: (node._parents[1],))

#: the ops a plan can take as the returned loss
LOSSES = tuple(n for n, low in LOWERINGS.items() if low.loss)
