"""Scaled dot-product attention as one op, with grouped-query heads and a hand-derived backward.

Grouped-query attention without copies: the H / H_kv query heads that share one key/value head
are stacked along the row axis, q (B, H, Tq, D) -> (B, H_kv, g*Tq, D), so every product below is
one batched GEMM against the un-repeated k and v, and dK, dV come out summed over the group.

The softmax is kept unnormalised: E = exp(S - shift) and r = 1 / rowsum(E). The row sums come out
of the output GEMM for free (v gets a column of ones: E @ [v, 1] = [E v, rowsum E]), and the
normalisation is applied to the (Tq, D) output instead of the (Tq, Tk) matrix. The shift is 0
whenever every row sum lands in [1e-30, 1e30] (no overflow, no subnormals); otherwise the row max
is subtracted and the forward is redone the stable way.
"""
import numpy as np

from ..autograd import Function
from ..backend import array_module

# Save E for backward when it is at most this big; above it, save only the log-sum-exp per row
# and recompute E from q and k (one GEMM and one exp pass more, memory O(T) instead of O(T^2)).
SAVE_PROBS_MAX_BYTES = 256 << 20

_bias_cache = {}  # (xp, Tq, Tk, dtype) -> (Tq, Tk) array of 0 / -inf


def causal_bias(xp, Tq, Tk, dtype):
    """0 where query i may see key j (j <= i + Tk - Tq), -inf elsewhere."""
    key = (xp.__name__, Tq, Tk, np.dtype(dtype).str)
    bias = _bias_cache.get(key)
    if bias is None:
        i = xp.arange(Tq)[:, None]
        j = xp.arange(Tk)[None, :]
        bias = xp.where(j <= i + (Tk - Tq), 0.0, -np.inf).astype(dtype)
        if len(_bias_cache) > 64:
            _bias_cache.clear()
        _bias_cache[key] = bias
    return bias


def _scores(qs, k, causal, Tq):
    """S = qs k^T (B, Hk, g*Tq, Tk), with -inf at the causally hidden places."""
    xp = array_module(qs)
    S = qs @ k.swapaxes(-1, -2)  # (B, Hk, g*Tq, Tk)
    if causal:
        B, Hk, R, Tk = S.shape
        S5 = S.reshape(B, Hk, R // Tq, Tq, Tk)  # (B, Hk, g, Tq, Tk): the mask repeats per head
        S5 += causal_bias(xp, Tq, Tk, S.dtype)
    return S


def attention_forward_ref(q, k, v, causal=True, scale=None):
    """(o, qs, E, r, lse) for q (B, H, Tq, D), k (B, Hk, Tk, D), v (B, Hk, Tk, Dv).

    o (B, H, Tq, Dv) = softmax(q k^T * scale, causal) v. In the grouped layout (B, Hk, g*Tq, .):
    qs = q * scale, E = exp(S - shift), r = 1 / rowsum(E), lse = shift + log rowsum(E).
    """
    xp = array_module(q)
    B, H, Tq, D = q.shape
    Hk, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    qs = q.reshape(B, Hk, (H // Hk) * Tq, D) * q.dtype.type(scale)  # (B, Hk, g*Tq, D)
    S = _scores(qs, k, causal, Tq)
    v1 = xp.concatenate([v, xp.ones(v.shape[:3] + (1,), dtype=v.dtype)], axis=-1)  # (B, Hk, Tk, Dv+1)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        E = xp.exp(S)
        ov = E @ v1  # (B, Hk, g*Tq, Dv+1): the last column is rowsum(E)
    s = ov[..., Dv]
    shift = 0
    if not bool(((s >= 1e-30) & (s <= 1e30)).all()):
        S = _scores(qs, k, causal, Tq)
        shift = S.max(axis=-1, keepdims=True)
        xp.subtract(S, shift, out=E)
        xp.exp(E, out=E)
        ov = E @ v1
        s = ov[..., Dv]
        shift = shift[..., 0]
    r = 1.0 / s
    o = ov[..., :Dv] * r[..., None]
    lse = xp.log(s) + shift
    return o.reshape(B, H, Tq, Dv), qs, E, r, lse


def attention_backward_ref(do, o, qs, k, v, E, r, scale, Tq):
    """(dq, dk, dv) given dO and the saved o, qs, k, v and E, r (P = E * r per row).

    dP = dO v^T;  dS = P * (dP - rowsum(dO * O));  dq = dS k * scale;  dk = dS^T qs;  dv = P^T dO.
    With P = E * r, r is folded into dO (a (Tq, Dv) pass) instead of the (Tq, Tk) matrix.
    """
    xp = array_module(do)
    B, H, _, Dv = do.shape
    Hk, D = k.shape[1], k.shape[3]
    R = qs.shape[2]  # g * Tq
    dog = do.reshape(B, Hk, R, Dv)  # (B, Hk, g*Tq, Dv)
    og = o.reshape(B, Hk, R, Dv)
    dsum = xp.einsum("bhrd,bhrd->bhr", dog, og)  # rowsum(dO * O): the softmax Jacobian's y . dy
    dsum *= r
    dor = dog * r[..., None]
    dS = dor @ v.swapaxes(-1, -2)  # (B, Hk, g*Tq, Tk)
    dS -= dsum[..., None]
    dS *= E  # hidden places have E = 0, so dS = 0 there
    dq = (dS @ k) * qs.dtype.type(scale)
    dk = dS.swapaxes(-1, -2) @ qs
    dv = E.swapaxes(-1, -2) @ dor
    return dq.reshape(B, H, Tq, D), dk, dv


def check_qkv(q, k, v, causal):
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"scaled_dot_product_attention: q, k, v must be (B, H, T, D); got {shapes}")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"scaled_dot_product_attention: shapes do not fit ({shapes}); need the same "
                         "B, the same D for q and k, and the same (B, H_kv, T_k) for k and v")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"scaled_dot_product_attention: {q.shape[1]} query heads are not a multiple "
                         f"of {k.shape[1]} key/value heads ({shapes})")
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"scaled_dot_product_attention: causal with T_q {q.shape[2]} > T_k "
                         f"{k.shape[2]} leaves the first queries no key to attend to ({shapes})")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"scaled_dot_product_attention: dtypes differ: q {q.dtype}, k {k.dtype}, "
                        f"v {v.dtype}")


class ScaledDotProductAttention(Function):
    """O = softmax(Q K^T * scale + causal mask) V, per head; key/value heads may be grouped.

    Backward (P the attention matrix):
        dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = dS K * scale,  dK = dS^T Q * scale,
        dV = P^T dO.  rowsum(dO * O) stands in for rowsum(P * dP): O = P V makes them equal.
    Saved: q * scale, k, v, O, r = 1 / rowsum and, while it is at most SAVE_PROBS_MAX_BYTES, the
    unnormalised E = exp(S - shift): on a CPU recomputing it costs a GEMM and an exp pass per
    step. Above that only the log-sum-exp per row is kept (O(T) memory) and E is recomputed.
    Causal means query i sees keys j <= i + (T_k - T_q), so one new query sees every cached key.
    Derivation: docs/backward.md#scaleddotproductattention
    """

    @staticmethod
    def forward(ctx, q, k, v, causal=True, scale=None):
        check_qkv(q, k, v, causal)
        scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else float(scale)
        o, qs, E, r, lse = attention_forward_ref(q, k, v, causal, scale)
        if E.nbytes > SAVE_PROBS_MAX_BYTES:
            E, r = None, lse  # backward rebuilds the normalised P from lse
        ctx.save_for_backward(o, qs, k, v, E, r)
        ctx.causal, ctx.scale, ctx.Tq = causal, scale, q.shape[2]
        return o

    @staticmethod
    def backward(ctx, do):
        o, qs, k, v, E, r = ctx.saved
        xp = array_module(do)
        if E is None:
            lse = r
            E = _scores(qs, k, ctx.causal, ctx.Tq)
            E -= lse[..., None]
            xp.exp(E, out=E)  # the normalised P
            r = xp.ones_like(lse)
        return attention_backward_ref(do, o, qs, k, v, E, r, ctx.scale, ctx.Tq)
