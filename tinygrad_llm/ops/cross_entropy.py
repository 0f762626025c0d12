"""Cross-entropy as one op: log-softmax and the negative log-likelihood fused.

Forward keeps the unnormalised row exponentials e and the reciprocal row sums r = 1 / sum e, so
backward is a single pass (p = e * r times each row's gradient) plus a scatter into the target
column: the one-hot matrix is never built.
"""
import numpy as np

from .. import cuda
from ..cuda import syncs
from ..autograd import Function
from ..backend import array_module
from .row_chunks import by_row_chunks

REDUCTIONS = ("mean", "sum", "none")


# --- the textbook version: the docstring's formula in plain xp, for reading and for the tests,
# which check the tuned *_cpu functions below against it ---------------------------------------
def cross_entropy_textbook(x, t, valid, label_smoothing=0.0):
    """Per-row loss for logits x (N, V), targets t (N,) and the mask of rows that count:
    loss_i = -(1 - eps) log p_i[t_i] - eps mean_j log p_ij with p_i = softmax(x_i); 0 where ignored."""
    xp = array_module(x)
    shifted = x - x.max(axis=-1, keepdims=True)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))  # log_softmax, (N, V)
    picked = logp[xp.arange(x.shape[0]), xp.where(valid, t, 0)]
    loss = -(1.0 - label_smoothing) * picked - label_smoothing * logp.mean(axis=-1)
    return xp.where(valid, loss, 0.0)


def cross_entropy_backward_textbook(x, t, valid, g, label_smoothing=0.0):
    """dx_i = g_i (p_i - (1 - eps) onehot(t_i) - eps / V) with p_i = softmax(x_i); 0 where ignored."""
    xp = array_module(x)
    N, V = x.shape
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    target = xp.zeros_like(x)
    target[xp.arange(N), xp.where(valid, t, 0)] = 1.0 - label_smoothing
    target += label_smoothing / V
    return (xp.where(valid, g, 0.0))[:, None] * (e / e.sum(axis=-1, keepdims=True) - target)


# --- the tuned versions -----------------------------------------------------------------------
def exp_rows(x):
    """(e, r, shift) with e = exp(x - shift) and r = 1 / sum(e) over the last axis.

    The shift is 0 when every row's sum of exp(x) lands in [1e-30, 1e30]: then no row sum
    overflowed or lost precision, so r is accurate, and the max pass and the subtraction pass are
    saved (two of the four sweeps over x). Otherwise shift is the row max, the usual stable form.

    Single elements may still underflow on the shift-free path: exp(x_j) is subnormal, or 0,
    where x_j lies far below its row's largest entries (float32: exp(x_j) < 1.2e-38 for
    x_j < -87.3), and then p_j = e_j r keeps only a few significant bits. Its absolute error stays
    below the smallest subnormal times r <= 1e30, about 1.4e-15 in float32 (far below float32's
    resolution at 1, 6e-8), so row sums, losses and gradients do not see it; only the relative
    precision of such a tiny p_j is lost, where exp(x_j - max) would keep it.
    """
    xp = array_module(x)
    with np.errstate(over="ignore", under="ignore"):
        e = xp.exp(x)
    s = e.sum(axis=-1, keepdims=True)
    # the test is a host read: on the GPU the max pass is cheaper than a sync
    if xp is np and bool(((s >= 1e-30) & (s <= 1e30)).all()):
        return e, xp.reciprocal(s, out=s), 0
    m = x.max(axis=-1, keepdims=True)
    xp.subtract(x, m, out=e)
    xp.exp(e, out=e)
    s = e.sum(axis=-1, keepdims=True)
    return e, xp.reciprocal(s, out=s), m


def check_targets(logits_shape, targets, ignore_index, name="cross_entropy"):
    """The non-ignored mask; raises on float targets, a shape mismatch or ids outside [0, V)."""
    xp = array_module(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"{name}: targets must be integer class ids, got dtype {targets.dtype}")
    if tuple(logits_shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"{name}: logits of shape {tuple(logits_shape)} need targets of shape "
                         f"{tuple(logits_shape[:-1])}, got {tuple(targets.shape)}")
    V = logits_shape[-1]
    valid = targets != ignore_index
    bad = valid & ((targets < 0) | (targets >= V))

    def describe():
        where = tuple(int(i[0]) for i in xp.nonzero(bad))
        return (f"{name}: target {int(targets[where])} at index {where} is outside "
                f"[0, {V}) (and is not ignore_index={ignore_index})")
    syncs.check(bad.any(), describe)  # on the GPU a device flag, read with the logged loss
    return valid


def cross_entropy_forward_cpu(x, t, valid, label_smoothing=0.0):
    """Per-row loss for logits x (N, V) and targets t (N,): (loss (N,), e, r).

    loss_i = (1 - eps) (lse_i - x_i[t_i]) + eps (lse_i - mean_j x_ij), 0 where ignored.
    """
    xp = array_module(x)
    N, V = x.shape
    e, r, shift = exp_rows(x)
    log_s = xp.log(r[:, 0])
    xp.negative(log_s, out=log_s)  # log rowsum(e); lse = shift + log_s
    if not isinstance(shift, int):
        shift = shift[:, 0]
    rows = xp.arange(N)
    tc = xp.where(valid, t, 0)
    # (shift - x_t) first: both are ~|x|, their difference is exact where lse - x_t would round
    loss = shift - x[rows, tc]
    loss += log_s
    if label_smoothing:
        loss *= 1.0 - label_smoothing
        loss += label_smoothing * ((shift - x.sum(axis=1) / x.dtype.type(V)) + log_s)
    loss *= valid
    return loss, e, r[:, 0]


def cross_entropy_backward_cpu(e, r, t, valid, g, label_smoothing=0.0):
    """dx = g_i * (p - (1 - eps) onehot(t) - eps / V), p = e * r; g is each row's gradient (N,)."""
    xp = array_module(e)
    N, V = e.shape
    g = g * valid  # ignored rows get no gradient
    dx = e * (g * r)[:, None]
    tc = xp.where(valid, t, 0)
    dx[xp.arange(N), tc] -= (1.0 - label_smoothing) * g
    if label_smoothing:
        dx -= (label_smoothing / V) * g[:, None]
    return dx


class CrossEntropy(Function):
    """loss = -log softmax(logits)[target] (optionally label-smoothed), reduced over the rows.

    Backward: dlogits = g * (softmax(logits) - q) per row, q = (1 - eps) onehot(target) + eps / V
    the smoothed target, g the row's share of dloss (dloss / n_valid for "mean"), 0 for ignored rows;
    with every row ignored, "mean" gives a nan loss and a zero gradient (as PyTorch).
    Saved on the CPU: e = exp(logits - shift) and r = 1 / rowsum(e), so p = e * r costs one pass;
    on the GPU's fused kernel: the logits and lse per row (p = exp(logits - lse), one re-read);
    either way the targets and the mask of rows that count.
    Derivation: docs/backward.md#crossentropy
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        if reduction not in REDUCTIONS:
            raise ValueError(f"cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
        if logits.ndim == 0 or logits.dtype.kind != "f":
            raise TypeError(f"cross_entropy: logits must be a float array (..., V), got shape "
                            f"{logits.shape} dtype {logits.dtype}")
        valid = check_targets(logits.shape, targets, ignore_index)
        V = logits.shape[-1]
        x2 = logits.reshape(-1, V)  # (N, V)
        t, valid = targets.reshape(-1), valid.reshape(-1)  # (N,)
        ctx.fused = cuda.serves(x2) and not label_smoothing
        if ctx.fused:  # the kernel keeps lse per row, not e: backward re-reads the logits once
            loss, lse = cuda.cross_entropy_forward(x2, t, ignore_index)
            ctx.save_for_backward(x2, lse, t, valid)  # (logits, lse, ...): unpacked by name below
            ctx.ignore_index = ignore_index
        else:
            loss, e, r = by_row_chunks(lambda x, t, v: cross_entropy_forward_cpu(x, t, v, label_smoothing),
                                       x2, t, valid)
            ctx.save_for_backward(e, r, t, valid)
        ctx.meta = (logits.shape, targets.shape, reduction, label_smoothing)
        if reduction == "none":
            return loss.reshape(targets.shape)
        xp = array_module(logits)
        total = xp.asarray(loss.sum())
        if reduction == "sum":
            return total
        if xp is np:
            ctx.n_valid = int(valid.sum())
            # all rows ignored: 0 / 0 = nan, as in PyTorch
            return total / total.dtype.type(ctx.n_valid) if ctx.n_valid else total * np.nan
        # on the GPU the count stays on the device (reading it would be a sync every step):
        # 0 / 0 gives the same nan; backward recounts the saved mask
        with np.errstate(invalid="ignore"):
            return total / valid.sum().astype(total.dtype)

    @staticmethod
    def backward(ctx, dy):
        shape, t_shape, reduction, eps = ctx.meta
        valid = ctx.saved[3]
        if reduction != "mean":
            scale = 1
        elif array_module(valid) is np:
            scale = 1.0 / ctx.n_valid if ctx.n_valid else 0.0
        else:  # a device scalar: with no row counting, every row's gradient is 0 anyway
            scale = (1 / array_module(valid).maximum(valid.sum(), 1)).astype(ctx.saved[0].dtype)
        if ctx.fused:
            logits, lse, t, valid = ctx.saved
            # per row for "none"; otherwise one scale for every row, which the kernel broadcasts
            g = dy.reshape(-1) if reduction == "none" else dy * scale
            return cuda.cross_entropy_backward(logits, t, lse, g, ctx.ignore_index).reshape(shape)
        e, r, t, valid = ctx.saved
        xp = array_module(e)
        if reduction == "none":
            g = dy.reshape(-1)
        else:
            g = xp.full(t.shape, dy * scale, dtype=e.dtype)
        return by_row_chunks(lambda e, r, t, v, g: cross_entropy_backward_cpu(e, r, t, v, g, eps),
                             e, r, t, valid, g).reshape(shape)
