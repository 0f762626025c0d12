"""Scaled dot-product attention as one op, with grouped-query heads and a hand-derived backward.

Grouped-query attention without copies: q (B, H, Tq, D) is viewed as (B, H_kv, g, Tq, D), the
g = H / H_kv query heads that share one key/value head side by side, and k, v get a size-1 group
axis that matmul broadcasts: nothing is repeated, and dK, dV are summed over the group axis.

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

# Causal attention with T_q >= BLOCK_MIN_T is computed in query blocks of BLOCK_ROWS rows: block
# [lo, hi) needs only the keys < hi + (T_k - T_q), so the GEMMs skip most of the hidden upper
# triangle ((n + 1) / 2n of the work for n blocks) at the price of a few more Python calls each.
# 128 rows, not 64: at T=256 (B=12, 6 heads of 64) forward + backward per layer took 32.6 ms in
# two blocks vs 35.4 ms in four and 37.9 ms unblocked (bigger GEMMs beat the skipped work).
BLOCK_ROWS = 128
BLOCK_MIN_T = 256

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


def query_blocks(Tq, Tk, causal):
    """[(lo, hi, kend)]: query rows [lo, hi) attend to keys [0, kend)."""
    if not causal or Tq < BLOCK_MIN_T:
        return [(0, Tq, Tk)]
    return [(lo, min(lo + BLOCK_ROWS, Tq), min(lo + BLOCK_ROWS, Tq) + Tk - Tq)
            for lo in range(0, Tq, BLOCK_ROWS)]


def _scores(qs, k, causal, lo, hi, kend):
    """S = qs k^T for query rows [lo, hi) and keys [0, kend): (B, Hk, g, hi-lo, kend), -inf hidden."""
    xp = array_module(qs)
    S = qs[..., lo:hi, :] @ k[:, :, None, :kend].swapaxes(-1, -2)  # k broadcast over the group
    if causal:
        Tq, Tk = qs.shape[3], k.shape[2]
        c0 = lo + Tk - Tq  # every row of the block sees keys < c0: the mask only touches the rest
        S[..., c0:] += causal_bias(xp, Tq, Tk, S.dtype)[lo:hi, c0:kend]
    return S


def _split_heads(a, Hk, g):
    """(B, Hk * g, T, D) -> (B, Hk, g, T, D) as a view whatever a's strides. Setting .shape (NumPy
    and CuPy alike) raises rather than copy: results are written into this view, and writes into
    a silent copy would be lost."""
    view = a.view()
    view.shape = a.shape[:1] + (Hk, g) + a.shape[2:]
    return view


def attention_forward_ref(q, k, v, causal=True, scale=None, out=None):
    """(o, qs, Es, r, lse) for q (B, H, Tq, D), k (B, Hk, Tk, D), v (B, Hk, Tk, Dv).

    o (B, H, Tq, Dv) = softmax(q k^T * scale, causal) v, written into out when given (any strides,
    such as a (B, Tq, H, Dv) buffer seen through a transpose). In the grouped layout
    (B, Hk, g, Tq, .): qs = q * scale; per query block (see query_blocks) Es holds
    E = exp(S - shift); r = 1 / rowsum E and lse = shift + log rowsum E, (B, Hk, g, Tq).
    """
    xp = array_module(q)
    B, H, Tq, D = q.shape
    Hk, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    g = H // Hk
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    qs = _split_heads(q, Hk, g) * q.dtype.type(scale)  # (B, Hk, g, Tq, D): heads sharing k, v
    v1 = xp.concatenate([v, xp.ones(v.shape[:3] + (1,), dtype=v.dtype)], axis=-1)  # (B, Hk, Tk, Dv+1)
    if out is None:
        out = xp.empty((B, H, Tq, Dv), dtype=q.dtype)
    o = _split_heads(out, Hk, g)
    r = xp.empty((B, Hk, g, Tq), dtype=q.dtype)
    lse = xp.empty_like(r)
    Es = []
    for lo, hi, kend in query_blocks(Tq, Tk, causal):
        S = _scores(qs, k, causal, lo, hi, kend)
        vb = v1[:, :, None, :kend]  # (B, Hk, 1, kend, Dv+1)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            E = xp.exp(S, out=S)
            ov = E @ vb  # (B, Hk, g, hi-lo, Dv+1): the last column is rowsum(E)
        s = ov[..., Dv]
        shift = 0
        if not bool(((s >= 1e-30) & (s <= 1e30)).all()):
            S = _scores(qs, k, causal, lo, hi, kend)
            shift = S.max(axis=-1, keepdims=True)
            E = xp.exp(xp.subtract(S, shift, out=S), out=S)
            ov = E @ vb
            s = ov[..., Dv]
            shift = shift[..., 0]
        xp.reciprocal(s, out=r[..., lo:hi])
        xp.multiply(ov[..., :Dv], r[..., lo:hi, None], out=o[..., lo:hi, :])
        lse[..., lo:hi] = xp.log(s) + shift
        Es.append(E)
    return out, qs, Es, r, lse


def attention_backward_ref(do, o, qs, k, v, Es, r, scale, causal=True, lse=None, out=None):
    """(dq, dk, dv) given dO and the saved o, qs, k, v, and per query block E with P = E * r.

    dP = dO v^T;  dS = P * (dP - rowsum(dO * O));  dq = dS k * scale;  dk = dS^T qs;  dv = P^T dO.
    With P = E * r, r is folded into dO (a (Tq, Dv) pass) instead of the (Tq, Tk) matrix. Es None:
    each block's P is rebuilt as exp(S - lse) (and r is 1). do and o may have any strides; out:
    (dq, dk, dv) buffers of the inputs' shapes to write into (any strides), else new arrays.
    """
    xp = array_module(do)
    B, Hk, g, Tq, D = qs.shape
    Tk, Dv = k.shape[2], v.shape[3]
    do5 = _split_heads(do, Hk, g)  # (B, Hk, g, Tq, Dv)
    dsum = xp.einsum("bhgtd,bhgtd->bhgt", do5, _split_heads(o, Hk, g))  # rowsum(dO * O)
    if Es is None:
        r = xp.ones_like(lse)
    dsum *= r
    dor = do5 * r[..., None]
    if out is None:
        dq, dk, dv = xp.empty_like(qs), None, None  # dk, dv: the first block's results themselves
    else:
        dq, dk, dv = _split_heads(out[0], Hk, g), out[1], out[2]
    first = True
    # last block first: it sees every key (kend = T_k), so its dK, dV start the sums and no
    # zeroed (B, Hk, Tk, .) arrays are needed
    for i, (lo, hi, kend) in reversed(list(enumerate(query_blocks(Tq, Tk, causal)))):
        if Es is None:
            E = _scores(qs, k, causal, lo, hi, kend)
            E -= lse[..., lo:hi, None]
            xp.exp(E, out=E)
        else:
            E = Es[i]
        kb, vb = k[:, :, None, :kend], v[:, :, None, :kend]  # (B, Hk, 1, kend, .)
        dorb = dor[..., lo:hi, :]
        dS = dorb @ vb.swapaxes(-1, -2)  # (B, Hk, g, hi-lo, kend)
        dS -= dsum[..., lo:hi, None]
        dS *= E  # hidden places have E = 0, so dS = 0 there
        xp.matmul(dS, kb, out=dq[..., lo:hi, :])
        dSt, Et, qsb = dS.swapaxes(-1, -2), E.swapaxes(-1, -2), qs[..., lo:hi, :]  # views
        if first:  # kend = T_k: this block's dK, dV start the sums
            first = False
            if dk is None:  # no buffers given: the block's results are the sums
                dk, dv = _group_sum(dSt @ qsb), _group_sum(Et @ dorb)
            elif g == 1:  # into the given buffers, straight from the GEMMs
                xp.matmul(dSt, qsb, out=dk[:, :, None])
                xp.matmul(Et, dorb, out=dv[:, :, None])
            else:
                xp.sum(dSt @ qsb, axis=2, out=dk)
                xp.sum(Et @ dorb, axis=2, out=dv)
            continue
        dk[:, :, :kend] += _group_sum(dSt @ qsb)  # (B, Hk, kend, D)
        dv[:, :, :kend] += _group_sum(Et @ dorb)
    dq *= qs.dtype.type(scale)
    return (dq.reshape(B, Hk * g, Tq, D) if out is None else out[0]), dk, dv


def _group_sum(a):
    """(B, Hk, g, T, D) -> (B, Hk, T, D): the g query heads of a group share one k, v head."""
    return a[:, :, 0] if a.shape[2] == 1 else a.sum(axis=2)


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
    unnormalised E = exp(S - shift) per query block (ctx.Es): on a CPU recomputing it costs a GEMM
    and an exp pass per step. Above that only the log-sum-exp per row is kept (O(T) memory) and
    E is recomputed from q and k in backward.
    Causal means query i sees keys j <= i + (T_k - T_q), so one new query sees every cached key.
    Derivation: docs/backward.md#scaleddotproductattention
    """

    @staticmethod
    def forward(ctx, q, k, v, causal=True, scale=None):
        check_qkv(q, k, v, causal)
        scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else float(scale)
        # BLAS keeps its threads: measured on a quiet 2-core machine, one thread was no faster at
        # T=64 (1.34 ms either way per layer, forward + backward) and slower at T=256 (42 vs 36 ms)
        o, qs, Es, r, lse = attention_forward_ref(q, k, v, causal, scale)
        if sum(E.nbytes for E in Es) > SAVE_PROBS_MAX_BYTES:
            Es, r = None, lse  # backward rebuilds P from the log-sum-exp per row
        ctx.save_for_backward(o, qs, k, v, r)
        ctx.Es, ctx.causal, ctx.scale = Es, causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        o, qs, k, v, r = ctx.saved
        if ctx.Es is None:
            return attention_backward_ref(do, o, qs, k, v, None, None, ctx.scale, ctx.causal, lse=r)
        return attention_backward_ref(do, o, qs, k, v, ctx.Es, r, ctx.scale, ctx.causal)


def packed_heads(qkv, n_head, n_kv_head):
    """q (B, H, T, D), k and v (B, Hk, T, D) as strided views of qkv (B, T, (H + 2 Hk) D)."""
    B, T, W = qkv.shape
    if n_head < 1 or n_kv_head < 1 or W % (n_head + 2 * n_kv_head):
        raise ValueError(f"qkv_attention: the last axis of qkv {tuple(qkv.shape)} must hold "
                         f"n_head + 2 n_kv_head = {n_head} + 2 x {n_kv_head} heads of equal size")
    heads = qkv.reshape(B, T, n_head + 2 * n_kv_head, -1).transpose(0, 2, 1, 3)  # a view
    return heads[:, :n_head], heads[:, n_head:n_head + n_kv_head], heads[:, n_head + n_kv_head:]


class QKVAttention(Function):
    """Attention straight from a packed projection: qkv (B, T, (H + 2 Hk) D) -> y (B, T, H D).

    The same map as splitting qkv into q, k, v heads, ScaledDotProductAttention, and merging the
    heads back, and the same backward, per head (P the attention matrix):
        dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = dS K * scale,  dK = dS^T Q * scale,
        dV = P^T dO,  and dqkv holds dQ, dK, dV in the places qkv holds Q, K, V.
    Only the layout differs. The heads are read from qkv through strides and the output is written
    head by head into its (B, T, H, D) place, so neither direction copies a transposed tensor;
    backward writes dq, dk and dv into one gradient of qkv's shape, where the split would build
    three zero-filled gradients of that shape and add them up.  Derivation: docs/backward.md#qkvattention
    """

    @staticmethod
    def forward(ctx, qkv, n_head, n_kv_head, causal=True, scale=None):
        if qkv.ndim != 3:
            raise ValueError(f"qkv_attention: qkv must be (B, T, (n_head + 2 n_kv_head) head_size), "
                             f"got shape {tuple(qkv.shape)}")
        q, k, v = packed_heads(qkv, n_head, n_kv_head)
        check_qkv(q, k, v, causal)
        B, H, T, D = q.shape
        scale = 1.0 / np.sqrt(D) if scale is None else float(scale)
        y = array_module(qkv).empty((B, T, H, D), dtype=qkv.dtype)
        o, qs, Es, r, lse = attention_forward_ref(q, k, v, causal, scale, out=y.transpose(0, 2, 1, 3))
        if sum(E.nbytes for E in Es) > SAVE_PROBS_MAX_BYTES:
            Es, r = None, lse
        ctx.save_for_backward(o, qs, k, v, r)
        ctx.Es, ctx.causal, ctx.scale, ctx.heads = Es, causal, scale, (n_head, n_kv_head)
        return y.reshape(B, T, H * D)

    @staticmethod
    def backward(ctx, dy):
        o, qs, k, v, r = ctx.saved
        B, T, HD = dy.shape
        n_head, n_kv_head = ctx.heads
        dqkv = array_module(dy).empty((B, T, (n_head + 2 * n_kv_head) * (HD // n_head)), dtype=dy.dtype)
        do = dy.reshape(B, T, n_head, -1).transpose(0, 2, 1, 3)  # (B, H, T, D), a view
        Es, lse = (None, r) if ctx.Es is None else (ctx.Es, None)
        attention_backward_ref(do, o, qs, k, v, Es, None if Es is None else r, ctx.scale, ctx.causal,
                               lse=lse, out=packed_heads(dqkv, n_head, n_kv_head))
        return dqkv
