"""Preference objectives on sequence log-probabilities: DPO's loss and its IPO and SimPO variants
as one op (used by finetune/dpo.py). Inputs are each completion's summed token log-probabilities
(ops/logprob.py); the reference values and completion lengths are constants."""
from ..autograd import Function
from ..backend import array_module

LOSS_TYPES = ("sigmoid", "ipo", "simpo")


class PreferenceLoss(Function):
    """Mean over pairs of the DPO loss, or IPO's or SimPO's, from sequence log-probabilities.

    z = (c - c_ref) - (r - r_ref) (sigmoid, ipo), or z = c / n_c - r / n_r (simpo, no reference):
      sigmoid  loss = -log sigmoid(beta z)          = softplus(-beta z)
      ipo      loss = (z - 1 / (2 beta))^2
      simpo    loss = -log sigmoid(beta z - gamma)
    Backward: dloss/dz = -beta sigmoid(-(beta z - gamma)) (gamma = 0 for DPO), 2 (z - 1/(2 beta))
    for IPO; then dc = dz/dc * that / B and dr likewise, with dz/dc = 1 (1/n_c) and dz/dr = -1 (-1/n_r).
    Derivation: docs/backward.md#dpo
    """

    @staticmethod
    def forward(ctx, chosen, rejected, ref_chosen=None, ref_rejected=None, n_chosen=None,
                n_rejected=None, beta=0.1, loss_type="sigmoid", gamma=0.0):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"preference loss: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if not beta > 0:
            raise ValueError(f"preference loss: beta must be > 0, got {beta}")
        if chosen.shape != rejected.shape or chosen.ndim != 1:
            raise ValueError(f"preference loss: chosen {chosen.shape} and rejected {rejected.shape} "
                             "must both be (B,) sequence log-probabilities")
        xp = array_module(chosen)
        if loss_type == "simpo":
            dzc, dzr = 1.0 / n_chosen, -1.0 / n_rejected
            z = chosen * dzc + rejected * dzr
        else:
            dzc, dzr = 1.0, -1.0
            z = (chosen - ref_chosen) - (rejected - ref_rejected)
        if loss_type == "ipo":
            d = z - 1.0 / (2.0 * beta)
            loss, dz = d * d, 2.0 * d
        else:
            h = beta * z - (gamma if loss_type == "simpo" else 0.0)
            loss = xp.logaddexp(0.0, -h)  # softplus(-h), stable for any h
            dz = -beta * xp.exp(-xp.logaddexp(0.0, h))  # -beta sigmoid(-h)
        B = chosen.shape[0]
        ctx.save_for_backward(dz * dzc / B, dz * dzr / B)
        return xp.asarray(loss.mean(), dtype=chosen.dtype)

    @staticmethod
    def backward(ctx, dy):
        dc, dr = ctx.saved
        return (dy * dc).astype(dc.dtype, copy=False), (dy * dr).astype(dr.dtype, copy=False)
