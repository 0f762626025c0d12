"""GRPO's objective on per-token log-probabilities as one op (used by finetune/grpo.py): the
PPO-style clipped importance ratio times each completion's advantage, minus beta times the k3
estimate of KL(policy || reference), averaged over each completion's tokens, then over completions:

    o_t = min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A) - beta k3_t,
    rho_t = exp(logp_t - logp_old_t),   k3_t = exp(logp_ref_t - logp_t) - (logp_ref_t - logp_t) - 1
"""
from ..autograd import Function
from ..backend import array_module


class GRPOLoss(Function):
    """loss = -(1/N) sum_i (1/|m_i|) sum_t m_it o_it, o as in the module docstring, from per-token
    log-probabilities logp (N, T); logp_old, logp_ref, the advantages A (N,) and the mask m are constants.

    Backward: dlogp_it = -m_it / (N |m_i|) (rho_it A_i [rho_it A_i <= clip(rho_it) A_i]
    - beta (1 - exp(logp_ref_it - logp_it))): the clipped branch is constant in logp.
    Derivation: docs/backward.md#grpo
    """

    @staticmethod
    def forward(ctx, logp, logp_old=None, logp_ref=None, advantages=None, mask=None, eps=0.2, beta=0.04):
        xp = array_module(logp)
        if logp.ndim != 2 or logp_old.shape != logp.shape or mask.shape != logp.shape:
            raise ValueError(f"grpo loss: logp {logp.shape}, logp_old {logp_old.shape} and mask {mask.shape} "
                             "must all be (N, T)")
        if advantages.shape != logp.shape[:1]:
            raise ValueError(f"grpo loss: advantages of shape {advantages.shape} need shape {logp.shape[:1]}")
        m = mask.astype(logp.dtype)
        counts = m.sum(axis=-1)
        if (counts == 0).any():
            row = int(xp.nonzero(counts == 0)[0][0])
            raise ValueError(f"grpo loss: completion {row} has no tokens in its mask")
        A = advantages[:, None]
        rho = xp.exp(logp - logp_old)
        unclipped, clipped = rho * A, xp.clip(rho, 1.0 - eps, 1.0 + eps) * A
        o = xp.minimum(unclipped, clipped)
        do = xp.where(unclipped <= clipped, unclipped, 0.0)  # d min(...) / dlogp
        if beta:
            d = logp_ref - logp
            ed = xp.exp(d)
            o = o - beta * (ed - d - 1.0)
            do = do - beta * (1.0 - ed)
        w = m / (counts[:, None] * logp.shape[0])  # each token's weight in the mean
        ctx.save_for_backward(-w * do)
        return xp.asarray(-(w * o).sum(), dtype=logp.dtype)

    @staticmethod
    def backward(ctx, dy):
        (dlogp,) = ctx.saved
        return (dy * dlogp).astype(dlogp.dtype, copy=False)
