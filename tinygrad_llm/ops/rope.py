"""Rotary position embedding (RoPE, Su et al. 2021) as one op, in the "rotate half" layout.

Each head vector x of size hs is cut into halves (x1, x2); pair i (x1[i], x2[i]) at position t is
rotated by the angle t * theta^(-2i/hs). Attention scores q.k then depend only on the distance
between the two positions, which is why no position table is learned.
"""
import numpy as np

from ..autograd import Function
from ..backend import array_module


def rope_tables(block_size, head_size, theta=10000.0, dtype=np.float32, xp=np):
    """(cos, sin), each (block_size, head_size // 2): the rotation of pair i at position t."""
    if head_size % 2:
        raise ValueError(f"RoPE needs an even head size, got {head_size}")
    inv_freq = theta ** (-np.arange(0, head_size, 2, dtype=np.float64) / head_size)  # (hs/2,)
    angles = np.outer(np.arange(block_size, dtype=np.float64), inv_freq)  # (T, hs/2)
    return xp.asarray(np.cos(angles), dtype=dtype), xp.asarray(np.sin(angles), dtype=dtype)


class RoPE(Function):
    """y1 = x1 cos - x2 sin,  y2 = x2 cos + x1 sin   for x = (x1, x2) split along the last axis.

    Backward applies the transposed rotation (the rotation by -angle):
    dx1 = dy1 cos + dy2 sin,  dx2 = dy2 cos - dy1 sin. Nothing is saved but the tables.
    Derivation: docs/backward.md#rope
    """

    @staticmethod
    def forward(ctx, x, cos, sin):
        # x (B, H, T, hs); cos, sin (T, hs/2) broadcast over B and H
        half = x.shape[-1] // 2
        if cos.shape != (x.shape[-2], half):
            raise ValueError(f"rope: tables of shape {cos.shape} do not fit x of shape {x.shape}; "
                             f"expected ({x.shape[-2]}, {half})")
        x1, x2 = x[..., :half], x[..., half:]
        y = array_module(x).empty_like(x)
        np_mul = array_module(x).multiply
        np_mul(x1, cos, out=y[..., :half])
        y[..., :half] -= x2 * sin
        np_mul(x2, cos, out=y[..., half:])
        y[..., half:] += x1 * sin
        ctx.save_for_backward(cos, sin)
        return y

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved
        half = dy.shape[-1] // 2
        dy1, dy2 = dy[..., :half], dy[..., half:]
        dx = array_module(dy).empty_like(dy)
        dx[..., :half] = dy1 * cos + dy2 * sin
        dx[..., half:] = dy2 * cos - dy1 * sin
        return dx, None, None
