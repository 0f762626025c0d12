"""Scaled dot-product attention as one op, with grouped-query heads, document (segment) masks,
sliding windows, soft-capped scores and a hand-derived backward.

The same math lives here three times, from plainest to fastest:
  attention_textbook, attention_backward_textbook   the docstring's formulas in a few NumPy lines,
      with the (T_q, T_k) matrices written out: the reference the tests hold the others to.
  attention_forward_cpu, attention_backward_cpu      the tuned loop over query blocks that the
      CPU runs (and the GPU where the flash kernel does not serve, e.g. float64 gradchecks).
  attention_decode_cpu                               one query per head and no backward (a
      generation step): the same softmax without anything a backward would need.
  the flash kernel (kernels/attention.cu through its CuPy glue)   CuPy float32 / bfloat16.

Grouped-query attention without copies: q (B, H, Tq, D) is viewed as (B, H_kv, g, Tq, D), the
g = H / H_kv query heads that share one key/value head side by side, and k, v get a size-1 group
axis that matmul broadcasts: nothing is repeated, and dK, dV are summed over the group axis.

Which key a query sees: query i sits at position p = i + (T_k - T_q) of the keys (one new query
after a cache sits at the last one). Key j is visible when j <= p (causal), with a window W when
also j > p - W (the W keys up to and including its own: Mistral's and Gemma's sliding windows,
transformers' kv_idx > q_idx - sliding_window), and with segment ids when both lie in the same
document. The queries' ids are the last T_q of the keys' ids, so every query sees at least itself.

Soft-capping (Gemma 2): the scaled scores S become cap * tanh(S / cap) before the mask, so no
score exceeds cap in size.

ALiBi (ops/alibi.py): alibi_slopes (H,) adds slopes[h] * (j - p) = -m_h (p - j) to query head h's
(capped) scores before the mask, p the query's absolute position (so a KV cache keeps the
distances right). The slopes are constants: the backward is unchanged.
"""
import importlib

import numpy as np

from .. import backend, cuda
from ..autocast import is_low_precision
from ..autograd import Function
from ..backend import array_module
from .alibi import alibi_bias, check_alibi_slopes

# Save E for backward when it is at most this big; above it, save only the log-sum-exp per row
# and recompute E from q and k (one GEMM and one exp pass more, memory O(T) instead of O(T^2)).
SAVE_PROBS_MAX_BYTES = 256 << 20

# Causal attention with T_q >= QUERY_BLOCK_MIN_T is computed in query blocks of QUERY_BLOCK_ROWS
# rows: block [lo, hi) needs only the keys < hi + (T_k - T_q), so the GEMMs skip most of the
# hidden upper triangle ((n + 1) / 2n of the work for n blocks) at the price of a few more Python
# calls each. 128 rows, not 64: at T=256 (B=12, 6 heads of 64) forward + backward per layer took
# 32.6 ms in two query blocks vs 35.4 ms in four and 37.9 ms unblocked (bigger GEMMs beat the
# skipped work).
QUERY_BLOCK_ROWS = 128
QUERY_BLOCK_MIN_T = 256

# The flash kernel's CuPy glue: flash_attention_forward / flash_attention_backward.
FLASH_GLUE = "tinygrad_llm.cuda.attention"
FLASH_DTYPES = ("float32", "bfloat16")
FLASH_HEAD_DIMS = (32, 64, 128)


# ---------------------------------------------------------------------------------------------
# Which keys each query sees
# ---------------------------------------------------------------------------------------------

def visible(Tq, Tk, causal, segment_ids=None, window=None):
    """(B or 1, 1, Tq, Tk) bool: query i sees key j (causal: j <= p = i + Tk - Tq; a window W:
    also j > p - W; same segment)."""
    i, j = np.arange(Tq)[:, None], np.arange(Tk)[None, :]
    p = i + (Tk - Tq)
    see = (j <= p) if causal else np.ones((Tq, Tk), bool)
    if window is not None:
        see = see & (j > p - window)
    see = see[None, None]
    if segment_ids is not None:
        ids = np.asarray(segment_ids)  # (B, Tk); the queries' ids are the last Tq of them
        see = see & (ids[:, None, Tk - Tq:, None] == ids[:, None, None, :])
    return see


# ---------------------------------------------------------------------------------------------
# The textbook version: the formulas of ScaledDotProductAttention's docstring, nothing else
# ---------------------------------------------------------------------------------------------

def attention_textbook(q, k, v, causal=True, scale=None, segment_ids=None, window=None, softcap=None,
                       alibi=None):
    """(O, P): P = softmax(C(Q K^T * scale) + A, hidden keys -inf) per row, O = P V; float64.
    C(S) = cap tanh(S / cap) with a softcap, else S; A = slopes[h] (j - p) with ALiBi, else 0."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)  # (B, H, Tk, .): head h reads h // g
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    S = q @ k.swapaxes(-1, -2) * scale
    if softcap is not None:
        S = softcap * np.tanh(S / softcap)
    if alibi is not None:
        Tq, Tk = S.shape[-2:]
        S = S + np.asarray(alibi, np.float64)[:, None, None] * (np.arange(Tk)[None] - np.arange(Tq)[:, None]
                                                                 - (Tk - Tq))
    S = np.where(visible(q.shape[2], k.shape[2], causal, segment_ids, window), S, -np.inf)
    P = np.exp(S - S.max(axis=-1, keepdims=True))
    P /= P.sum(axis=-1, keepdims=True)
    return P @ v, P


def attention_backward_textbook(do, q, k, v, causal=True, scale=None, segment_ids=None, window=None,
                                softcap=None, alibi=None):
    """(dQ, dK, dV) by the docstring's formulas, float64; dK, dV summed over each group's heads.
    With a softcap, dS also carries the cap's derivative 1 - tanh^2(S / cap). ALiBi's bias is a
    constant: nothing changes."""
    o, P = attention_textbook(q, k, v, causal, scale, segment_ids, window, softcap, alibi)
    do, q, k, v = (np.asarray(a, np.float64) for a in (do, q, k, v))
    B, Hk, Tk, D = k.shape
    g = q.shape[1] // Hk
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    scale = 1 / np.sqrt(D) if scale is None else scale
    dV = P.swapaxes(-1, -2) @ do
    dP = do @ v.swapaxes(-1, -2)
    dS = P * (dP - (do * o).sum(axis=-1, keepdims=True))
    if softcap is not None:
        dS = dS * (1 - np.tanh(q @ k.swapaxes(-1, -2) * scale / softcap) ** 2)
    dQ = dS @ k * scale
    dK = dS.swapaxes(-1, -2) @ q * scale
    return dQ, dK.reshape(B, Hk, g, Tk, D).sum(axis=2), dV.reshape(B, Hk, g, Tk, -1).sum(axis=2)


# ---------------------------------------------------------------------------------------------
# The tuned CPU path and the tricks it is made of
# ---------------------------------------------------------------------------------------------

_bias_cache = {}  # (xp, Tq, Tk, dtype, window) -> (Tq, Tk) array of 0 / -inf


def causal_bias(xp, Tq, Tk, dtype, window=None):
    """0 where query i may see key j (j <= p = i + Tk - Tq; with a window W also j > p - W),
    -inf elsewhere."""
    key = (xp.__name__, Tq, Tk, np.dtype(dtype).str, window)
    bias = _bias_cache.get(key)
    if bias is None:
        i = xp.arange(Tq)[:, None]
        j = xp.arange(Tk)[None, :]
        see = j <= i + (Tk - Tq)
        if window is not None:
            see &= j > i + (Tk - Tq) - window
        bias = xp.where(see, 0.0, -np.inf).astype(dtype)
        if len(_bias_cache) > 64:
            _bias_cache.clear()
        _bias_cache[key] = bias
    return bias


def segment_bias(segment_ids, Tq, lo, hi, kend, dtype, kbeg=0):
    """(B, 1, 1, hi-lo, kend-kbeg): 0 where query row lo.. and key kbeg.. share a segment, -inf
    elsewhere."""
    xp = array_module(segment_ids)
    Tk = segment_ids.shape[1]
    query_ids = segment_ids[:, Tk - Tq + lo:Tk - Tq + hi, None]  # (B, hi-lo, 1)
    same = query_ids == segment_ids[:, None, kbeg:kend]  # (B, hi-lo, kend-kbeg)
    return xp.where(same, 0.0, -np.inf).astype(dtype)[:, None, None]


def query_blocks(Tq, Tk, causal, window=None):
    """[(lo, hi, kbeg, kend)]: query rows [lo, hi) attend to keys [kbeg, kend). With a window W the
    block's first row sits at p = lo + Tk - Tq and sees no key before p - W + 1."""
    if not causal or Tq < QUERY_BLOCK_MIN_T:
        spans = [(0, Tq)]
    else:
        spans = [(lo, min(lo + QUERY_BLOCK_ROWS, Tq)) for lo in range(0, Tq, QUERY_BLOCK_ROWS)]
    first_key = (lambda lo: max(0, lo + Tk - Tq - window + 1)) if window is not None else (lambda lo: 0)
    return [(lo, hi, first_key(lo), hi + Tk - Tq if causal else Tk) for lo, hi in spans]


def soft_cap_(S, cap):
    """S <- cap tanh(S / cap) in place; returns S. No score leaves (-cap, cap)."""
    xp = array_module(S)
    S *= S.dtype.type(1.0 / cap)
    xp.tanh(S, out=S)
    S *= S.dtype.type(cap)
    return S


def position_mask_(S, Tq, Tk, lo, hi, kbeg, kend, window):
    """S += the causal (and window) bias of query rows [lo, hi) and keys [kbeg, kend), in place."""
    xp = array_module(S)
    bias = causal_bias(xp, Tq, Tk, S.dtype, window)
    if window is not None:
        S += bias[lo:hi, kbeg:kend]
        return S
    c0 = lo + Tk - Tq  # every row of the query block sees keys < c0: the mask only touches the rest
    S[..., c0 - kbeg:] += bias[lo:hi, c0:kend]
    return S


def _scores(qs, k, causal, segment_ids, lo, hi, kbeg, kend, window=None, softcap=None, alibi=None):
    """S = C(qs k^T) + A for query rows [lo, hi) and keys [kbeg, kend): (B, Hk, g, hi-lo, kend-kbeg),
    -inf where hidden; C soft-caps the scores when softcap is set, A is ALiBi's bias (slopes alibi)."""
    S = qs[..., lo:hi, :] @ k[:, :, None, kbeg:kend].swapaxes(-1, -2)  # k broadcast over the group
    Tq, Tk = qs.shape[3], k.shape[2]
    if softcap is not None:
        soft_cap_(S, softcap)
    if alibi is not None:
        S += alibi_bias(alibi, qs.shape[1], qs.shape[2], Tq, Tk, lo, hi, kbeg, kend, S.dtype)
    if causal:
        position_mask_(S, Tq, Tk, lo, hi, kbeg, kend, window)
    if segment_ids is not None:
        S += segment_bias(segment_ids, Tq, lo, hi, kend, S.dtype, kbeg)
    return S


def _split_heads(a, Hk, g):
    """(B, Hk * g, T, D) -> (B, Hk, g, T, D) as a view whatever a's strides. Setting .shape (NumPy
    and CuPy alike) raises rather than copy: results are written into this view, and writes into
    a silent copy would be lost."""
    view = a.view()
    view.shape = a.shape[:1] + (Hk, g) + a.shape[2:]
    return view


def _group_sum(a):
    """(B, Hk, g, T, D) -> (B, Hk, T, D): the g query heads of a group share one k, v head."""
    return a[:, :, 0] if a.shape[2] == 1 else a.sum(axis=2)


def _with_ones_column(v):
    """[v, 1] (B, Hk, Tk, Dv+1): E @ [v, 1] = [E v, rowsum E], so the output GEMM also gives the
    row sums and no separate (Tq, Tk) reduction pass is needed."""
    xp = array_module(v)
    return xp.concatenate([v, xp.ones(v.shape[:3] + (1,), dtype=v.dtype)], axis=-1)


def _unnormalised_probs(qs, k, v1, causal, segment_ids, lo, hi, kbeg, kend, window=None, softcap=None,
                        alibi=None):
    """(E, E @ [v, 1], shift) for one query block, E = exp(S - shift).

    shift = 0 saves the row-max pass whenever every row sum lands in [1e-30, 1e30] (no row sum
    overflows or loses precision; a single entry far below its row's largest may still be
    subnormal, an absolute error below 1.4e-15 in P in float32: see exp_rows in
    cross_entropy.py); otherwise the row max is subtracted and the block redone the stable way.
    Deciding reads the sums on the host, which on a GPU would stall the stream once per query
    block: there the row max is always subtracted.
    """
    xp = array_module(qs)
    vb = v1[:, :, None, kbeg:kend]  # (B, Hk, 1, kend-kbeg, Dv+1)
    if xp is np:
        S = _scores(qs, k, causal, segment_ids, lo, hi, kbeg, kend, window, softcap, alibi)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            E = xp.exp(S, out=S)
            ov = E @ vb  # (B, Hk, g, hi-lo, Dv+1): the last column is rowsum(E)
        s = ov[..., -1]
        if bool(((s >= 1e-30) & (s <= 1e30)).all()):
            return E, ov, 0
    S = _scores(qs, k, causal, segment_ids, lo, hi, kbeg, kend, window, softcap, alibi)
    shift = S.max(axis=-1, keepdims=True)
    E = xp.exp(xp.subtract(S, shift, out=S), out=S)
    return E, E @ vb, shift[..., 0]


def _probs_from_lse(qs, k, lse, causal, segment_ids, lo, hi, kbeg, kend, window=None, softcap=None,
                    alibi=None):
    """(P, cap') for one query block: P = exp(S - lse), the probabilities rebuilt when E was not
    saved, and with a softcap the cap's derivative 1 - tanh^2 = 1 - (C / cap)^2 per score (else
    None), which backward multiplies into dS."""
    xp = array_module(qs)
    P = _scores(qs, k, None, None, lo, hi, kbeg, kend, None, softcap)  # C(S), not yet masked
    dcap = None
    if softcap is not None:
        dcap = P * P.dtype.type(1.0 / softcap)
        dcap *= dcap
        xp.subtract(P.dtype.type(1.0), dcap, out=dcap)
    Tq, Tk = qs.shape[3], k.shape[2]
    if alibi is not None:  # after the cap's derivative, which the bias does not enter
        P += alibi_bias(alibi, qs.shape[1], qs.shape[2], Tq, Tk, lo, hi, kbeg, kend, P.dtype)
    if causal:
        position_mask_(P, Tq, Tk, lo, hi, kbeg, kend, window)
    if segment_ids is not None:
        P += segment_bias(segment_ids, Tq, lo, hi, kend, P.dtype, kbeg)
    P -= lse[..., lo:hi, None]
    return xp.exp(P, out=P), dcap


def attention_forward_cpu(q, k, v, causal=True, scale=None, segment_ids=None, out=None, window=None,
                          softcap=None, alibi=None):
    """(o, qs, Es, inv_rowsum, lse) for q (B, H, Tq, D), k (B, Hk, Tk, D), v (B, Hk, Tk, Dv).

    o (B, H, Tq, Dv) = softmax(C(q k^T * scale), hidden keys -inf) v, written into out when given (any
    strides, such as a (B, Tq, H, Dv) buffer seen through a transpose). In the grouped layout
    (B, Hk, g, Tq, .): qs = q * scale; per query block (see query_blocks) Es holds the unnormalised
    E = exp(S - shift); inv_rowsum = 1 / rowsum E (so P = E * inv_rowsum) and
    lse = shift + log rowsum E (so P = exp(S - lse)), each (B, Hk, g, Tq).
    Normalising the (Tq, Dv) output instead of the (Tq, Tk) matrix saves a pass over E.
    """
    xp = array_module(q)
    B, H, Tq, D = q.shape
    Hk, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    g = H // Hk
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    qs = _split_heads(q, Hk, g) * q.dtype.type(scale)  # (B, Hk, g, Tq, D): heads sharing k, v
    v1 = _with_ones_column(v)  # (B, Hk, Tk, Dv+1)
    if out is None:
        out = xp.empty((B, H, Tq, Dv), dtype=q.dtype)
    o = _split_heads(out, Hk, g)
    inv_rowsum = xp.empty((B, Hk, g, Tq), dtype=q.dtype)
    lse = xp.empty_like(inv_rowsum)
    Es = []
    for lo, hi, kbeg, kend in query_blocks(Tq, Tk, causal, window):
        E, ov, shift = _unnormalised_probs(qs, k, v1, causal, segment_ids, lo, hi, kbeg, kend, window,
                                           softcap, alibi)
        rowsum = ov[..., Dv]
        xp.reciprocal(rowsum, out=inv_rowsum[..., lo:hi])
        xp.multiply(ov[..., :Dv], inv_rowsum[..., lo:hi, None], out=o[..., lo:hi, :])
        lse[..., lo:hi] = xp.log(rowsum) + shift
        Es.append(E)
    return out, qs, Es, inv_rowsum, lse


def attention_decode_cpu(q, k, v, scale, softcap=None, alibi=None):
    """o (B, H, 1, Dv) for one query per head that sees every key it is handed (a decoding step
    after a KV cache), when no backward will run: softmax(C(q k^T * scale)) v with the row max
    shifted out, and nothing kept. Six array passes over (Tk,)-long rows, where the general loop
    also builds the ones column, the mask and the log-sum-exp a backward would need."""
    B, H, _, D = q.shape
    Hk, Dv = k.shape[1], v.shape[3]
    xp = array_module(q)
    qs = _split_heads(q, Hk, H // Hk) * q.dtype.type(scale)  # (B, Hk, g, 1, D)
    S = qs @ k[:, :, None].swapaxes(-1, -2)  # (B, Hk, g, 1, Tk)
    if softcap is not None:
        soft_cap_(S, softcap)
    if alibi is not None:  # the query sits at the last key's position
        Tk = k.shape[2]
        S += alibi_bias(alibi, Hk, H // Hk, 1, Tk, 0, 1, 0, Tk, S.dtype)
    S -= S.max(axis=-1, keepdims=True)
    xp.exp(S, out=S)
    o = S @ v[:, :, None]  # (B, Hk, g, 1, Dv)
    o /= S.sum(axis=-1, keepdims=True)
    return o.reshape(B, H, 1, Dv)


def _decodes(ctx, q, k, causal, segment_ids, window):
    """Whether attention_decode_cpu serves: one query row that every key is visible to, no segment
    ids, no gradient wanted, and not a kernel's arrays (the flash kernel serves those)."""
    return (q.shape[2] == 1 and segment_ids is None and not any(ctx.needs_input_grad)
            and (window is None or k.shape[2] <= window) and flash_kernels(q, k, k) is None
            and not (q.dtype.itemsize == 2 and is_low_precision(q.dtype)))


def _start_key_grads(dSt, Et, qsb, dorb, dk, dv):
    """dK, dV of the last query block, which sees every key: they start the sums, so no zero-filled
    (B, Hk, Tk, .) arrays are needed. Without buffers (dk None) the block's results are the sums;
    with them, the GEMMs write straight in (g == 1) or their group sums do."""
    xp = array_module(dSt)
    if dk is None:
        return _group_sum(dSt @ qsb), _group_sum(Et @ dorb)
    if dSt.shape[2] == 1:
        xp.matmul(dSt, qsb, out=dk[:, :, None])
        xp.matmul(Et, dorb, out=dv[:, :, None])
    else:
        xp.sum(dSt @ qsb, axis=2, out=dk)
        xp.sum(Et @ dorb, axis=2, out=dv)
    return dk, dv


def _last_query_block_first(blocks):
    """[(i, block)] from the last query block to the first: the last sees every key (kend = T_k),
    so its dK, dV can start the sums (_start_key_grads)."""
    return reversed(list(enumerate(blocks)))


def _zero_key_grads(k, v, dk, dv):
    """Zero-filled dK, dV (or the given buffers, zeroed): a window hides the first keys from the last
    query block, so no block's results can start the sums."""
    xp = array_module(k)
    if dk is None:
        return xp.zeros_like(k), xp.zeros(v.shape, dtype=v.dtype)
    dk[...] = 0
    dv[...] = 0
    return dk, dv


def attention_backward_cpu(do, o, qs, k, v, scale, causal=True, segment_ids=None, Es=None,
                           inv_rowsum=None, lse=None, out=None, window=None, softcap=None, alibi=None):
    """(dq, dk, dv) given dO and the saved o, qs, k, v, and either the unnormalised E per query
    block with inv_rowsum (P = E * inv_rowsum) or, Es None, lse (P = exp(S - lse) rebuilt per block).

    dP = dO v^T;  dS = P * (dP - rowsum(dO * O));  dq = dS k * scale;  dk = dS^T qs;  dv = P^T dO.
    With P = E * inv_rowsum, inv_rowsum is folded into dO (a (Tq, Dv) pass) instead of the
    (Tq, Tk) matrix: below, E is always P without the row factor that dor carries (the saved E
    with factor inv_rowsum, or P itself rebuilt from lse with factor 1). do and o may have any
    strides; out: (dq, dk, dv) buffers of the inputs' shapes to write into (any strides), else
    new arrays. With a softcap (P always rebuilt from lse), dS is multiplied by 1 - (C / cap)^2.
    ALiBi's slopes (alibi) only enter P's rebuild: the bias is a constant.
    """
    xp = array_module(do)
    B, Hk, g, Tq, D = qs.shape
    Tk = k.shape[2]
    do5 = _split_heads(do, Hk, g)  # (B, Hk, g, Tq, Dv)
    dsum = xp.einsum("bhgtd,bhgtd->bhgt", do5, _split_heads(o, Hk, g))  # rowsum(dO * O)
    if Es is None:
        dor = xp.ascontiguousarray(do5)  # row factor 1: P is rebuilt normalised
    else:
        dsum *= inv_rowsum
        dor = do5 * inv_rowsum[..., None]
    if out is None:
        dq, dk, dv = xp.empty_like(qs), None, None
    else:
        dq, dk, dv = _split_heads(out[0], Hk, g), out[1], out[2]
    blocks = query_blocks(Tq, Tk, causal, window)
    start_sums = blocks[-1][2] == 0  # the last block sees every key: its results start the sums
    if not start_sums:
        dk, dv = _zero_key_grads(k, v, dk, dv)
    for i, (lo, hi, kbeg, kend) in _last_query_block_first(blocks):
        dcap = None
        if Es is None:
            E, dcap = _probs_from_lse(qs, k, lse, causal, segment_ids, lo, hi, kbeg, kend, window, softcap,
                                      alibi)
        else:
            E = Es[i]
        kb, vb = k[:, :, None, kbeg:kend], v[:, :, None, kbeg:kend]  # (B, Hk, 1, kend-kbeg, .)
        dorb = dor[..., lo:hi, :]
        dS = dorb @ vb.swapaxes(-1, -2)  # (B, Hk, g, hi-lo, kend-kbeg)
        dS -= dsum[..., lo:hi, None]
        dS *= E  # hidden places have E = 0, so dS = 0 there
        if dcap is not None:
            dS *= dcap  # through the soft cap: dS_raw = dS_capped (1 - tanh^2)
        xp.matmul(dS, kb, out=dq[..., lo:hi, :])
        dSt, Et, qsb = dS.swapaxes(-1, -2), E.swapaxes(-1, -2), qs[..., lo:hi, :]  # views
        if i == len(blocks) - 1 and start_sums:
            dk, dv = _start_key_grads(dSt, Et, qsb, dorb, dk, dv)
            continue
        dk[:, :, kbeg:kend] += _group_sum(dSt @ qsb)  # (B, Hk, kend-kbeg, D)
        dv[:, :, kbeg:kend] += _group_sum(Et @ dorb)
    dq *= qs.dtype.type(scale)
    return (dq.reshape(B, Hk * g, Tq, D) if out is None else out[0]), dk, dv


# ---------------------------------------------------------------------------------------------
# The flash kernel on the GPU
# ---------------------------------------------------------------------------------------------

def flash_kernels(q, k, v):
    """The flash kernel's glue module when it serves q, k, v (CuPy float32 or bfloat16, a head dim
    it is built for, v as wide as k, the hand-written kernels enabled), else None: float64 (the
    gradchecks), other head dims and the CPU take the query-block loop."""
    cp = backend._cupy
    if (cp is None or not cuda.enabled() or not isinstance(q, cp.ndarray)
            or q.dtype.name not in FLASH_DTYPES or q.shape[-1] not in FLASH_HEAD_DIMS
            or v.shape[-1] != q.shape[-1]):
        return None
    try:
        return importlib.import_module(FLASH_GLUE)
    except ModuleNotFoundError as e:  # a build without the kernel's glue: the loop serves
        if e.name != FLASH_GLUE:
            raise
        return None


def _kernel_takes_options(window, softcap):
    """Whether the flash kernel serves these mask and score options: it takes sliding windows and
    ALiBi slopes but has no soft-capping yet, so a softcap sends the op down the xp path (never
    silently dropped)."""
    return softcap is None


def _contiguous(*arrays):
    """The kernel reads raw pointers: C-contiguous copies of any strided views (no copy otherwise)."""
    return [array_module(a).ascontiguousarray(a) for a in arrays]


# ---------------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------------

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


def check_segment_ids(segment_ids, q, k):
    """segment_ids as an integer (B, T_k) array of q's array module (None stays None)."""
    if segment_ids is None:
        return None
    ids = array_module(q).asarray(segment_ids)
    B, Tq, Tk = q.shape[0], q.shape[2], k.shape[2]
    if ids.dtype.kind not in "iu":
        raise TypeError(f"scaled_dot_product_attention: segment_ids must be integers, got {ids.dtype}")
    if ids.shape != (B, Tk):
        raise ValueError(f"scaled_dot_product_attention: segment_ids must be (B, T_k) = ({B}, {Tk}) "
                         f"for q {tuple(q.shape)}, k {tuple(k.shape)}; got {tuple(ids.shape)}")
    if Tq > Tk:
        raise ValueError(f"scaled_dot_product_attention: with segment_ids the queries' ids are the "
                         f"last T_q of the keys', so T_q {Tq} must not exceed T_k {Tk}")
    return ids


def check_window_softcap(window, softcap, causal):
    """window as an int >= 1 (or None) and softcap as a float > 0 (or None), else a ValueError."""
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"scaled_dot_product_attention: window must be an integer >= 1 (the keys a "
                             f"query sees, itself included), got {window!r}")
        if not causal:
            raise ValueError("scaled_dot_product_attention: a sliding window counts back from each "
                             "query's position, so it needs causal=True")
        window = int(window)
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float, np.floating)) \
                or not np.isfinite(softcap) or softcap <= 0:
            raise ValueError(f"scaled_dot_product_attention: softcap must be a finite number > 0, "
                             f"got {softcap!r}")
        softcap = float(softcap)
    return window, softcap


def _attend(ctx, q, k, v, causal, scale, segment_ids, out=None, window=None, softcap=None, alibi=None):
    """Forward of both ops: o written into out (any strides) or a new (B, H, Tq, Dv) array; saves
    what backward needs and says in ctx.flash which path ran."""
    ctx.window, ctx.softcap, ctx.alibi = window, softcap, alibi
    flash = flash_kernels(q, k, v) if _kernel_takes_options(window, softcap) else None
    ctx.flash = flash is not None
    if ctx.flash:
        q, k, v = _contiguous(q, k, v)
        o, lse = flash.flash_attention_forward(q, k, v, causal, scale, segment_ids=segment_ids,
                                               window=window, alibi_slopes=alibi)
        ctx.save_for_backward(q, k, v, o, lse, segment_ids)
        return _into(out, o)
    ctx.low_precision = q.dtype if q.dtype.itemsize == 2 and is_low_precision(q.dtype) else None
    if ctx.low_precision is not None:  # no bfloat16 loop: float32 inside, the result rounded
        q, k, v = (a.astype(np.float32) for a in (q, k, v))
    o, qs, Es, inv_rowsum, lse = attention_forward_cpu(q, k, v, causal, scale, segment_ids,
                                                       out=None if ctx.low_precision else out,
                                                       window=window, softcap=softcap, alibi=alibi)
    # backward rebuilds P from the log-sum-exp per row: above the size limit, and always with a
    # softcap, whose derivative needs the capped scores that E alone does not give back exactly
    if softcap is not None or sum(E.nbytes for E in Es) > SAVE_PROBS_MAX_BYTES:
        Es, inv_rowsum = None, None
    ctx.save_for_backward(o, qs, k, v, Es, inv_rowsum, lse, segment_ids)
    return o if ctx.low_precision is None else _into(out, o.astype(ctx.low_precision))


def _into(out, a):
    """a, or a copied into out (a strided view of the caller's buffer) when one is given."""
    if out is None:
        return a
    out[...] = a
    return out


def _attend_backward(ctx, do, out=None):
    """(dq, dk, dv) of _attend, written into out's buffers when given."""
    if ctx.flash:
        q, k, v, o, lse, segment_ids = ctx.saved
        (do,) = _contiguous(do)
        grads = flash_kernels(q, k, v).flash_attention_backward(do, q, k, v, o, lse, ctx.causal,
                                                                ctx.scale, segment_ids=segment_ids,
                                                                window=ctx.window, alibi_slopes=ctx.alibi)
    elif ctx.low_precision is not None:
        o, qs, k, v, Es, inv_rowsum, lse, segment_ids = ctx.saved
        grads = attention_backward_cpu(do.astype(np.float32), o, qs, k, v, ctx.scale, ctx.causal,
                                       segment_ids, Es=Es, inv_rowsum=inv_rowsum, lse=lse,
                                       window=ctx.window, softcap=ctx.softcap, alibi=ctx.alibi)
        grads = [g.astype(ctx.low_precision) for g in grads]
    else:
        o, qs, k, v, Es, inv_rowsum, lse, segment_ids = ctx.saved
        return attention_backward_cpu(do, o, qs, k, v, ctx.scale, ctx.causal, segment_ids, Es=Es,
                                      inv_rowsum=inv_rowsum, lse=lse, out=out, window=ctx.window,
                                      softcap=ctx.softcap, alibi=ctx.alibi)
    if out is None:
        return tuple(grads)
    return tuple(_into(buffer, grad) for buffer, grad in zip(out, grads))


class ScaledDotProductAttention(Function):
    """O = softmax(C(Q K^T * scale) + M) V per head, M = 0 where a query sees a key, -inf elsewhere
    (causal: key j <= p = query i + T_k - T_q; a window W: also j > p - W; segment ids: the same
    document); C(S) = cap tanh(S / cap) with a softcap, else S; with alibi_slopes m (H,) the
    scores of head h also get the constant bias m_h (j - p). Key/value heads may be grouped.

    Backward (P the attention matrix):
        dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = dS K * scale,  dK = dS^T Q * scale,
        dV = P^T dO.  rowsum(dO * O) stands in for rowsum(P * dP): O = P V makes them equal.
    M is a constant, so it has no gradient and changes no formula: P = 0 where M = -inf, so dS = 0
    there and a hidden key gets nothing from that query. Segment ids are integers: no gradient.
    ALiBi's bias is a constant too: it changes P, and no formula (docs/backward.md#alibi).
    The soft cap is elementwise: dS is multiplied by C'(S) = 1 - tanh^2(S / cap) = 1 - (C / cap)^2.
    Saved on the CPU: q * scale, k, v, O, the log-sum-exp per row and, while it is at most
    SAVE_PROBS_MAX_BYTES, the unnormalised E = exp(S - shift) per query block with 1 / rowsum E:
    on a CPU recomputing it costs a GEMM and an exp pass per step. Above that E is recomputed
    from q, k and the log-sum-exp in backward (O(T) memory), as it always is with a softcap. The
    flash kernel saves q, k, v, O and the log-sum-exp and always recomputes; it serves windows and
    ALiBi but no softcap yet, so a softcap takes the query-block loop.
    Derivation: docs/backward.md#scaleddotproductattention
    """

    @staticmethod
    def forward(ctx, q, k, v, causal=True, scale=None, segment_ids=None, window=None, softcap=None,
                alibi_slopes=None):
        check_qkv(q, k, v, causal)
        segment_ids = check_segment_ids(segment_ids, q, k)
        window, softcap = check_window_softcap(window, softcap, causal)
        alibi = check_alibi_slopes(alibi_slopes, q)
        ctx.causal = causal
        ctx.scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else float(scale)
        if _decodes(ctx, q, k, causal, segment_ids, window):  # a generation step: nothing to save
            return attention_decode_cpu(q, k, v, ctx.scale, softcap, alibi)
        # BLAS keeps its threads: measured on a quiet 2-core machine, one thread was no faster at
        # T=64 (1.34 ms either way per layer, forward + backward) and slower at T=256 (42 vs 36 ms)
        return _attend(ctx, q, k, v, causal, ctx.scale, segment_ids, window=window, softcap=softcap,
                       alibi=alibi)

    @staticmethod
    def backward(ctx, do):
        return _attend_backward(ctx, do)


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

    The same map as splitting qkv into q, k, v heads, ScaledDotProductAttention (segment ids and
    all, ALiBi slopes too), and merging the heads back, and the same backward, per head (P the attention matrix):
        dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = dS K * scale,  dK = dS^T Q * scale,
        dV = P^T dO,  and dqkv holds dQ, dK, dV in the places qkv holds Q, K, V.
    Only the layout differs. The heads are read from qkv through strides and the output is written
    head by head into its (B, T, H, D) place, so neither direction copies a transposed tensor;
    backward writes dq, dk and dv into one gradient of qkv's shape, where the split would build
    three zero-filled gradients of that shape and add them up.  Derivation: docs/backward.md#qkvattention
    """

    @staticmethod
    def forward(ctx, qkv, n_head, n_kv_head, causal=True, scale=None, segment_ids=None, alibi_slopes=None):
        if qkv.ndim != 3:
            raise ValueError(f"qkv_attention: qkv must be (B, T, (n_head + 2 n_kv_head) head_size), "
                             f"got shape {tuple(qkv.shape)}")
        q, k, v = packed_heads(qkv, n_head, n_kv_head)
        check_qkv(q, k, v, causal)
        segment_ids = check_segment_ids(segment_ids, q, k)
        alibi = check_alibi_slopes(alibi_slopes, q)
        B, H, T, D = q.shape
        ctx.causal, ctx.heads = causal, (n_head, n_kv_head)
        ctx.scale = 1.0 / np.sqrt(D) if scale is None else float(scale)
        y = array_module(qkv).empty((B, T, H, D), dtype=qkv.dtype)
        _attend(ctx, q, k, v, causal, ctx.scale, segment_ids, out=y.transpose(0, 2, 1, 3), alibi=alibi)
        return y.reshape(B, T, H * D)

    @staticmethod
    def backward(ctx, dy):
        B, T, HD = dy.shape
        n_head, n_kv_head = ctx.heads
        dqkv = array_module(dy).empty((B, T, (n_head + 2 * n_kv_head) * (HD // n_head)), dtype=dy.dtype)
        do = dy.reshape(B, T, n_head, -1).transpose(0, 2, 1, 3)  # (B, H, T, D), a view
        _attend_backward(ctx, do, out=packed_heads(dqkv, n_head, n_kv_head))
        return dqkv
