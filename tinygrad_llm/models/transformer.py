"""The Llama layout: one decoder-only transformer for Llama, SmolLM2, Mistral, Qwen2, Qwen3 and
Gemma 2/3, whose differences are the named switches of TransformerConfig.

    config   -> TransformerConfig (transformer_config.py): sizes, and the switches (families.py maps
                each Hugging Face model_type and config field to them; docs/architecture.md has the table)
    model    -> model.embed_tokens, model.layers[i] (attention then gated MLP, each added to the
                residual stream, with pre-norms, and post-norms too for Gemma), model.norm, lm_head
    generate -> sampling with a KV cache whose sliding-window layers keep only their window

Parameter names are Hugging Face's (model.layers.0.self_attn.q_proj.weight, ...mlp.gate_proj...,
input_layernorm, ...), so loading is a straight copy and LoRA targets are the family's own module
names (q_proj, v_proj). GPT (gpt.py) keeps GPT-2's fused c_attn layout and stays the model the
project trains from scratch; docs/architecture.md says why this is a second class.
"""
import numpy as np

from .. import backend
from .. import functional as F
from .. import nn
from ..autograd import no_grad
from ..ops.rope import rope_tables, rope_type
from ..tensor import Tensor
from .gpt import sample_next
from .kv_cache import KVCache
from .transformer_config import TransformerConfig


def _norm(config, size, dtype):
    return nn.RMSNorm(size, eps=config.rms_norm_eps, dtype=dtype, offset=1.0 if config.norm_unit_offset else 0.0)


class Attention(nn.Module):
    """Causal self-attention with RoPE: q_proj, k_proj, v_proj, o_proj, and the options of the
    config (grouped k/v heads, q/k/v biases, QK-norm, a sliding window, soft-capped scores)."""

    def __init__(self, config, layer_idx, dtype=None):
        super().__init__()
        C, D = config.hidden_size, config.head_dim
        self.layer_idx, self.layer_type = layer_idx, config.layer_types[layer_idx]
        self.n_head, self.n_kv_head, self.head_dim = config.num_attention_heads, config.num_key_value_heads, D
        self.q_proj = nn.Linear(C, self.n_head * D, bias=config.qkv_bias, dtype=dtype)
        self.k_proj = nn.Linear(C, self.n_kv_head * D, bias=config.qkv_bias, dtype=dtype)
        self.v_proj = nn.Linear(C, self.n_kv_head * D, bias=config.qkv_bias, dtype=dtype)
        self.o_proj = nn.Linear(self.n_head * D, C, bias=config.o_bias, dtype=dtype)
        if config.qk_norm:
            self.q_norm, self.k_norm = _norm(config, D, dtype), _norm(config, D, dtype)
        self.qk_norm = config.qk_norm
        self.window = config.sliding_window if self.layer_type == "sliding_attention" else None
        self.scale, self.softcap = config.attention_scale(), config.attn_logit_softcap

    def forward(self, x, rope, cache=None, segment_ids=None):
        B, T, _ = x.shape
        H, Hk, D = self.n_head, self.n_kv_head, self.head_dim
        q = self.q_proj(x).reshape(B, T, H, D)  # (B, T, H, D)
        k = self.k_proj(x).reshape(B, T, Hk, D)  # (B, T, Hk, D)
        v = self.v_proj(x).reshape(B, T, Hk, D)
        if self.qk_norm:  # per head, over D
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, H|Hk, T, D)
        q, k = F.rope(q, *rope), F.rope(k, *rope)
        causal, window = True, self.window
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
            if T == 1 and (window is None or k.shape[2] <= window):
                causal, window = False, None  # one new query sees every key handed to it: no mask to build
        y = F.scaled_dot_product_attention(q, k, v, causal=causal, scale=self.scale, segment_ids=segment_ids,
                                           window=window, softcap=self.softcap)  # (B, H, T, D)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, H D): heads side by side again
        return self.o_proj(y)


class GatedMLP(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)): SwiGLU (silu) or GeGLU (tanh GELU)."""

    def __init__(self, config, dtype=None):
        super().__init__()
        C, I, b = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(C, I, bias=b, dtype=dtype)
        self.up_proj = nn.Linear(C, I, bias=b, dtype=dtype)
        self.down_proj = nn.Linear(I, C, bias=b, dtype=dtype)
        self.act = config.hidden_act

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        h = F.swiglu(gate, up) if self.act == "silu" else F.geglu(gate, up, approximate="tanh")
        return self.down_proj(h)


# The two factories a layer is built from. Every family here has attention and a dense gated MLP
# in every layer; the mixture-of-experts families (mixtral, qwen3_moe, deepseek_v3) plug their
# sparse feed-forward in feed_forward_for, and DeepSeek's multi-head latent attention in
# attention_for, each chosen by a config switch for the layers that have it (families.py marks
# where their configs are read).
def attention_for(config, layer_idx, dtype=None):
    """The attention module of layer layer_idx."""
    return Attention(config, layer_idx, dtype)


def feed_forward_for(config, layer_idx, dtype=None):
    """The feed-forward module of layer layer_idx."""
    return GatedMLP(config, dtype)


class DecoderLayer(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(x)); with sandwich norms (Gemma) each branch's output is
    normed too before it joins the residual stream.

    Hugging Face's names differ in meaning between the two layouts: in Llama's,
    post_attention_layernorm is the MLP's pre-norm; in Gemma's it norms the attention output and
    pre_feedforward_layernorm is the MLP's pre-norm. The names are kept, so checkpoints copy as is.
    """

    def __init__(self, config, layer_idx, dtype=None):
        super().__init__()
        C = config.hidden_size
        self.sandwich = config.sandwich_norms
        self.input_layernorm = _norm(config, C, dtype)
        self.self_attn = attention_for(config, layer_idx, dtype)
        self.post_attention_layernorm = _norm(config, C, dtype)
        if self.sandwich:
            self.pre_feedforward_layernorm = _norm(config, C, dtype)
            self.post_feedforward_layernorm = _norm(config, C, dtype)
        self.mlp = feed_forward_for(config, layer_idx, dtype)

    def forward(self, x, rope, cache=None, segment_ids=None):
        h = self.self_attn(self.input_layernorm(x), rope, cache, segment_ids)
        if self.sandwich:
            x = x + self.post_attention_layernorm(h)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    """embed_tokens, the layers and the final norm: Hugging Face's `model` submodule."""

    def __init__(self, config, dtype=None):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype,
                                         padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList([DecoderLayer(config, i, dtype) for i in range(config.num_hidden_layers)])
        self.norm = _norm(config, config.hidden_size, dtype)


class Transformer(nn.Module):
    """The model: idx (B, T) token ids -> logits (B, T, vocab_size), and the loss given targets.
    The same interface as GPT: forward, generate, save_pretrained."""

    def __init__(self, config, dtype=None, init=True):
        super().__init__()
        if isinstance(config, dict):
            config = TransformerConfig.from_dict(config)
        self.config = config
        with nn.init.skipped(not init):  # a loader overwrites every weight: leave them unwritten
            self.model = DecoderStack(config, dtype)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)
        if config.tie_word_embeddings:  # one matrix for the input embedding and the output head
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rope_cache = {}  # layer type -> (cos, sin) of positions 0.. (not for dynamic scaling)
        if init:
            self.reset_parameters()

    def reset_parameters(self):
        """N(0, initializer_range) weights and embeddings, zero biases, unit norm gains (weight ones,
        or zeros where the gain is 1 + weight), as transformers initialises these families."""
        rng = backend.rng("cpu")
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                value = np.zeros(p.shape) if self.config.norm_unit_offset else np.ones(p.shape)
            elif name.endswith(".weight") and len(p.shape) == 2:
                value = rng.standard_normal(p.shape) * std
            else:
                value = np.zeros(p.shape)
            if name == "model.embed_tokens.weight" and self.config.pad_token_id is not None:
                value[self.config.pad_token_id] = 0  # as transformers does for its padding_idx
            p.data[...] = backend.xp_of(p.device).asarray(value.astype(p.dtype))

    # ---------------------------------------------------------------------------------- forward
    def rope(self, layer_type, start, T, like):
        """(cos, sin) (T, head_dim / 2) of positions start.. for a layer type, in like's dtype.
        Tables of positions 0.. are kept (grown by doubling); dynamic NTK scaling depends on the
        sequence's length, so past max_position_embeddings its rows are computed per call."""
        cfg = self.config
        theta, scaling = cfg.rope(layer_type)
        xp = backend.array_module(like.data)
        end = start + T
        if rope_type(scaling) == "dynamic" and end > cfg.max_position_embeddings:
            return rope_tables(T, cfg.head_dim, theta, like.dtype, xp, scaling, cfg.max_position_embeddings,
                               start=start)
        cached = self._rope_cache.get(layer_type)
        if cached is None or cached[0].shape[0] < end or cached[0].dtype != like.dtype \
                or backend.device_of(cached[0]) != like.device:
            n = max(end, 2 * cached[0].shape[0] if cached is not None else 0, min(cfg.max_position_embeddings, 4096))
            if rope_type(scaling) == "dynamic":  # its table up to max_position_embeddings is unscaled
                n = min(n, cfg.max_position_embeddings)
            cached = rope_tables(n, cfg.head_dim, theta, like.dtype, xp, scaling, cfg.max_position_embeddings)
            self._rope_cache[layer_type] = cached
        return cached[0][start:end], cached[1][start:end]

    def _check_idx(self, idx):
        data = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if data.ndim == 1:
            data = data[None]
        if data.ndim != 2 or data.dtype.kind not in "iu" or data.shape[1] == 0:
            raise ValueError(f"{type(self).__name__}: idx must be (B, T) integer token ids with T >= 1, "
                             f"got {data.dtype} {data.shape}")
        host = backend.to_numpy(data)
        if host.size and (host.min() < 0 or host.max() >= self.config.vocab_size):
            bad = host[(host < 0) | (host >= self.config.vocab_size)][0]
            raise ValueError(f"{type(self).__name__}: token id {bad} is outside the vocabulary "
                             f"[0, {self.config.vocab_size})")
        return data

    def hidden_states(self, idx, cache=None, segment_ids=None):
        """The final-norm output (B, T, hidden_size). With a KVCache, idx are the next tokens after
        the cached ones. segment_ids (B, T) keep attention within a document (training only)."""
        cfg = self.config
        data = self._check_idx(idx)
        B, T = data.shape
        start = cache.length if cache is not None else 0
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids are for training on packed documents, not for a KV cache")
            segment_ids = segment_ids.data if isinstance(segment_ids, Tensor) else np.asarray(segment_ids)
        if cache is not None and cache.batch != B:
            raise ValueError(f"the KV cache holds {cache.batch} rows, idx has {B}")
        x = self.model.embed_tokens(Tensor(data))  # (B, T, C)
        if cfg.embed_scale:
            # Gemma: sqrt(hidden) as transformers holds it, a float32 number, then in the weights'
            # dtype (bfloat16 rounds it: sqrt(640) = 25.298 becomes 25.25)
            x = x * float(np.float32(np.sqrt(cfg.hidden_size)))
        ropes = {t: self.rope(t, start, T, x) for t in set(cfg.layer_types)}
        for layer in self.model.layers:
            x = layer(x, ropes[layer.self_attn.layer_type], cache, segment_ids)
        if cache is not None:
            cache.advance(T)
        return self.model.norm(x)

    def logits(self, h):
        """lm_head(h), soft-capped where the config says so."""
        logits = F.linear(h, self.lm_head.weight)
        if self.config.final_logit_softcap is not None:
            logits = F.soft_cap(logits, self.config.final_logit_softcap)
        return logits

    def forward(self, idx, targets=None, cache=None, segment_ids=None):
        """(logits (B, T, vocab_size), mean cross-entropy over targets != -100, or None)."""
        h = self.hidden_states(idx, cache, segment_ids)
        B, T = h.shape[:2]
        logits = self.logits(h)  # (B, T, V)
        if targets is None:
            return logits, None
        tgt = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if tuple(tgt.shape) != (B, T):
            raise ValueError(f"targets of shape {tuple(tgt.shape)} do not match idx of shape {(B, T)}")
        loss = F.cross_entropy(logits.reshape(B * T, self.config.vocab_size), Tensor(tgt.reshape(B * T)))
        return logits, loss

    # ------------------------------------------------------------------------------- generation
    def new_cache(self, batch=1, capacity=None):
        """An empty KVCache for `batch` rows, `capacity` positions reserved (it grows if outrun)."""
        w = self.lm_head.weight
        return KVCache(self.config, batch, w.dtype, backend.xp_of(w.device), capacity)

    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_id=None, seed=None,
               cache=None, use_cache=True):
        """Yield the next token of each row, (B,) int64, as each is sampled: generate's loop, for
        callers that show tokens as they come (a chat). With a cache, the first cache.length tokens
        of idx are taken as already run through it (a conversation so far) and only the rest is run;
        after the loop the cache holds every token but the last one yielded."""
        with self.evaluating(), no_grad():
            yield from self._stream(idx, max_new_tokens, temperature, top_k, top_p, eos_id, seed, cache, use_cache)

    def _stream(self, idx, max_new_tokens, temperature, top_k, top_p, eos_id, seed, cache, use_cache):
        idx = np.asarray(backend.to_numpy(self._check_idx(idx)), dtype=np.int64)
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        eos = _eos_ids(eos_id)
        rng = np.random.default_rng(seed) if seed is not None else backend.rng("cpu")
        xp = backend.xp_of(self.lm_head.weight.device)
        B, T0 = idx.shape
        if cache is not None and not 0 <= cache.length < T0:
            raise ValueError(f"the cache holds {cache.length} positions; idx must extend them by at least "
                             f"one token, got {T0}")
        if use_cache and cache is None:
            cache = self.new_cache(B, T0 + max_new_tokens)
        done = np.zeros(B, dtype=bool)
        fed = idx
        for _ in range(max_new_tokens):
            if use_cache:
                h = self.hidden_states(Tensor(xp.asarray(fed[:, cache.length:])), cache)
            else:
                h = self.hidden_states(Tensor(xp.asarray(fed)))
            last = backend.to_numpy(self.logits(h[:, -1]).data)  # (B, V): only the last position's head
            if temperature != 0:  # sampling needs float64's range for exp; argmax does not
                last = np.asarray(last, dtype=np.float64)
            nxt = sample_next(last, temperature, top_k, top_p, rng).astype(np.int64)
            if eos:
                nxt = np.where(done, next(iter(eos)), nxt)
                done |= np.isin(nxt, list(eos))
            fed = np.concatenate([fed, nxt[:, None]], axis=1)
            yield nxt
            if eos and done.all():
                return

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_id=None, seed=None,
                 use_cache=True, cache=None):
        """Extend idx (B, T) by up to max_new_tokens sampled tokens; returns (B, T + n) int64.

        temperature 0 is greedy; top_k keeps the k likeliest tokens, top_p the smallest set whose
        probability reaches p. eos_id: an id or several (Llama 3 ends a turn with either of two);
        generation stops once every row has produced one (finished rows repeat it). Positions past
        max_position_embeddings are computed as transformers computes them (RoPE extrapolates;
        dynamic scaling rescales), with no cropping. cache: see stream().
        """
        idx_host = np.asarray(backend.to_numpy(self._check_idx(idx)), dtype=np.int64)
        new = list(self.stream(idx_host, max_new_tokens, temperature, top_k, top_p, eos_id, seed, cache, use_cache))
        out = np.concatenate([idx_host] + [t[:, None] for t in new], axis=1) if new else idx_host
        return Tensor(out)

    # ------------------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory):
        """Write config.json and model.safetensors in the family's own Hugging Face layout, which
        transformers.AutoModelForCausalLM.from_pretrained(directory) loads (see pretrained.py)."""
        from .export import save_pretrained
        return save_pretrained(self, directory)


def _check_sampling(max_new_tokens, temperature, top_k, top_p):
    if not (isinstance(max_new_tokens, (int, np.integer)) and max_new_tokens >= 0):
        raise ValueError(f"generate: max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not temperature >= 0 or not np.isfinite(temperature):  # a nan fails every comparison
        raise ValueError(f"generate: temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"generate: top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")


def _eos_ids(eos_id):
    """eos_id as a tuple of ints (empty for None)."""
    if eos_id is None:
        return ()
    ids = (eos_id,) if isinstance(eos_id, (int, np.integer)) else tuple(eos_id)
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"generate: eos_id must be a token id or a list of them, got {eos_id!r}")
    return tuple(int(i) for i in ids)


__all__ = ["TransformerConfig", "Transformer", "Attention", "GatedMLP", "DecoderLayer", "attention_for",
           "feed_forward_for"]
