"""GPT: a decoder-only transformer in the GPT-2 layout, with the usual modern options.

    config  -> GPTConfig: sizes, and pos="learned"|"rope"|"alibi"|"none" (or one per layer:
               "rope,rope,rope,none"; see positions.py), norm="layernorm"|"rmsnorm",
               mlp="gelu"|"swiglu", n_kv_head < n_head for grouped-query attention,
               attn="mla" for multi-head latent attention, moe_experts > 0 for mixture-of-experts
               feed-forward layers (after moe_first_dense dense ones)
    model   -> embeddings, n_layer pre-norm Blocks (attention then MLP, each added to the
               residual stream), a final norm, and the language-model head (tied to wte)
    generate-> sampling with a KV cache: the prompt runs once, each new token costs O(T)

Parameter names are GPT-2's (transformer.wte.weight, transformer.h.0.attn.c_attn.weight, ...),
so a Hugging Face checkpoint loads as a straight copy (see hf.py, GPT.from_safetensors).
"""
import math
from dataclasses import dataclass

import numpy as np

from .. import backend
from .. import functional as F
from .. import nn
from ..autograd import no_grad
from ..config import DictConfig
from ..cuda import syncs
from ..nn.moe import check_moe_sizes
from ..ops.alibi import alibi_slopes
from ..ops.rope import check_rope_scaling, rope_tables, rope_type
from ..tensor import Tensor
from .positions import check_context, check_positions, layer_positions, parse_rope_scaling


# the GPTConfig field behind each of nn.MoE's sizes, for errors that name the config's own field
_MOE_FIELDS = {"n_experts": "moe_experts", "top_k": "moe_top_k", "n_group": "moe_n_group",
               "topk_group": "moe_topk_group", "router": "moe_router"}


@dataclass
class GPTConfig(DictConfig):
    vocab_size: int = 50304   # GPT-2's 50257 padded up to a multiple of 64, as nanoGPT does
    block_size: int = 1024    # the longest sequence the model sees
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int = None     # None: = n_head (multi-head); fewer shares each k/v head (GQA)
    dropout: float = 0.0
    bias: bool = True         # biases in Linear layers and LayerNorm, as GPT-2
    pos: str = "learned"      # "learned" (GPT-2's wpe table), "rope", "alibi", "none" (NoPE), or per
                              # layer: "rope,rope,rope,none" / a list (see positions.py)
    norm: str = "layernorm"   # or "rmsnorm"
    mlp: str = "gelu"         # or "swiglu"
    tie_weights: bool = True  # lm_head shares wte's matrix
    mlp_hidden: int = None    # None: 4 * n_embd for gelu, 8/3 * n_embd (rounded up to 8) for swiglu
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict = None  # RoPE scaling at inference, Hugging Face's spelling (GPT.extend_context)
    trained_block_size: int = None  # the training length once extend_context raised block_size
    # multi-head latent attention (DeepSeek-V2/V3; nn.MLA): attn="mla" needs pos="rope"
    attn: str = "mha"             # "mha" (n_kv_head < n_head: GQA) or "mla"
    mla_kv_rank: int = None       # kv_lora_rank, the cached latent; None: 4 * head_size
    mla_q_rank: int = None        # q_lora_rank; None: the queries come from one projection
    mla_rope_dim: int = None      # qk_rope_head_dim, the shared rotary key; None: head_size // 2
    mla_nope_dim: int = None      # qk_nope_head_dim; None: head_size
    mla_v_dim: int = None         # v_head_dim; None: head_size
    # mixture of experts (nn.MoE): moe_experts > 0 makes every layer from moe_first_dense on an MoE
    moe_experts: int = 0          # routed experts per MoE layer; 0: every layer is a dense MLP
    moe_top_k: int = 2            # experts per token
    moe_shared: int = 0           # shared experts every token passes through
    moe_hidden: int = None        # each expert's hidden size; None: mlp_hidden // (moe_top_k + moe_shared),
                                  # so a token's active expert parameters match the dense MLP's
    moe_first_dense: int = 0      # the first layers keep a dense MLP (DeepSeek's first_k_dense_replace)
    moe_router: str = "softmax"   # "softmax" (Mixtral, Qwen3-MoE) or "sigmoid" (DeepSeek-V3)
    moe_norm_topk_prob: bool = True   # renormalise the k gate weights to sum 1
    moe_n_group: int = 1          # DeepSeek-V3's group-limited choice: experts in n_group groups ...
    moe_topk_group: int = 1       # ... of which a token may use the topk_group best
    moe_routed_scaling: float = 1.0   # routed_scaling_factor on the routed experts' weights
    moe_aux_loss_coef: float = 0.01   # Switch's load-balancing loss (0: off), averaged over MoE layers
    moe_z_loss_coef: float = 0.0      # the router z-loss (0: off)
    moe_bias_update_rate: float = 0.0  # DeepSeek's loss-free balancing (router="sigmoid"):
                                       # nn.update_router_biases(model) after each step

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_kv_head"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig: n_head={self.n_head} is not divisible by n_kv_head="
                             f"{self.n_kv_head} (each k/v head serves a whole group of query heads)")
        choices = {"norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig: {name}={getattr(self, name)!r}; expected one of {allowed}")
        if isinstance(self.pos, tuple):
            self.pos = list(self.pos)  # JSON's spelling, so to_dict / from_dict round-trip
        schemes = set(check_positions(self.pos, self.n_layer))  # raises on an unknown or mis-sized choice
        if "rope" in schemes and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig: pos='rope' needs an even head size; n_embd={self.n_embd} / "
                             f"n_head={self.n_head} = {self.n_embd // self.n_head}")
        if self.rope_scaling is not None:
            if "rope" not in schemes:
                raise ValueError(f"GPTConfig: rope_scaling={self.rope_scaling!r} scales RoPE, but "
                                 f"pos={self.pos!r} has no RoPE layer")
            check_rope_scaling(self.rope_scaling, "GPTConfig.rope_scaling")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")
        if self.mlp_hidden is None:
            self.mlp_hidden = 4 * self.n_embd if self.mlp == "gelu" else -(-8 * self.n_embd // 3 // 8) * 8
        self._check_mla()
        self._check_moe()

    def _check_mla(self):
        if self.attn not in ("mha", "mla"):
            raise ValueError(f"GPTConfig: attn={self.attn!r}; expected one of ('mha', 'mla')")
        if self.attn != "mla":
            return
        if set(check_positions(self.pos, self.n_layer)) != {"rope"}:
            raise ValueError(f"GPTConfig: attn='mla' carries its own rotary key and needs pos='rope', "
                             f"got pos={self.pos!r}")
        if self.n_kv_head != self.n_head:
            raise ValueError(f"GPTConfig: attn='mla' has no k/v heads to share (its keys come from one "
                             f"latent); n_kv_head={self.n_kv_head} must equal n_head={self.n_head}")
        hs = self.head_size
        defaults = {"mla_kv_rank": 4 * hs, "mla_rope_dim": max(2, hs // 2 // 2 * 2), "mla_nope_dim": hs,
                    "mla_v_dim": hs}
        for name, default in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        for name in ("mla_kv_rank", "mla_rope_dim", "mla_nope_dim", "mla_v_dim", "mla_q_rank"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
                raise ValueError(f"GPTConfig: {name} must be a positive integer, got {v!r}")
        if self.mla_rope_dim % 2:
            raise ValueError(f"GPTConfig: mla_rope_dim={self.mla_rope_dim} must be even (RoPE rotates pairs)")

    def _check_moe(self):
        if not isinstance(self.moe_experts, (int, np.integer)) or isinstance(self.moe_experts, bool) \
                or self.moe_experts < 0:
            raise ValueError(f"GPTConfig: moe_experts must be an integer >= 0, got {self.moe_experts!r}")
        if not self.moe_experts:
            return
        check_moe_sizes(self.moe_experts, self.moe_top_k, self.moe_n_group, self.moe_topk_group,
                        self.moe_router, label="GPTConfig", names=_MOE_FIELDS)
        if not isinstance(self.moe_first_dense, (int, np.integer)) or not 0 <= self.moe_first_dense <= self.n_layer:
            raise ValueError(f"GPTConfig: moe_first_dense={self.moe_first_dense!r} must be an integer in "
                             f"[0, n_layer={self.n_layer}]")
        if not isinstance(self.moe_shared, (int, np.integer)) or self.moe_shared < 0:
            raise ValueError(f"GPTConfig: moe_shared must be an integer >= 0, got {self.moe_shared!r}")
        for name in ("moe_routed_scaling", "moe_aux_loss_coef", "moe_z_loss_coef", "moe_bias_update_rate"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
                raise ValueError(f"GPTConfig: {name} must be a finite number >= 0, got {v!r}")
        if self.moe_bias_update_rate > 0 and self.moe_router != "sigmoid":
            raise ValueError(f"GPTConfig: moe_bias_update_rate={self.moe_bias_update_rate} moves "
                             "DeepSeek's choice bias, which only moe_router='sigmoid' has")
        if self.moe_hidden is None:
            self.moe_hidden = max(1, self.mlp_hidden // (self.moe_top_k + self.moe_shared))
        if not isinstance(self.moe_hidden, (int, np.integer)) or self.moe_hidden < 1:
            raise ValueError(f"GPTConfig: moe_hidden must be a positive integer, got {self.moe_hidden!r}")

    def is_moe_layer(self, i):
        """Whether block i has an MoE feed-forward layer (else a dense MLP)."""
        return self.moe_experts > 0 and i >= self.moe_first_dense

    @property
    def layer_pos(self):
        """The position scheme of each layer, a tuple of n_layer names ("learned" for all when the
        model adds a learned table at the input)."""
        return layer_positions(self.pos, self.n_layer)

    @property
    def rope_dim(self):
        """The size the rotary tables are built for: MLA's rope part, else the head size."""
        return self.mla_rope_dim if self.attn == "mla" else self.head_size

    @property
    def head_size(self):
        return self.n_embd // self.n_head

    def num_parameters(self, active=False):
        """Parameter count from the shapes alone (tied weights once), without building the model.
        active=True: the parameters one token uses (its k routed experts, not all E)."""
        C, V, L = self.n_embd, self.vocab_size, self.n_layer
        b = 1 if self.bias else 0
        norm = C * (1 + b) if self.norm == "layernorm" else C
        emb = V * C + (self.block_size * C if self.pos == "learned" else 0)
        head = 0 if self.tie_weights else V * C
        layers = sum(2 * norm + self._attn_parameters() + self._ffn_parameters(i, active) for i in range(L))
        return emb + layers + norm + head

    def _attn_parameters(self):
        C, H, b = self.n_embd, self.n_head, 1 if self.bias else 0
        if self.attn == "mla":
            qd = self.mla_nope_dim + self.mla_rope_dim
            r, q = self.mla_kv_rank, self.mla_q_rank
            q_params = C * H * qd if q is None else C * q + b * q + q + q * H * qd
            kv = C * (r + self.mla_rope_dim) + b * (r + self.mla_rope_dim) + r + r * H * (self.mla_nope_dim + self.mla_v_dim)
            return q_params + kv + H * self.mla_v_dim * C + b * C
        qkv = (self.n_head + 2 * self.n_kv_head) * self.head_size
        return qkv * C + b * qkv + C * C + b * C

    def _ffn_parameters(self, i, active=False):
        C, b = self.n_embd, 1 if self.bias else 0
        gates = 3 if self.mlp == "swiglu" else 2  # weight matrices per MLP: (gate,) up, down
        if not self.is_moe_layer(i):
            up = self.mlp_hidden * (gates - 1)
            return up * C + b * up + C * self.mlp_hidden + b * C
        experts = self.moe_top_k if active else self.moe_experts
        shared = self.moe_shared * self.moe_hidden
        return C * self.moe_experts + (experts * self.moe_hidden + shared) * C * gates


def _norm(config, dtype):
    if config.norm == "layernorm":
        return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias, dtype=dtype)
    return nn.RMSNorm(config.n_embd, eps=config.norm_eps, dtype=dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; n_kv_head < n_head shares k/v heads across query groups."""

    def __init__(self, config, dtype=None, pos="learned"):
        super().__init__()
        self.n_head, self.n_kv_head, self.hs = config.n_head, config.n_kv_head, config.head_size
        # this layer's position scheme: "rope" rotates q and k, "alibi" biases the scores by the
        # distance (constant slopes, not parameters), "learned" / "none" adds nothing here
        self.pos = pos
        self.slopes = alibi_slopes(config.n_head) if pos == "alibi" else None
        qkv = (config.n_head + 2 * config.n_kv_head) * self.hs
        self.c_attn = nn.Linear(config.n_embd, qkv, bias=config.bias, dtype=dtype)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias, dtype=dtype)
        self.dropout = config.dropout

    def forward(self, x, rope=None, cache=None, segment_ids=None):
        B, T, C = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.hs
        # segment_ids (B, T): a token attends only to earlier tokens of its own segment (document)
        docs = {} if segment_ids is None else {"segment_ids": segment_ids}
        if self.slopes is not None:
            docs["alibi_slopes"] = self.slopes
        if self.pos != "rope":
            rope = None
        qkv = self.c_attn(x)  # (B, T, (nh + 2 nkv) hs)
        if rope is None and cache is None:  # training without RoPE: heads split by strides
            y = F.qkv_attention(qkv, nh, nkv, **docs)  # (B, T, C)
            y = self.c_proj(y)
            return F.dropout(y, self.dropout, self.training)
        qkv = qkv.reshape(B, T, nh + 2 * nkv, hs).transpose(0, 2, 1, 3)  # (B, nh + 2 nkv, T, hs)
        q, k, v = qkv[:, :nh], qkv[:, nh:nh + nkv], qkv[:, nh + nkv:]  # (B, nh|nkv, T, hs)
        if rope is not None:
            q, k = F.rope(q, *rope), F.rope(k, *rope)
        causal = True
        if cache is not None:  # generation: keep k, v of every position seen so far
            k, v = cache.append(k, v)
            causal = T > 1  # one new query may look at every cached position
        y = F.scaled_dot_product_attention(q, k, v, causal=causal, **docs)  # (B, nh, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C): heads side by side again
        y = self.c_proj(y)
        # dropout on the residual branch only (the fused attention keeps no probability matrix)
        return F.dropout(y, self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, config, dtype=None):
        super().__init__()
        self.kind = config.mlp
        up = config.mlp_hidden * (2 if config.mlp == "swiglu" else 1)  # swiglu: gate and value
        self.c_fc = nn.Linear(config.n_embd, up, bias=config.bias, dtype=dtype)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias, dtype=dtype)
        self.dropout = config.dropout

    def forward(self, x):
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")
        else:
            H = h.shape[-1] // 2
            h = F.swiglu(h[..., :H], h[..., H:])  # silu(gate) * value
        y = self.c_proj(h)
        return F.dropout(y, self.dropout, self.training)


def _mla(config, dtype):
    return nn.MLA(config.n_embd, config.n_head, config.mla_kv_rank, config.mla_rope_dim, config.mla_nope_dim,
                  config.mla_v_dim, q_lora_rank=config.mla_q_rank, bias=config.bias, norm_eps=config.norm_eps,
                  dropout=config.dropout, dtype=dtype)


def _moe(config, dtype):
    return nn.MoE(config.n_embd, config.moe_experts, config.moe_top_k, config.moe_hidden,
                  n_shared=config.moe_shared, act=config.mlp, router=config.moe_router,
                  norm_topk_prob=config.moe_norm_topk_prob, n_group=config.moe_n_group,
                  topk_group=config.moe_topk_group, routed_scaling_factor=config.moe_routed_scaling,
                  aux_loss_coef=config.moe_aux_loss_coef, z_loss_coef=config.moe_z_loss_coef,
                  bias_update_rate=config.moe_bias_update_rate, dtype=dtype)


class Block(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(x)): the pre-norm residual block of GPT-2. attn is
    multi-head (or grouped-query) attention or MLA, mlp a dense MLP or an MoE layer."""

    def __init__(self, config, dtype=None, layer=0):
        super().__init__()
        self.ln_1 = _norm(config, dtype)
        pos = config.layer_pos[layer]
        self.attn = _mla(config, dtype) if config.attn == "mla" else CausalSelfAttention(config, dtype, pos)
        self.ln_2 = _norm(config, dtype)
        self.is_moe = config.is_moe_layer(layer)
        self.mlp = _moe(config, dtype) if self.is_moe else MLP(config, dtype)
        self.dropout = config.dropout

    def forward(self, x, rope=None, cache=None, segment_ids=None, losses=None):
        """losses: a list the MoE layer appends its balancing loss to (training only)."""
        x = x + self.attn(self.ln_1(x), rope, cache, segment_ids)
        if not self.is_moe:
            return x + self.mlp(self.ln_2(x))
        return x + F.dropout(self.mlp(self.ln_2(x), losses), self.dropout, self.training)


class Transformer(nn.Module):
    def __init__(self, config, dtype=None):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd, dtype=dtype)
        if config.pos == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd, dtype=dtype)
        self.h = nn.ModuleList([Block(config, dtype, layer=i) for i in range(config.n_layer)])
        self.ln_f = _norm(config, dtype)


class KVCache:
    """Per layer, preallocated k and v of shape (B, n_kv_head, block_size, hs), filled as tokens
    come; for MLA the latent (B, block_size, mla_kv_rank) and the rope key (B, block_size,
    mla_rope_dim) instead, nothing per head."""

    def __init__(self, config, B, dtype, xp):
        L, T = config.n_layer, config.block_size
        if config.attn == "mla":
            self.k = [xp.zeros((B, T, config.mla_kv_rank), dtype) for _ in range(L)]  # the latent c
            self.v = [xp.zeros((B, T, config.mla_rope_dim), dtype) for _ in range(L)]  # the rope key
        else:
            shape = (B, config.n_kv_head, T, config.head_size)
            self.k = [xp.zeros(shape, dtype) for _ in range(L)]
            self.v = [xp.zeros(shape, dtype) for _ in range(L)]
        self.length, self.layer = 0, 0

    def bytes_per_token(self):
        """Cache bytes per token of one sequence, all layers together."""
        B, T = self.k[0].shape[0], self.k[0].shape[-2] if self.k[0].ndim == 4 else self.k[0].shape[1]
        return sum(a.nbytes for a in self.k + self.v) // (B * T)

    def append_latent(self, c, k_rope):
        """MLA: write c (B, T, r) and k_rope (B, T, rope) after what is cached; return all of both."""
        i, T = self.layer, c.shape[1]
        end = self.length + T
        self.k[i][:, self.length:end] = c.data
        self.v[i][:, self.length:end] = k_rope.data
        self.layer += 1
        return Tensor(self.k[i][:, :end]), Tensor(self.v[i][:, :end])

    def append(self, k, v):
        """Write k, v (B, nkv, T, hs) after what is cached; return all cached k, v as Tensors."""
        i, T = self.layer, k.shape[2]
        end = self.length + T
        self.k[i][:, :, self.length:end] = k.data
        self.v[i][:, :, self.length:end] = v.data
        self.layer += 1
        return Tensor(self.k[i][:, :, :end]), Tensor(self.v[i][:, :, :end])

    def advance(self, T):
        self.length += T
        self.layer = 0


# the projections that write into the residual stream: GPT-2 scales their initialisation down
_RESIDUAL_PROJECTIONS = ("c_proj.weight", "attn.o_proj.weight", ".experts.down_proj",
                         "shared_experts.down_proj.weight")


class GPT(nn.Module):
    """The model: idx (B, T) token ids -> logits (B, T, vocab_size), and the loss given targets."""
    config_class = GPTConfig  # what a loader (hf.py) builds from a checkpoint's config

    def __init__(self, config, dtype=None, init=True):
        super().__init__()
        if isinstance(config, dict):
            config = GPTConfig.from_dict(config)
        self.config = config
        with nn.init.skipped(not init):  # a loader overwrites every weight: leave them unwritten
            self.transformer = Transformer(config, dtype)
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False, dtype=dtype)
        if config.tie_weights:
            # the input embedding and the output projection share one matrix (Press & Wolf 2017):
            # fewer parameters, and rare tokens' rows learn from both ends
            self.lm_head.weight = self.transformer.wte.weight
        self._rope_cache = None
        if init:  # a loader that overwrites every weight skips the (float64, model-sized) draws
            self.reset_parameters()

    def reset_parameters(self):
        """GPT-2's initialisation: N(0, 0.02) for weights, zero biases, unit norm gains, and the
        projections into the residual stream scaled by 1/sqrt(2 n_layer), so the variance of the
        stream stays O(1) however many blocks add to it."""
        rng = backend.rng("cpu")
        std = 0.02
        for name, p in self.named_parameters():
            shape, dtype = p.shape, p.dtype
            if name.endswith(_RESIDUAL_PROJECTIONS):
                value = rng.standard_normal(shape) * (std / math.sqrt(2 * self.config.n_layer))
            elif (name.endswith(".weight") and len(shape) == 2) or name.endswith(".experts.gate_up_proj") \
                    or name.endswith(".experts.up_proj"):
                value = rng.standard_normal(shape) * std
            elif ("ln_" in name or "layernorm" in name) and name.endswith(".weight"):
                value = np.ones(shape)
            else:
                value = np.zeros(shape)
            p.data[...] = backend.xp_of(p.device).asarray(value.astype(dtype))

    # ---------------------------------------------------------------------------------- forward
    def _rope(self, start, T, x):
        cfg = self.config
        if "rope" not in cfg.layer_pos:
            return None
        scaling = cfg.rope_scaling
        original = cfg.trained_block_size or cfg.block_size
        # dynamic NTK: the frequencies of a sequence of this length (none past the trained one)
        length = max(start + T, original) if rope_type(scaling) == "dynamic" else cfg.block_size
        if self._rope_cache is None or self._rope_cache[0].dtype != x.dtype or \
                backend.device_of(self._rope_cache[0]) != x.device or len(self._rope_cache[0]) != length:
            xp = backend.array_module(x.data)
            self._rope_cache = rope_tables(length, cfg.rope_dim, cfg.rope_theta, dtype=x.dtype, xp=xp,
                                           scaling=scaling, max_position_embeddings=original)
        cos, sin = self._rope_cache
        return cos[start:start + T], sin[start:start + T]

    def extend_context(self, block_size, rope_scaling=None):
        """Run at a longer context than trained: block_size the new longest sequence, rope_scaling
        None (RoPE, ALiBi and NoPE extrapolate as they are), a dict in Hugging Face's spelling or a
        spec such as "linear:4", "ntk:4" / "dynamic", "yarn:4" (positions.parse_rope_scaling).
        A learned table cannot grow: a block_size past it is an error. Returns self."""
        cfg = self.config
        check_context(cfg, block_size, rope_scaling)
        trained = cfg.trained_block_size or cfg.block_size
        cfg.rope_scaling = parse_rope_scaling(rope_scaling, trained, block_size)
        if cfg.rope_scaling is not None:
            check_rope_scaling(cfg.rope_scaling, "extend_context: rope scaling")
        cfg.trained_block_size, cfg.block_size = trained, int(block_size)
        self._rope_cache = None
        return self

    def _check_idx(self, idx):
        data = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if data.ndim == 1:
            data = data[None]
        if data.ndim != 2 or data.dtype.kind not in "iu":
            raise ValueError(f"GPT: idx must be (B, T) integer token ids, got {data.dtype} {data.shape}")
        return data

    def _check_segments(self, segment_ids, B, T, cache):
        seg = segment_ids.data if isinstance(segment_ids, Tensor) else segment_ids
        if cache is not None:
            raise ValueError("GPT: segment_ids are for training on packed documents, not for "
                             "generation with a KV cache")
        if tuple(seg.shape) != (B, T) or seg.dtype.kind not in "iu":
            raise ValueError(f"GPT: segment_ids must be (B, T) = {(B, T)} integers, got {seg.dtype} "
                             f"{tuple(seg.shape)}")
        return seg

    def forward(self, idx, targets=None, cache=None, segment_ids=None):
        """(logits (B, T, vocab_size), mean cross-entropy or None). With a KVCache, idx are the
        next tokens after the cached ones. segment_ids (B, T) integers keep attention within a
        segment: documents packed into one row do not see each other (data.document_segments)."""
        cfg = self.config
        balancing = []  # the MoE layers' balancing losses (training only)
        x = self.hidden_states(idx, cache, segment_ids, losses=balancing)  # (B, T, C)
        B, T = x.shape[:2]
        logits = F.linear(x, self.lm_head.weight)  # (B, T, V)
        if targets is None:
            return logits, None
        tgt = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if tgt.shape != (B, T):
            raise ValueError(f"GPT: targets of shape {tgt.shape} do not match idx of shape {(B, T)}")
        loss = F.cross_entropy(logits.reshape(B * T, cfg.vocab_size), Tensor(tgt.reshape(B * T)))
        if balancing:  # averaged over the MoE layers, as transformers pools them
            total = balancing[0]
            for term in balancing[1:]:
                total = total + term
            loss = loss + total * (1.0 / len(balancing))
        return logits, loss

    def hidden_states(self, idx, cache=None, segment_ids=None, losses=None):
        """The final-norm output (B, T, n_embd) that the language-model head (or a classifier's
        head, see classifier.py) reads; segment_ids as in forward. losses: a list that collects
        the MoE layers' balancing losses while training."""
        cfg = self.config
        data = self._check_idx(idx)
        B, T = data.shape
        start = cache.length if cache is not None else 0
        if start + T > cfg.block_size:
            raise ValueError(f"GPT: a sequence of length {start + T} is longer than block_size "
                             f"{cfg.block_size}; crop it to the last {cfg.block_size} tokens")
        # on the GPU a device flag, read with the logged loss (a host read here would stall every step)
        syncs.check((data < 0).any() | (data >= cfg.vocab_size).any(),
                    lambda: f"GPT: token id {syncs.out_of_range(data, cfg.vocab_size)} is outside the "
                            f"vocabulary [0, {cfg.vocab_size})")
        x = self.transformer.wte(Tensor(data))  # (B, T, C)
        if cfg.pos == "learned":
            x = x + self.transformer.wpe.weight[start:start + T]  # (T, C) broadcast over B
        x = F.dropout(x, cfg.dropout, self.training)
        rope = self._rope(start, T, x)
        if segment_ids is not None:
            segment_ids = self._check_segments(segment_ids, B, T, cache)
        for block in self.transformer.h:
            x = block(x, rope, cache, segment_ids, losses) if block.is_moe else block(x, rope, cache, segment_ids)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    # ------------------------------------------------------------------------------- generation
    @no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_id=None,
                 seed=None, use_cache=True):
        """Extend idx (B, T) by up to max_new_tokens sampled tokens; returns (B, T + n) int64.

        temperature 0 is greedy. top_k keeps the k likeliest tokens, top_p the smallest set whose
        probability reaches p. Generation stops early once every row has produced eos_id. Past
        block_size the context is cropped to the last block_size tokens (as nanoGPT does); with
        the cache that means running the cropped window again, so both paths agree exactly.
        """
        with self.evaluating():
            return self._generate(idx, max_new_tokens, temperature, top_k, top_p, eos_id, seed, use_cache)

    def _generate(self, idx, max_new_tokens, temperature, top_k, top_p, eos_id, seed, use_cache):
        cfg = self.config
        idx = self._check_idx(idx)
        idx = np.asarray(backend.to_numpy(idx), dtype=np.int64)
        if idx.shape[1] == 0:
            raise ValueError("generate: the prompt needs at least one token")
        if not (isinstance(max_new_tokens, (int, np.integer)) and max_new_tokens >= 0):
            raise ValueError(f"generate: max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if not temperature >= 0 or not np.isfinite(temperature):  # a nan fails every comparison
            raise ValueError(f"generate: temperature must be a finite number >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"generate: top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
        rng = np.random.default_rng(seed) if seed is not None else backend.rng("cpu")
        device = self.lm_head.weight.device
        xp = backend.xp_of(device)
        B = idx.shape[0]
        cache = None
        done = np.zeros(B, dtype=bool)
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = self(Tensor(xp.asarray(idx[:, -cfg.block_size:])))
            elif cache is None or cache.length + 1 > cfg.block_size:
                # first call, or the window is full: (re)run the last block_size tokens at once
                cache = KVCache(cfg, B, self.lm_head.weight.dtype, xp)
                logits, _ = self(Tensor(xp.asarray(idx[:, -cfg.block_size:])), cache=cache)
            else:
                logits, _ = self(Tensor(xp.asarray(idx[:, -1:])), cache=cache)
            last = np.asarray(backend.to_numpy(logits.data[:, -1, :]), dtype=np.float64)  # (B, V)
            nxt = sample_next(last, temperature, top_k, top_p, rng)
            if eos_id is not None:
                nxt = np.where(done, eos_id, nxt)
                done |= nxt == eos_id
            idx = np.concatenate([idx, nxt[:, None]], axis=1)
            if eos_id is not None and done.all():
                break
        return Tensor(idx)

    # ------------------------------------------------------------------------------ checkpoints
    @classmethod
    def from_safetensors(cls, path, dtype=None):
        """A Hugging Face GPT-2 checkpoint (a directory with config.json and model.safetensors),
        memory-mapped: each tensor is copied once, into its parameter (see hf.py)."""
        from .hf import load_hf_gpt2
        return load_hf_gpt2(cls, path, dtype=dtype)

    def save_pretrained(self, directory):
        """Write config.json and model.safetensors in Hugging Face's GPT-2 layout, which
        transformers.GPT2LMHeadModel.from_pretrained(directory) loads. Configs GPT-2 cannot
        express (RoPE, RMSNorm, SwiGLU, grouped-query attention) are refused by name."""
        if self.config.moe_experts or self.config.attn != "mha":
            raise ValueError(f"save_pretrained: Hugging Face's GPT-2 layout cannot express "
                             f"moe_experts={self.config.moe_experts}, attn={self.config.attn!r} "
                             "(mixture-of-experts layers and latent attention have no place in it)")
        from .hf import save
        return save(self, directory)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """One token id per row of logits (B, V): greedy at temperature 0, else sampled."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        # keep a token while the mass before it is below p: the first token always stays
        keep_sorted = (np.cumsum(sorted_p, axis=-1) - sorted_p) < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    rng = rng if rng is not None else backend.rng("cpu")
    u = rng.random((probs.shape[0], 1))
    cdf = np.cumsum(probs, axis=-1)
    return np.minimum((cdf < u * cdf[:, -1:]).sum(axis=-1), probs.shape[-1] - 1)
