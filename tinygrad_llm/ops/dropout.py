"""Inverted dropout: zero each element with probability p and scale the survivors by 1 / (1 - p)."""
from ..autograd import Function
from ..backend import array_module, device_of, rng


def dropout_mask_cpu(shape, p, dtype, device="cpu"):
    """A mask of 0 and 1 / (1 - p) drawn from the device's seeded generator."""
    r = rng(device).random(shape, dtype=dtype)
    keep = r >= p
    array_module(r).multiply(keep, 1.0 / (1.0 - p), out=r)  # reuse the draw's memory for the mask
    return r


class Dropout(Function):
    """y = x * m, m = 1 / (1 - p) with probability 1 - p, else 0 (the expectation of y is x).

    Backward: dx = dy * m.  Saved: the scaled mask m.  Derivation: docs/backward.md#dropout
    """

    @staticmethod
    def forward(ctx, x, p=0.5):
        m = dropout_mask_cpu(x.size, p, x.dtype, device_of(x)).reshape(x.shape)  # flat draw: 0-d too
        ctx.save_for_backward(m)
        return x * m

    @staticmethod
    def backward(ctx, dy):
        (m,) = ctx.saved
        return dy * m
