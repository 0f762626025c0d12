"""The float64 reference for the fused attention kernels, straight from the definition (T x T
matrices), with every mask the kernels take: causal with the KV-cache offset, a sliding window,
segment ids, and ALiBi slopes. Query i sits at position p = i + Tk - Tq."""
import numpy as np


def visible(B, Tq, Tk, causal, seg, window=None):
    """(B, 1, Tq, Tk) bool: query p sees key j (causal: j <= p; window W > 0: j > p - W; same document)."""
    p = np.arange(Tq)[:, None] + (Tk - Tq)
    j = np.arange(Tk)[None, :]
    mask = j <= p if causal else np.ones((Tq, Tk), bool)
    if window is not None and window > 0:
        mask = mask & (j > p - window)
    mask = np.broadcast_to(mask, (B, Tq, Tk))
    if seg is not None:
        mask = mask & (seg[:, Tk - Tq:, None] == seg[:, None, :])
    return mask[:, None]


def alibi_bias(H, Tq, Tk, slopes):
    """(1, H, Tq, Tk): slopes[h] * (j - p), or 0."""
    if slopes is None:
        return 0.0
    p = np.arange(Tq)[:, None] + (Tk - Tq)
    j = np.arange(Tk)[None, :]
    return np.asarray(slopes, np.float64)[None, :, None, None] * (j - p)[None, None]


def reference(q, k, v, do, causal, scale, seg, window=None, slopes=None):
    """(o, lse, dq, dk, dv) in float64."""
    q, k, v, do = (a.astype(np.float64) for a in (q, k, v, do))
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    G = H // k.shape[1]
    kk, vv = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)  # (B, H, Tk, D)
    mask = visible(B, Tq, Tk, causal, seg, window)
    s = np.where(mask, scale * q @ kk.transpose(0, 1, 3, 2) + alibi_bias(H, Tq, Tk, slopes),
                 -np.inf)  # (B, H, Tq, Tk)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m)
    total = e.sum(-1, keepdims=True)
    p = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    with np.errstate(divide="ignore"):
        lse = np.where(total[..., 0] > 0, m[..., 0] + np.log(total[..., 0]), -np.inf)
    o = p @ vv
    dp = do @ vv.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = scale * ds @ kk
    dk = scale * ds.transpose(0, 1, 3, 2) @ q
    dv = p.transpose(0, 1, 3, 2) @ do

    def group_sum(a):  # (B, H, Tk, D) -> (B, Hkv, Tk, D): the heads sharing a kv head add up
        return a.reshape(B, -1, G, *a.shape[2:]).sum(2)
    return o, lse, dq, group_sum(dk), group_sum(dv)


def alibi_slopes(H):
    """The ALiBi paper's geometric slopes for H heads (H a power of two here): 2^(-8 h / H)."""
    return 2.0 ** (-8.0 * np.arange(1, H + 1) / H)
