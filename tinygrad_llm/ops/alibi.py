"""ALiBi (Press et al. 2022, "Train Short, Test Long"): no position embedding at all; instead each
head h adds -m_h * (p - j) to the score of query position p and key j <= p, a penalty linear in
the distance with a fixed slope per head. The slopes are constants (no gradient), so the bias
changes nothing in attention's backward: P is still the softmax of the (now biased) scores.

Slopes: for n heads, n a power of two, the geometric sequence m_h = 2^(-8 h / n), h = 1..n
(n = 8: 1/2, 1/4, ..., 1/256). Otherwise the paper's rule (its reference code, get_slopes):
take the 2^floor(log2 n) slopes of the closest smaller power of two, then the missing ones from
every other slope of the sequence for twice that many heads (the odd entries 1, 3, 5, ...),
which interleave between the first ones.
"""
import math

import numpy as np

from ..backend import array_module


def _power_of_two_slopes(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (h + 1) for h in range(n)]


def alibi_slopes(n_head):
    """(n_head,) float64: head h's slope m_h, the paper's geometric sequence (see the module)."""
    if isinstance(n_head, bool) or not isinstance(n_head, (int, np.integer)) or n_head < 1:
        raise ValueError(f"alibi_slopes: n_head must be a positive integer, got {n_head!r}")
    closest = 2 ** math.floor(math.log2(n_head))
    slopes = _power_of_two_slopes(closest)
    if closest < n_head:
        slopes += _power_of_two_slopes(2 * closest)[0::2][:n_head - closest]
    return np.asarray(slopes, np.float64)


def check_alibi_slopes(slopes, q):
    """slopes as a (H,) array of q's array module and dtype (None stays None), else a ValueError."""
    if slopes is None:
        return None
    xp = array_module(q)
    H = q.shape[1]
    if tuple(np.shape(slopes)) != (H,):
        raise ValueError(f"scaled_dot_product_attention: alibi_slopes of shape {tuple(np.shape(slopes))} "
                         f"must be (H,) = ({H},), one slope per query head")
    if array_module(slopes) is np:  # host values (lists too): checked on the host
        host = np.asarray(slopes)
        if host.dtype.kind not in "fiu" or not np.isfinite(host).all():
            raise ValueError("scaled_dot_product_attention: alibi_slopes must be finite numbers")
    # device slopes are taken as they are: checking them would read the device once per call
    return xp.asarray(slopes).astype(q.dtype if q.dtype.kind == "f" and q.dtype.itemsize >= 4 else np.float32)


def alibi_bias(slopes, Hk, g, Tq, Tk, lo, hi, kbeg, kend, dtype):
    """(Hk, g, hi-lo, kend-kbeg): slopes[h] * (j - p) for query rows [lo, hi) at positions
    p = i + Tk - Tq and keys [kbeg, kend); query head h = group * g + member reads kv head h // g."""
    xp = array_module(slopes)
    p = xp.arange(lo, hi, dtype=dtype)[:, None] + dtype.type(Tk - Tq)
    j = xp.arange(kbeg, kend, dtype=dtype)[None, :]
    return slopes.astype(dtype).reshape(Hk, g, 1, 1) * (j - p)
