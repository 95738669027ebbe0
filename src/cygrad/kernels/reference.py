"""The NumPy oracle: the same names, signatures and semantics as cygrad.kernels.

Written for clarity, straight from the lecture's formulas; the tests hold every
compiled kernel to these functions. Results keep the input dtype (float32 in,
float32 out), as the kernels do. Validation here is deliberately light: the
compiled kernels are the ones that must reject bad input.
"""

import numpy as np

from cygrad.kernels._elementwise import ACT_SAVES as _ACT_SAVES


def _out(result, out):
    if out is None:
        return result
    out[...] = result
    return out


# --------------------------------------------------------------------- products

def matmul(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
    """``op(a) @ op(b)`` (op = transpose when the flag is set); see cygrad.kernels.matmul."""
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    c = a @ b
    if accumulate:
        if out is None:
            raise ValueError("matmul: accumulate=True needs out=")
        out += c
        return out
    return _out(c, out)


def outer_accumulate(dW, delta, x):
    """``dW += delta xᵀ`` (one example) or ``dW += deltaᵀ x`` (a batch), in place."""
    if delta.ndim == 1:
        dW += np.outer(delta, x)
    else:
        dW += delta.T @ x
    return dW


def add_bias(z, b, out=None):
    """``z + b`` with ``b`` broadcast over rows."""
    return _out(z + b, out)


def bias_grad(dz, out=None):
    """Column sums of ``dz``, accumulated in float64, returned in dz's dtype."""
    return _out(dz.sum(axis=0, dtype=np.float64).astype(dz.dtype), out)


def layer_norm(x, weight, bias, eps=1e-5):
    """Layer normalisation of each row (NumPy, in x's dtype): (y, xhat, rstd)."""
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = (1.0 / np.sqrt(var + x.dtype.type(eps))).astype(x.dtype)
    xhat = xc * rstd
    return xhat * weight + bias, xhat, rstd[:, 0]


def layer_norm_backward(grad, weight, xhat, rstd, need_x=True, need_weight=True):
    """(dx, grad * xhat) of layer_norm (NumPy): dx = rstd (gy - mean(gy) - xhat
    mean(gy xhat)), gy = grad * weight."""
    dx = None
    if need_x:
        gy = grad * weight
        D = xhat.shape[-1]
        dx = rstd[:, None] * (gy - gy.mean(axis=-1, keepdims=True)
                              - xhat * (gy * xhat).sum(axis=-1, keepdims=True)
                              / xhat.dtype.type(D))
    return dx, (grad * xhat if need_weight else None)


# ------------------------------------------------------------------ activations

def _sigmoid(z):
    # exp of -|z| only: no overflow.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid(z, out=None):
    return _out(_sigmoid(z).astype(z.dtype, copy=False), out)


def sigmoid_backward(grad_out, saved, out=None):
    return _out(grad_out * saved * (1 - saved), out)


def tanh(z, out=None):
    return _out(np.tanh(z), out)


def tanh_backward(grad_out, saved, out=None):
    return _out(grad_out * (1 - saved * saved), out)


def relu(z, out=None):
    return _out(np.maximum(z, 0), out)


def relu_backward(grad_out, saved, out=None):
    return _out(grad_out * (saved > 0), out)


def leaky_relu(z, out=None, negative_slope=0.01):
    return _out(np.where(z > 0, z, z * np.asarray(negative_slope, z.dtype)), out)


def leaky_relu_backward(grad_out, saved, out=None, negative_slope=0.01):
    slope = np.where(saved > 0, np.asarray(1, grad_out.dtype),
                     np.asarray(negative_slope, grad_out.dtype))
    return _out(grad_out * slope, out)


def hardtanh(z, out=None):
    return _out(np.clip(z, -1, 1), out)


def hardtanh_backward(grad_out, saved, out=None):
    return _out(grad_out * ((saved > -1) & (saved < 1)), out)


_GELU_C = np.sqrt(2 / np.pi)


def gelu(z, out=None):
    u = _GELU_C * (z + 0.044715 * z ** 3)
    return _out((0.5 * z * (1 + np.tanh(u))).astype(z.dtype, copy=False), out)


def gelu_backward(grad_out, saved, out=None):
    z = saved
    t = np.tanh(_GELU_C * (z + 0.044715 * z ** 3))
    dgelu = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * z * z)
    return _out((grad_out * dgelu).astype(grad_out.dtype, copy=False), out)


def silu(z, out=None):
    return _out(z * _sigmoid(z), out)


def silu_backward(grad_out, saved, out=None):
    s = _sigmoid(saved)
    return _out(grad_out * s * (1 + saved * (1 - s)), out)


def _fmix32(h):
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def dropout_mask(shape, p, key, stream=0, first=0):
    """The keep mask of cygrad.kernels.dropout: element i (flat, C order) is kept
    when fmix32(fmix32(i ^ s1) + s2) >= floor(p * 2**32), where s1 and s2 are
    two words drawn from the key and the stream by the same finaliser
    (csrc/bp_elementwise.h)."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        k = int(key)
        s1 = _fmix32(np.uint32(k & 0xFFFFFFFF) ^ np.uint32(0x9E3779B9)
                     ^ _fmix32(np.uint32(stream) + np.uint32(0x632BE5AB)))
        s2 = _fmix32(np.uint32(k >> 32) ^ _fmix32(s1 + np.uint32(0x7F4A7C15)))
        i = ((np.arange(n, dtype=np.uint64) + np.uint64(int(first) % 2 ** 32))
             % np.uint64(2 ** 32)).astype(np.uint32)       # (flat indices modulo 2**32)
        h = _fmix32(_fmix32(i ^ s1) + s2)
    return (h >= np.uint32(int(p * 4294967296.0))).reshape(shape)


def dropout(x, p, key, out=None, stream=0, first=0):
    """Inverted dropout, x * mask / (1 - p), with cygrad's keyed mask (``first``: the
    flat index of x's first element in the array the mask is drawn for)."""
    m = np.where(dropout_mask(x.shape, p, key, stream, first), x.dtype.type(1.0 / (1.0 - p)),
                 x.dtype.type(0))
    return _out(x * m, out)


#: name -> (forward, backward, saves), as in cygrad.kernels.ACTIVATIONS: the names and
#: what each backward reads come from the one registry (the kernels' ACT_SAVES), the
#: math from the functions above
ACTIVATIONS = {n: (globals()[n], globals()[n + "_backward"], saves)
               for n, saves in _ACT_SAVES.items()}


# ----------------------------------------------------------------------- losses

def _divisor(reduction, n):
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return n if reduction == "mean" else 1


def softmax_cross_entropy(logits, labels, out=None, reduction="mean", weight=None):
    """Mean (or summed) cross-entropy of softmax(logits) against integer labels, and
    (p - onehot) / B; with class weights w: sum_i w[y_i] nll_i / sum_i w[y_i] (mean)
    and each row's gradient times w[y_i]."""
    B = logits.shape[0]
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    logsumexp = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(B)
    nll = logsumexp - z[rows, labels]
    p = np.exp(z - logsumexp[:, None])
    p[rows, labels] -= 1
    wr = np.ones(B) if weight is None else np.asarray(weight, np.float64)[labels]
    div = _divisor(reduction, B)
    if weight is not None and reduction == "mean":
        div = float(wr.sum())
    loss = float((wr * nll).sum() / div)
    return loss, _out((p * (wr / div)[:, None]).astype(logits.dtype), out)


def sigmoid_binary_cross_entropy(scores, targets, out=None, reduction="mean"):
    """Mean (or summed) log(1 + e^s) - t s, and (sigmoid(s) - t) / B; scores (B,) or
    (B, 1), targets of their shape."""
    s = scores.astype(np.float64)
    t = np.asarray(targets, dtype=np.float64)
    div = _divisor(reduction, s.size)
    loss = float(np.sum(np.logaddexp(0, s) - t * s) / div)
    d = (_sigmoid(s) - t) / div
    return loss, _out(d.astype(scores.dtype), out)


def max_margin(s_true, s_corrupt, margin=1.0, reduction="mean"):
    """Mean (or summed) max(0, margin - s + s_c); gradients -1/B and +1/B where active."""
    B = s_true.shape[0]
    div = _divisor(reduction, B)
    v = margin - s_true.astype(np.float64) + s_corrupt.astype(np.float64)
    active = v > 0
    loss = float(np.sum(np.where(active, v, 0.0)) / div)
    ds = np.where(active, -1.0 / div, 0.0).astype(s_true.dtype)
    return loss, ds, -ds


def mse_loss(pred, target, out=None, reduction="mean"):
    """Mean (or summed) squared error over every element, and 2 (pred - target) / N."""
    e = pred.astype(np.float64) - np.asarray(target, dtype=np.float64)
    div = _divisor(reduction, e.size)
    loss = float(np.sum(e * e) / div)
    return loss, _out((2.0 * e / div).astype(pred.dtype), out)


# -------------------------------------------------------------------- embedding

def embedding_gather(table, windows, out=None):
    """``X[i] = concatenate(table[windows[i, 0]], ..., table[windows[i, w-1]])``."""
    B, w = windows.shape
    return _out(table[windows].reshape(B, w * table.shape[1]), out)


def embedding_scatter_add(grad_table, windows, dX):
    """``grad_table[windows[i, s]] += dX[i, s-th slot]``, repeats accumulating."""
    np.add.at(grad_table, windows.reshape(-1), dX.reshape(windows.size, grad_table.shape[1]))
    return grad_table


def embedding_sgd_update(table, windows, dX, lr):
    """``table[windows[i, s]] -= lr * dX[i, s-th slot]``, only the touched rows."""
    rows = dX.reshape(windows.size, table.shape[1])
    np.subtract.at(table, windows.reshape(-1), rows * table.dtype.type(lr))
    return table


def sgd_update(param, grad, lr):
    """``param -= lr * grad`` in place."""
    param -= param.dtype.type(lr) * grad
    return param


def adagrad_update(param, accum, grad, lr, eps=1e-8):
    """``accum += grad**2; param -= lr * grad / (sqrt(accum) + eps)`` in place."""
    accum += grad * grad
    param -= (param.dtype.type(lr) * grad / (np.sqrt(accum) + param.dtype.type(eps)))
    return param


def sgd_momentum_update(param, buf, grad, lr, momentum, dampening=0.0, weight_decay=0.0,
                        nesterov=False, first=False):
    """SGD with momentum in place (PyTorch's rule; see cygrad.kernels)."""
    t = param.dtype.type
    g = grad + t(weight_decay) * param
    if buf is None:
        param -= t(lr) * g
        return param
    if first:
        buf[...] = g
    else:
        buf[...] = t(momentum) * buf + t(1.0 - dampening) * g
    d = g + t(momentum) * buf if nesterov else buf
    param -= t(lr) * d
    return param


def adam_update(param, exp_avg, exp_avg_sq, grad, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, decoupled=False):
    """One bias-corrected Adam / AdamW step in place (see cygrad.kernels)."""
    t = param.dtype.type
    g = grad if decoupled else grad + t(weight_decay) * param
    if decoupled:
        param *= t(1.0 - lr * weight_decay)
    exp_avg[...] = t(beta1) * exp_avg + t(1.0 - beta1) * g
    exp_avg_sq[...] = t(beta2) * exp_avg_sq + t(1.0 - beta2) * g * g
    step_size = t(lr / (1.0 - beta1 ** step))
    sqrt_bc2 = t(np.sqrt(1.0 - beta2 ** step))
    param -= step_size * exp_avg / (np.sqrt(exp_avg_sq) / sqrt_bc2 + t(eps))
    return param


def embedding_adagrad_update(table, accum, windows, dX, lr, eps=1e-8):
    """Adagrad on the touched rows, each row's slot gradients summed first."""
    d = table.shape[1]
    rows, inverse = np.unique(windows.reshape(-1), return_inverse=True)
    g = np.zeros((len(rows), d), dtype=table.dtype)
    np.add.at(g, inverse.reshape(-1), dX.reshape(windows.size, d))
    accum[rows] += g * g
    table[rows] -= table.dtype.type(lr) * g / (np.sqrt(accum[rows]) + table.dtype.type(eps))
    return table


def embedding_adam_update(table, exp_avg, exp_avg_sq, windows, dX, step, lr, beta1=0.9,
                          beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """Lazy Adam on the touched rows, each row's slot gradients summed first."""
    d = table.shape[1]
    rows, inverse = np.unique(windows.reshape(-1), return_inverse=True)
    g = np.zeros((len(rows), d), dtype=table.dtype)
    np.add.at(g, inverse.reshape(-1), dX.reshape(windows.size, d))
    p, m, v = table[rows], exp_avg[rows], exp_avg_sq[rows]
    adam_update(p, m, v, g, step, lr, beta1, beta2, eps, weight_decay, decoupled)
    table[rows], exp_avg[rows], exp_avg_sq[rows] = p, m, v
    return table


# ----------------------------------------------------------------------- decoding

def constrained_viterbi(scores, offsets, allowed, start_allowed):
    """Best tag path per sentence under hard transition constraints (plain loops)."""
    for name, m in (("allowed", allowed), ("start_allowed", start_allowed)):
        if not isinstance(m, np.ndarray) or m.dtype != np.bool_:
            raise TypeError(f"constrained_viterbi: {name} must be a numpy.ndarray of bool "
                            f"(a mask), got {getattr(m, 'dtype', type(m).__name__)}")
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros(scores.shape[0], dtype=np.int64)
    trans = np.where(allowed, 0.0, -np.inf)
    for a, b in zip(offsets[:-1], offsets[1:]):
        if b <= a:
            continue
        delta = np.where(start_allowed, scores[a], -np.inf)
        back = []
        for t in range(a + 1, b):
            cand = delta[:, None] + trans          # [prev, cur]
            arg = cand.argmax(axis=0)              # first maximum: lowest index
            back.append(arg)
            delta = cand[arg, np.arange(len(arg))] + scores[t]
        tag = int(delta.argmax())
        out[b - 1] = tag
        for t in range(b - 1, a, -1):
            tag = int(back[t - a - 1][tag])
            out[t - 1] = tag
    return out


# ------------------------------------------------------------ window model step

class WindowTrainer:
    """NumPy twin of :class:`cygrad.ner.WindowTrainer`: the window model's SGD
    step (tanh hidden layer, softmax cross-entropy), written out from the
    lecture's formulas. ``threads`` is accepted for the same signature and ignored
    (NumPy's BLAS has its own setting)."""

    def __init__(self, E, W, b, U, c, threads=None):
        self.E, self.W, self.b, self.U, self.c = (np.array(a, order="C", copy=True)
                                                  for a in (E, W, b, U, c))
        self.threads = threads

    def arrays(self):
        return {k: getattr(self, k).copy() for k in "EWbUc"}

    def step(self, windows, labels, lr):
        E, W, U = self.E, self.W, self.U
        B = len(windows)
        X = E[windows].reshape(B, -1)                 # x = [e_1; ...; e_w]
        h = np.tanh(X @ W.T + self.b)                 # h = f(Wx + b)
        s = h @ U.T + self.c                          # scores
        m = s.max(axis=1, keepdims=True)
        p = np.exp(s - m)
        total = p.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(total[:, 0]) - (s[np.arange(B), labels] - m[:, 0]))
        dS = p / total
        dS[np.arange(B), labels] -= 1                 # p - onehot(y)
        dS /= B
        delta = (dS @ U) * (1 - h * h)                # u ∘ f'(z), computed once
        dX = delta @ W                                # Wᵀδ, per example
        self.U -= lr * (dS.T @ h)
        self.c -= lr * dS.sum(axis=0)
        self.W -= lr * (delta.T @ X)                  # δ xᵀ summed over the batch
        self.b -= lr * delta.sum(axis=0)
        np.add.at(E, windows, -lr * dX.reshape(windows.shape + (E.shape[1],)))
        return float(loss)


# ----------------------------------------------------------------------- CRF

def _crf_transitions(trans, allowed):
    T = np.array(trans, dtype=np.float64)
    if allowed is not None:
        T[~allowed] = -np.inf
    return T


def _logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def crf_nll(scores, lengths, tags, trans, allowed=None):
    """Linear-chain CRF NLL per sentence and the gradients of their sum, by the
    forward-backward recursions in log space (cygrad.kernels.crf_nll's model:
    index C of trans is the sentence boundary)."""
    s_all = np.asarray(scores, dtype=np.float64)
    N, C = s_all.shape
    T = _crf_transitions(trans, allowed)
    A, start, end = T[:C, :C], T[C, :C], T[:C, C]
    ds = np.zeros((N, C))
    dT = np.zeros((C + 1, C + 1))
    losses = []
    lo = 0
    for n in np.asarray(lengths):
        s, y = s_all[lo:lo + n], np.asarray(tags[lo:lo + n])
        al, be = np.zeros((n, C)), np.zeros((n, C))
        al[0] = start + s[0]
        for t in range(1, n):
            al[t] = _logsumexp(al[t - 1][:, None] + A, 0) + s[t]
        logZ = _logsumexp(al[-1] + end, 0)
        be[-1] = end
        for t in range(n - 2, -1, -1):
            be[t] = _logsumexp(A + (s[t + 1] + be[t + 1])[None, :], 1)
        marg = np.exp(al + be - logZ)
        ds[lo:lo + n] = marg
        dT[C, :C] += marg[0]
        dT[:C, C] += marg[-1]
        with np.errstate(invalid="ignore"):
            for t in range(1, n):
                pair = np.exp(al[t - 1][:, None] + A + (s[t] + be[t])[None, :] - logZ)
                dT[:C, :C] += np.nan_to_num(pair, nan=0.0)
        gold = start[y[0]] + end[y[-1]] + s[np.arange(n), y].sum() + A[y[:-1], y[1:]].sum()
        ds[lo + np.arange(n), y] -= 1.0
        dT[C, y[0]] -= 1.0
        dT[y[-1], C] -= 1.0
        np.add.at(dT, (y[:-1], y[1:]), -1.0)
        losses.append(logZ - gold)
        lo += n
    dt = np.asarray(scores).dtype
    return np.array(losses), ds.astype(dt), dT.astype(dt)


def crf_viterbi(scores, lengths, trans, allowed=None):
    """The best path per sentence under the CRF (ties to the lowest tag index)."""
    s_all = np.asarray(scores, dtype=np.float64)
    N, C = s_all.shape
    T = _crf_transitions(trans, allowed)
    A, start, end = T[:C, :C], T[C, :C], T[:C, C]
    out = np.zeros(N, dtype=np.int64)
    lo = 0
    for n in np.asarray(lengths):
        s = s_all[lo:lo + n]
        d = start + s[0]
        back = np.zeros((n, C), dtype=np.int64)
        for t in range(1, n):
            cand = d[:, None] + A
            back[t] = np.argmax(cand, axis=0)
            d = cand[back[t], np.arange(C)] + s[t]
        c = int(np.argmax(d + end))
        for t in range(n - 1, -1, -1):
            out[lo + t] = c
            c = back[t, c]
        lo += n
    return out


# ----------------------------------------------------------------------- bags

def embedding_bag_windows(table, windows, ptr, items):
    """Slot (i, j) of the output is the mean of table[items[ptr[b]:ptr[b+1]]],
    b = windows[i, j]; zeros for an empty bag."""
    B, w = windows.shape
    d = table.shape[1]
    out = np.zeros((B, w, d), dtype=table.dtype)
    for i in range(B):
        for j in range(w):
            b = windows[i, j]
            rows = items[ptr[b]:ptr[b + 1]]
            if len(rows):
                out[i, j] = table[rows].astype(np.float64).mean(axis=0)
    return out.reshape(B, w * d)


def embedding_bag_backward(grad, windows, ptr, items):
    """(rows, values): each item of each slot's bag gets the slot's gradient / bag size."""
    B, w = windows.shape
    d = grad.shape[1] // w
    rows, values = [], []
    for i in range(B):
        for j in range(w):
            b = windows[i, j]
            bag = items[ptr[b]:ptr[b + 1]]
            for r in bag:
                rows.append(r)
                values.append(grad[i, j * d:(j + 1) * d] / grad.dtype.type(len(bag)))
    return (np.array(rows, dtype=np.int64),
            np.array(values, dtype=grad.dtype).reshape(len(rows), d))
