"""TransformerConfig: the sizes and the named switches of the Llama-layout transformer
(transformer.py). Each switch is one difference between model families; families.py says which
family sets which, from its Hugging Face config.json."""
import math
from dataclasses import dataclass

import numpy as np

from ..config import DictConfig
from ..ops.rope import check_rope_scaling

LAYER_TYPES = ("full_attention", "sliding_attention")
ACTIVATIONS = ("silu", "gelu_tanh")  # the gate's activation: SwiGLU or GeGLU (tanh GELU)


@dataclass
class TransformerConfig(DictConfig):
    # sizes
    vocab_size: int = 32000
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 2
    num_attention_heads: int = 9
    num_key_value_heads: int = None  # None: = num_attention_heads; fewer share k/v heads (GQA)
    head_dim: int = None             # None: hidden_size // num_attention_heads (Qwen3, Gemma set it)
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    # positions
    rope_theta: float = 10000.0
    rope_scaling: dict = None        # Hugging Face's spelling: linear, dynamic, yarn, llama3 (ops/rope.py)
    local_rope_theta: float = None   # sliding-window layers' own base (Gemma 3), None: rope_theta
    local_rope_scaling: dict = None  # and their own scaling (None: unscaled when local_rope_theta is set)
    # attention
    layer_types: list = None         # per layer "full_attention" | "sliding_attention"; None: all full
    sliding_window: int = None       # W: a sliding layer's query sees its W latest keys, itself included
    qkv_bias: bool = False           # biases on q_proj, k_proj, v_proj (Qwen2; Llama's attention_bias)
    o_bias: bool = False             # a bias on o_proj (Llama's attention_bias)
    qk_norm: bool = False            # RMSNorm over each head of q and k before RoPE (Qwen3, Gemma 3)
    query_pre_attn_scalar: float = None  # scores scaled by its^-1/2 instead of head_dim^-1/2 (Gemma)
    attn_logit_softcap: float = None     # scores -> cap tanh(scores / cap) before the mask (Gemma 2)
    # feed-forward, norms, embeddings, head
    hidden_act: str = "silu"         # gate activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU, Gemma)
    mlp_bias: bool = False           # biases on gate_proj, up_proj, down_proj (Llama's mlp_bias)
    norm_unit_offset: bool = False   # RMSNorm gain is (1 + weight) (Gemma)
    sandwich_norms: bool = False     # a norm after attention and after the MLP too, 4 per layer (Gemma)
    embed_scale: bool = False        # embeddings times sqrt(hidden_size), rounded to the dtype (Gemma)
    final_logit_softcap: float = None  # logits -> cap tanh(logits / cap) (Gemma 2)
    tie_word_embeddings: bool = False  # lm_head shares embed_tokens' matrix
    pad_token_id: int = None         # its embedding row gets no gradient from the lookup (padding_idx)
    # what save_pretrained writes (families.py), and the random initialisation's std
    model_type: str = "llama"
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None:
            self.layer_types = ["full_attention"] * self.num_hidden_layers
        self.layer_types = list(self.layer_types)
        self._check()

    def _check(self):
        where = "TransformerConfig"
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{where}: {name} must be a positive integer, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{where}: num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"{where}: RoPE needs an even head_dim, got {self.head_dim}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"{where}: layer_types has {len(self.layer_types)} entries for "
                             f"{self.num_hidden_layers} layers")
        odd = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if odd:
            raise ValueError(f"{where}: layer_types {odd} are not implemented; known: {LAYER_TYPES}")
        if "sliding_attention" in self.layer_types:
            w = self.sliding_window
            if not isinstance(w, (int, np.integer)) or isinstance(w, bool) or w < 1:
                raise ValueError(f"{where}: sliding layers need sliding_window >= 1, got {w!r}")
        if self.pad_token_id is not None and not (isinstance(self.pad_token_id, (int, np.integer))
                                                  and 0 <= self.pad_token_id < self.vocab_size):
            raise ValueError(f"{where}: pad_token_id {self.pad_token_id!r} is not a token id of [0, {self.vocab_size})")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{where}: hidden_act={self.hidden_act!r}; implemented: {ACTIVATIONS}")
        for name in ("rms_norm_eps", "rope_theta"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{where}: {name} must be a positive number, got {v!r}")
        for name in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap", "local_rope_theta"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
                raise ValueError(f"{where}: {name} must be None or a positive number, got {v!r}")
        check_rope_scaling(self.rope_scaling, f"{where}: rope_scaling")
        check_rope_scaling(self.local_rope_scaling, f"{where}: local_rope_scaling")

    @property
    def block_size(self):
        """The longest sequence it was trained on (what GPT's training and fine-tuning code reads)."""
        return self.max_position_embeddings

    def rope(self, layer_type):
        """(theta, scaling) of a layer type: sliding layers may have their own base (Gemma 3)."""
        if layer_type == "sliding_attention" and self.local_rope_theta is not None:
            return self.local_rope_theta, self.local_rope_scaling
        return self.rope_theta, self.rope_scaling

    def attention_scale(self):
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def num_parameters(self):
        """Parameter count from the shapes alone (tied weights once), without building the model."""
        C, I, V, L, D = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers, self.head_dim
        H, Hk = self.num_attention_heads, self.num_key_value_heads
        attn = C * (H + 2 * Hk) * D + H * D * C + self.qkv_bias * (H + 2 * Hk) * D + self.o_bias * C
        attn += 2 * D * self.qk_norm
        mlp = 3 * C * I + self.mlp_bias * (2 * I + C)
        norms = C * (4 if self.sandwich_norms else 2)
        return V * C + L * (attn + mlp + norms) + C + (0 if self.tie_word_embeddings else V * C)
