"""Per-token log-probabilities gathered from logits as one op: log softmax and the gather fused.

    logp[b, t] = mask[b, t] * (x[b, t, y[b, t]] - logsumexp_j x[b, t, j])

The preference and reinforcement objectives (finetune/dpo.py, finetune/grpo.py) start from these
values; a sequence's log-probability is their sum over its completion tokens. Like cross-entropy
the one-hot matrix is never built: backward is p = e * r per row, scattered at the targets.
"""

from ..autograd import Function
from ..backend import array_module
from .cross_entropy import check_targets, exp_rows


def token_logprob_textbook(x, y, mask):
    """The docstring's formula in plain xp, for reading and for the tests: (..., V), (...), (...)."""
    xp = array_module(x)
    shifted = x - x.max(axis=-1, keepdims=True)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
    picked = xp.take_along_axis(logp, xp.where(mask, y, 0)[..., None], axis=-1)[..., 0]
    return xp.where(mask, picked, 0.0)


class TokenLogProb(Function):
    """logp = mask * log softmax(logits)[target], per position (no reduction).

    Backward: dlogits = dy * mask * (onehot(target) - softmax(logits)) per row; masked rows get 0.
    Saved: e = exp(logits - shift) and r = 1 / rowsum(e) (so p = e * r), the targets and the mask.
    Derivation: docs/backward.md#token-log-probabilities
    """

    @staticmethod
    def forward(ctx, logits, targets=None, mask=None):
        if logits.ndim == 0 or logits.dtype.kind != "f":
            raise TypeError(f"token_logprobs: logits must be a float array (..., V), got shape "
                            f"{logits.shape} dtype {logits.dtype}")
        if tuple(mask.shape) != tuple(targets.shape):
            raise ValueError(f"token_logprobs: mask of shape {tuple(mask.shape)} must match targets "
                             f"of shape {tuple(targets.shape)}")
        xp = array_module(logits)
        mask = mask.astype(bool)
        t = xp.where(mask, targets, 0)  # masked positions may hold any id (padding, -100)
        check_targets(logits.shape, t, ignore_index=-1, name="token_logprobs")
        V = logits.shape[-1]
        x2, t2, m2 = logits.reshape(-1, V), t.reshape(-1), mask.reshape(-1)  # (N, V), (N,), (N,)
        e, r, shift = exp_rows(x2)
        r = r[:, 0]
        rows = xp.arange(x2.shape[0])
        # log p_t = (x_t - shift) - log rowsum(e) = (x_t - shift) + log r
        logp = x2[rows, t2] - (shift if isinstance(shift, int) else shift[:, 0]) + xp.log(r)
        logp = logp * m2
        ctx.save_for_backward(e, r, t2, m2)
        ctx.logits_shape = logits.shape
        return logp.reshape(targets.shape).astype(logits.dtype, copy=False)

    @staticmethod
    def backward(ctx, dy):
        e, r, t, m = ctx.saved
        xp = array_module(e)
        g = dy.reshape(-1) * m  # (N,)
        dx = e * (-g * r)[:, None]  # -g p
        dx[xp.arange(e.shape[0]), t] += g  # + g onehot(t)
        return dx.reshape(ctx.logits_shape)


def token_logprobs(logits, targets, mask=None):
    """Tensor (B, T) of log p(targets | context) from logits (B, T, V); 0 where mask is False."""
    xp = array_module(logits.data)
    y = xp.asarray(getattr(targets, "data", targets))
    m = xp.ones(y.shape, dtype=bool) if mask is None else xp.asarray(getattr(mask, "data", mask), dtype=bool)
    return TokenLogProb.apply(logits, targets=y, mask=m)
