"""Multi-head latent attention (MLA, DeepSeek-V2 and V3): keys and values through one small latent.

Per token, x (C) is projected down to a latent c (kv_lora_rank) and, beside it, one rotary key
k_rope (qk_rope_head_dim) shared by every head. Each head's key is [c W_uk_h^T, k_rope] and its
value c W_uv_h^T, with W_uk, W_uv the rows of kv_b_proj. Queries go through an optional low-rank
path of their own (q_lora_rank) and split the same way, [q_nope_h, rope(q_rope_h)]. The KV cache
keeps only c and the rotated k_rope: kv_lora_rank + qk_rope_head_dim numbers per token and layer,
against 2 n_head head_size for multi-head attention.

Two ways to compute the same attention:

  plain     expand c into every head's k_nope and v, attend per head (how training runs)
  absorbed  fold W_uk into the queries, q_lat_h = q_nope_h W_uk_h, so the scores are
            q_lat_h . c + q_rope_h . k_rope: one shared key [c, k_rope] for all heads (attention
            with one k/v head) and the value c itself; W_uv is folded into o_proj afterwards.
            Nothing per head is built for the cached tokens: the way to decode with a long cache.

Names are transformers' DeepseekV3Attention's: q_proj or q_a_proj, q_a_layernorm, q_b_proj;
kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj; o_proj. The rotary part uses the "rotate half"
layout (ops/rope.py); a checkpoint stored interleaved (rope_interleave) permutes the rope rows of
q_b_proj and kv_a_proj_with_mqa once at load time. Derivation: docs/backward.md#multi-head-latent-attention
"""
import math

from .. import functional as F
from ..tensor import cat
from .layers import Linear, RMSNorm
from .module import Module


class MLA(Module):
    """Multi-head latent attention (see the module docstring).

    forward(x, rope, cache=None, segment_ids=None, absorbed=None): x (B, T, C); rope the (cos, sin)
    tables of qk_rope_head_dim for these T positions; cache an object with
    append_latent(c, k_rope) -> all cached (c, k_rope) (models.gpt.KVCache); absorbed None takes
    the absorbed path when decoding with a cache, the plain one otherwise.
    """
    scope_children = True  # study.scope_blocks names the router, experts and projections inside

    def __init__(self, n_embd, n_head, kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim,
                 q_lora_rank=None, bias=False, norm_eps=1e-6, dropout=0.0, dtype=None, device=None):
        super().__init__()
        sizes = {"n_embd": n_embd, "n_head": n_head, "kv_lora_rank": kv_lora_rank,
                 "qk_rope_head_dim": qk_rope_head_dim, "qk_nope_head_dim": qk_nope_head_dim,
                 "v_head_dim": v_head_dim}
        if q_lora_rank is not None:
            sizes["q_lora_rank"] = q_lora_rank
        for name, v in sizes.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MLA: {name} must be a positive integer, got {v!r}")
        if qk_rope_head_dim % 2:
            raise ValueError(f"MLA: qk_rope_head_dim={qk_rope_head_dim} must be even (RoPE rotates pairs)")
        self.n_head, self.kv_lora_rank, self.q_lora_rank = n_head, kv_lora_rank, q_lora_rank
        self.rope_dim, self.nope_dim, self.v_dim = qk_rope_head_dim, qk_nope_head_dim, v_head_dim
        self.q_head_dim = qk_nope_head_dim + qk_rope_head_dim
        # DeepSeek's softmax scale: 1 / sqrt of the query/key head size (rope part included). Its
        # YaRN context extension multiplies this by mscale^2; that belongs with YaRN's tables.
        self.scale = 1.0 / math.sqrt(self.q_head_dim)
        self.dropout = dropout
        kw = dict(dtype=dtype, device=device)
        q_out = n_head * self.q_head_dim
        if q_lora_rank is None:
            self.q_proj = Linear(n_embd, q_out, bias=False, **kw)
        else:
            self.q_a_proj = Linear(n_embd, q_lora_rank, bias=bias, **kw)
            self.q_a_layernorm = RMSNorm(q_lora_rank, eps=norm_eps, **kw)
            self.q_b_proj = Linear(q_lora_rank, q_out, bias=False, **kw)
        self.kv_a_proj_with_mqa = Linear(n_embd, kv_lora_rank + qk_rope_head_dim, bias=bias, **kw)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, eps=norm_eps, **kw)
        self.kv_b_proj = Linear(kv_lora_rank, n_head * (qk_nope_head_dim + v_head_dim), bias=False, **kw)
        self.o_proj = Linear(n_head * v_head_dim, n_embd, bias=bias, **kw)

    def cache_numbers_per_token(self):
        """What the KV cache keeps per token in this layer: the latent and the rope key."""
        return self.kv_lora_rank + self.rope_dim

    # ---------------------------------------------------------------------------------- pieces
    def queries(self, x, rope):
        """(q_nope (B, H, T, nope), q_rope (B, H, T, rope), rotated)."""
        B, T, _ = x.shape
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.reshape(B, T, self.n_head, self.q_head_dim).transpose(0, 2, 1, 3)  # (B, H, T, nope + rope)
        return q[..., :self.nope_dim], F.rope(q[..., self.nope_dim:], *rope)

    def latent(self, x, rope):
        """(c (B, T, r) the normalised latent, k_rope (B, T, rope) rotated): what the cache keeps."""
        B, T, _ = x.shape
        kv = self.kv_a_proj_with_mqa(x)  # (B, T, r + rope)
        c = self.kv_a_layernorm(kv[..., :self.kv_lora_rank])
        k_rope = kv[..., self.kv_lora_rank:].reshape(B, 1, T, self.rope_dim)  # (B, 1, T, rope): one head
        return c, F.rope(k_rope, *rope).reshape(B, T, self.rope_dim)

    def up_projections(self):
        """(W_uk (H, nope, r), W_uv (H, v, r)): kv_b_proj's rows per head, keys' then values'."""
        W = self.kv_b_proj.weight.reshape(self.n_head, self.nope_dim + self.v_dim, self.kv_lora_rank)
        return W[:, :self.nope_dim], W[:, self.nope_dim:]

    # --------------------------------------------------------------------------------- forward
    def forward(self, x, rope, cache=None, segment_ids=None, absorbed=None):
        B, T, C = x.shape
        if rope is None:
            raise ValueError("MLA: needs the rotary tables of its rope part (a model with pos='rope')")
        docs = {} if segment_ids is None else {"segment_ids": segment_ids}
        q_nope, q_rope = self.queries(x, rope)
        c, k_rope = self.latent(x, rope)
        if cache is not None:  # generation: keep the latent and the rope key, nothing per head
            c, k_rope = cache.append_latent(c, k_rope)  # (B, Tk, r), (B, Tk, rope)
        absorbed = cache is not None if absorbed is None else absorbed
        attend = self._absorbed if absorbed else self._plain
        y = attend(q_nope, q_rope, c, k_rope, docs)  # (B, T, C)
        return F.dropout(y, self.dropout, self.training)

    def _plain(self, q_nope, q_rope, c, k_rope, docs):
        B, H, T, _ = q_nope.shape
        Tk = c.shape[1]
        kv = self.kv_b_proj(c).reshape(B, Tk, H, self.nope_dim + self.v_dim).transpose(0, 2, 1, 3)  # (B, H, Tk, nope + v)
        k_nope, v = kv[..., :self.nope_dim], kv[..., self.nope_dim:]
        k_shared = k_rope.reshape(B, 1, Tk, self.rope_dim).expand(B, H, Tk, self.rope_dim)  # one key, every head
        q = cat([q_nope, q_rope], axis=-1)  # (B, H, T, nope + rope)
        k = cat([k_nope, k_shared], axis=-1)  # (B, H, Tk, nope + rope)
        y = F.scaled_dot_product_attention(q, k, v, causal=True, scale=self.scale, **docs)  # (B, H, T, v)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, H * self.v_dim)  # (B, T, H v)
        return self.o_proj(y)

    def _absorbed(self, q_nope, q_rope, c, k_rope, docs):
        B, H, T, _ = q_nope.shape
        Tk, r = c.shape[1], self.kv_lora_rank
        W_uk, W_uv = self.up_projections()
        q_lat = q_nope @ W_uk  # (B, H, T, r): q_nope_h . (W_uk_h c) = (q_nope_h W_uk_h) . c
        q = cat([q_lat, q_rope], axis=-1)  # (B, H, T, r + rope)
        k = cat([c, k_rope], axis=-1).reshape(B, 1, Tk, r + self.rope_dim)  # (B, 1, Tk, r + rope): shared
        v = c.reshape(B, 1, Tk, r)  # (B, 1, Tk, r): the value is the latent itself
        o_lat = F.scaled_dot_product_attention(q, k, v, causal=True, scale=self.scale, **docs)  # (B, H, T, r)
        # W_uv folded into o_proj: W_o (C, H v) -> (C, H r), W_o_h W_uv_h per head
        C = self.o_proj.weight.shape[0]
        W_o = self.o_proj.weight.reshape(C, H, self.v_dim).transpose(1, 0, 2)  # (H, C, v)
        W_o_lat = (W_o @ W_uv).transpose(1, 0, 2).reshape(C, H * r)  # (C, H r)
        y = o_lat.transpose(0, 2, 1, 3).reshape(B, T, H * r)  # (B, T, H r)
        return F.linear(y, W_o_lat, self.o_proj.bias)

    def extra_repr(self):
        return (f"n_head={self.n_head}, kv_lora_rank={self.kv_lora_rank}, q_lora_rank={self.q_lora_rank}, "
                f"nope={self.nope_dim}, rope={self.rope_dim}, v={self.v_dim}")
