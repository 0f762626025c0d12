"""The functional API: `import tinygrad_llm.functional as F`.

Each function here is a thin wrapper that calls one op's `Function.apply`; the op's module in
ops/ holds its forward and hand-derived backward side by side.
"""
from .autocast import compute_dtype as _compute_dtype
from .autocast import is_low_precision as _is_low_precision
from .ops.elementwise import Cast
from .ops.linear import Linear
from .ops.lora import LoRALinear


def _autocast(decider, *tensors):
    """tensors (None kept) cast to the dtype an open autocast region picks for decider's array
    (see autocast.py); as they are outside one. The cast is an op: its backward hands a float32
    tensor a float32 gradient."""
    dtype = _compute_dtype(decider.data)
    if dtype is None:
        return tensors
    return [t if t is None or t.dtype == dtype else Cast.apply(t, dtype=dtype) for t in tensors]


def _float32(x):
    """x cast to float32 when it is bfloat16: softmax, log-sum-exp, norms and the loss keep float32
    under autocast (their sums and exponentials need its range and digits)."""
    # itemsize first: a cheap test that settles float32 and float64 (dtype.name costs microseconds)
    return Cast.apply(x, dtype="float32") if x.dtype.itemsize == 2 and _is_low_precision(x.dtype) else x


def linear(x, weight, bias=None):
    """y = x @ weight^T + bias, weight stored (out_features, in_features) as in PyTorch. Under
    autocast (GPU) all three are cast to bfloat16 first: the output is bfloat16."""
    x, weight, bias = _autocast(weight, x, weight, bias)
    return Linear.apply(x, weight) if bias is None else Linear.apply(x, weight, bias)


def lora_linear(x, weight, lora_A, lora_B, scale, bias=None):
    """y = x @ weight^T + bias + scale * (x @ lora_A^T) @ lora_B^T, as one op (ops/lora.py):
    lora_A (rank, in), lora_B (out, rank)."""
    tensors = (x, weight, lora_A, lora_B) if bias is None else (x, weight, lora_A, lora_B, bias)
    return LoRALinear.apply(*tensors, scale=float(scale))


# --- fused neural-network ops (ops/softmax.py, cross_entropy.py, norm.py, activation.py, ...) ---
from .backend import array_module as _array_module  # noqa: E402
from .ops.activation import GELU, GeGLU, SiLU, SoftCap, SwiGLU  # noqa: E402
from .ops.attention import QKVAttention, ScaledDotProductAttention  # noqa: E402
from .ops.cross_entropy import CrossEntropy  # noqa: E402
from .ops.dropout import Dropout  # noqa: E402
from .ops.embedding import Embedding  # noqa: E402
from .ops.norm import LayerNorm, RMSNorm  # noqa: E402
from .ops.rope import RoPE  # noqa: E402
from .ops.softmax import LogSoftmax, Softmax  # noqa: E402


def _raw(a):
    """The array inside a Tensor (integer ids and targets enter ops as arrays, not inputs)."""
    data = getattr(a, "data", a)
    return data if hasattr(data, "dtype") else _array_module(data).asarray(data)


def softmax(x, axis=-1):
    """exp(x - max x) / sum exp(x - max x) along axis (stable for any finite x)."""
    return Softmax.apply(_float32(x), axis=axis)


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along axis."""
    return LogSoftmax.apply(_float32(x), axis=axis)


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy of logits (..., V) against integer targets (...), fused in one op.

    reduction: "mean" over the targets that are not ignore_index, "sum", or "none" (per target).
    """
    return CrossEntropy.apply(_float32(logits), targets=_raw(targets), ignore_index=ignore_index,
                              reduction=reduction, label_smoothing=label_smoothing)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis; weight, bias optional."""
    params = [p for p in (weight, bias) if p is not None]
    return LayerNorm.apply(_float32(x), *params, has_weight=weight is not None, has_bias=bias is not None,
                           eps=eps)


def rms_norm(x, weight=None, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis; weight optional."""
    x = _float32(x)
    return RMSNorm.apply(x, eps=eps) if weight is None else RMSNorm.apply(x, weight, eps=eps)


def gelu(x, approximate="tanh"):
    """x * Phi(x); approximate="tanh" (GPT-2's form) or "none" (exact, through erf)."""
    return GELU.apply(x, approximate=approximate)


def silu(x):
    """x * sigmoid(x)."""
    return SiLU.apply(x)


def swiglu(x_gate, x_up):
    """silu(x_gate) * x_up, the gated product of a SwiGLU MLP, as one op."""
    return SwiGLU.apply(x_gate, x_up)


def geglu(x_gate, x_up, approximate="tanh"):
    """gelu(x_gate) * x_up, the gated product of a GeGLU MLP (Gemma), as one op."""
    return GeGLU.apply(x_gate, x_up, approximate=approximate)


def soft_cap(x, cap):
    """cap * tanh(x / cap): bounds x to (-cap, cap), ~x where |x| << cap (Gemma's logit cap)."""
    return SoftCap.apply(x, cap=cap)


def embedding(ids, weight, padding_idx=None):
    """weight[ids]: rows of weight (V, C) picked by integer ids of any shape. padding_idx: a row
    that gets no gradient from the lookup (PyTorch's nn.Embedding(padding_idx=...))."""
    if padding_idx is None:
        return Embedding.apply(weight, ids=_raw(ids))
    return Embedding.apply(weight, ids=_raw(ids), padding_idx=int(padding_idx))


def dropout(x, p=0.5, training=True):
    """Inverted dropout: zero with probability p, scale the rest by 1 / (1 - p); identity when
    not training or p == 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return Dropout.apply(x, p=p)


def scaled_dot_product_attention(q, k, v, causal=True, scale=None, segment_ids=None, window=None,
                                 softcap=None, alibi_slopes=None):
    """softmax(q k^T * scale (+ mask)) v for q (B, H, T_q, D), k and v (B, H_kv, T_k, D).

    H must be a multiple of H_kv (grouped-query attention); scale defaults to 1 / sqrt(D).
    Causal: query i, at position p = i + (T_k - T_q), sees keys j <= p. window W (causal only):
    also j > p - W, the W keys up to its own (a sliding window). segment_ids: integers (B, T_k),
    one id per document packed into the sequence; a query sees only keys with its own id (the
    queries' ids are the last T_q of the keys', as with a KV cache). softcap: the scaled scores
    S become softcap * tanh(S / softcap) before the mask (Gemma 2). alibi_slopes (H,): head h's
    scores get slopes[h] * (j - p) added (ALiBi; ops/alibi.py has the paper's slopes).
    """
    if segment_ids is not None:
        segment_ids = _raw(segment_ids)
    q, k, v = _autocast(q, q, k, v)
    return ScaledDotProductAttention.apply(q, k, v, causal=causal, scale=scale, segment_ids=segment_ids,
                                           window=window, softcap=softcap, alibi_slopes=alibi_slopes)


def qkv_attention(qkv, n_head, n_kv_head=None, causal=True, scale=None, segment_ids=None, alibi_slopes=None):
    """Attention of the heads packed in qkv (B, T, (n_head + 2 n_kv_head) D): q heads first, then
    k, then v, as a c_attn projection lays them out; returns (B, T, n_head D), heads side by side.

    Equal to splitting the heads out, scaled_dot_product_attention, and merging them back, without
    the copies those transposes and the split's gradient cost. segment_ids (B, T), alibi_slopes (H,):
    as there.
    """
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    if segment_ids is not None:
        segment_ids = _raw(segment_ids)
    (qkv,) = _autocast(qkv, qkv)
    return QKVAttention.apply(qkv, n_head=n_head, n_kv_head=n_kv_head, causal=causal, scale=scale,
                              segment_ids=segment_ids, alibi_slopes=alibi_slopes)


def rope(x, cos, sin):
    """x (B, H, T, hs) with each position's pairs rotated by the tables cos, sin (T, hs/2) of
    ops.rope.rope_tables (arrays or Tensors; they take no gradient)."""
    return RoPE.apply(x, _as_constant(cos), _as_constant(sin))


def _as_constant(a):
    return a if isinstance(a, _Tensor) else _Tensor(a)


from .tensor import Tensor as _Tensor  # noqa: E402  (tensor.py does not import this module)


# --- mixture of experts (ops/moe.py) -----------------------------------------------------------
from .ops.moe import Combine, Dispatch, ExpertLinear, LoadBalanceLoss, RouterZLoss, TopKGate  # noqa: E402


def topk_gate(logits, idx, score="softmax", normalize=True, scale=1.0):
    """The gate weights (N, k) of the chosen experts idx (N, k, integers) from router logits
    (N, E): softmax or sigmoid scores, renormalised over the k when normalize, times scale."""
    return TopKGate.apply(_float32(logits), idx=_raw(idx), score=score, normalize=normalize, scale=scale)


def dispatch(x, plan):
    """x (N, C)'s rows copied once per chosen expert, sorted by expert: (N k, C) (ops.moe.DispatchPlan)."""
    return Dispatch.apply(x, plan=plan)


def expert_linear(xs, weight, offsets):
    """Rows offsets[e]:offsets[e+1] of xs (rows, in) times weight[e]^T, for stacked weights (E, out, in)."""
    return ExpertLinear.apply(xs, weight, offsets=offsets)


def combine(ys, w, plan):
    """y[t] = sum_j w[t, j] ys[row of (t, j)]: the experts' outputs (N k, C) weighted back into (N, C)."""
    return Combine.apply(ys, w, plan=plan)


def load_balance_loss(logits, counts, score="softmax"):
    """Switch's auxiliary loss E sum_e f_e P_e from router logits (N, E) and tokens per expert."""
    return LoadBalanceLoss.apply(_float32(logits), counts=counts, score=score)


def router_z_loss(logits):
    """mean over tokens of logsumexp(logits)^2 (ST-MoE)."""
    return RouterZLoss.apply(_float32(logits))
