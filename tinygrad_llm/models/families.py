"""The model families: each Hugging Face model_type, what it changes in the one transformer of
transformer.py, and how its config.json maps to TransformerConfig.

What each family changes (the `changes` column below; docs/architecture.md has the same table):

    llama        the baseline: RMSNorm pre-norms, SwiGLU, RoPE (any scaling), GQA; attention_bias and
                 mlp_bias as the config says (SmolLM2, TinyLlama and Llama 3.x are all this)
    mistral      + a sliding window (sliding_window) on every layer
    qwen2        + biases on q_proj, k_proj, v_proj (not o_proj); sliding layers past max_window_layers
                 when use_sliding_window
    qwen3        + QK-norm (RMSNorm per head on q and k); head_dim set apart from hidden / heads
    gemma2       + GeGLU (tanh GELU), RMSNorm gain (1 + w), four sandwich norms, embeddings x sqrt(hidden),
                 query_pre_attn_scalar, soft-capped attention scores and logits, sliding/full layers
    gemma3_text  gemma2's pieces + QK-norm, its own RoPE base for the sliding layers, no attention cap

A config field either maps to a switch (`reads`), or must keep the one value implemented (`fixed`:
refused by name otherwise), or is bookkeeping that changes no number computed (METADATA). Any other
field is refused by name too, as are folders that ask for custom code (auto_map) or quantized
weights: nothing is approximated, and nothing from the folder is ever executed.

The mixture-of-experts families (mixtral, qwen3_moe, deepseek_v3) have their place in PLANNED: their
dense parts are this transformer's, and their sparse feed-forward (and DeepSeek's latent
attention) plug into transformer.feed_forward_for / attention_for, chosen per layer by a switch.
"""
import math
from dataclasses import dataclass, field

from ..ops.rope import check_rope_scaling
from .transformer_config import TransformerConfig

# Fields that change no number the model computes: names, ids the tokenizer side uses (pad_token_id
# is read too: its embedding row does not train, as in transformers' padding_idx), generation
# defaults (generation_config.json's business), the dtype the file was saved in (loading converts)
METADATA = {
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "initializer_range", "use_cache", "cache_implementation", "output_attentions", "output_hidden_states",
    "return_dict", "id2label", "label2id", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder",
    "is_decoder", "add_cross_attention", "tie_encoder_decoder", "cross_attention_hidden_size",
    "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "pruned_heads", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "_attn_implementation_autoset", "is_llama_config",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens",
}
# Fields that would make the model something else, refused whatever their value
REFUSED = {
    "auto_map": "the folder asks for its own modeling code (auto_map), which is never run",
    "quantization_config": "quantized weights are not implemented",
}
SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
COMMON_READS = SIZES + ("num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                        "tie_word_embeddings", "rope_theta", "rope_scaling", "rope_parameters")
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str  # the class transformers builds (config.json's architectures)
    changes: dict      # switches every model of the family sets (on top of TransformerConfig's defaults)
    reads: tuple       # config fields mapped to switches (COMMON_READS included)
    defaults: dict     # transformers' class defaults for fields a config.json may leave out
    fixed: dict = field(default_factory=dict)  # fields whose one implemented value is this


_NO_DROPOUT = {"attention_dropout": 0.0}
FAMILIES = {f.model_type: f for f in (
    Family("llama", "LlamaForCausalLM", {},
           COMMON_READS + ("hidden_act", "attention_bias", "mlp_bias"),
           {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "rope_theta": 10000.0, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False},
           {**_NO_DROPOUT, "pretraining_tp": 1, "rope_interleaved": False}),
    Family("mistral", "MistralForCausalLM", {},
           COMMON_READS + ("hidden_act", "sliding_window"),
           {"max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "rope_theta": 10000.0, "hidden_act": "silu", "sliding_window": 4096},
           dict(_NO_DROPOUT)),
    Family("qwen2", "Qwen2ForCausalLM", {"qkv_bias": True},
           COMMON_READS + ("hidden_act", "use_sliding_window", "sliding_window", "max_window_layers", "layer_types"),
           {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "rope_theta": 10000.0, "hidden_act": "silu", "use_sliding_window": False, "sliding_window": 4096,
            "max_window_layers": 28},
           dict(_NO_DROPOUT)),
    Family("qwen3", "Qwen3ForCausalLM", {"qk_norm": True},
           COMMON_READS + ("hidden_act", "attention_bias", "use_sliding_window", "sliding_window",
                           "max_window_layers", "layer_types"),
           {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "rope_theta": 10000.0, "hidden_act": "silu", "head_dim": 128, "attention_bias": False,
            "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28},
           dict(_NO_DROPOUT)),
    Family("gemma2", "Gemma2ForCausalLM",
           {"norm_unit_offset": True, "sandwich_norms": True, "embed_scale": True},
           COMMON_READS + ("hidden_activation", "hidden_act", "attention_bias", "query_pre_attn_scalar",
                           "sliding_window", "layer_types", "attn_logit_softcapping", "final_logit_softcapping"),
           {"max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
            "rope_theta": 10000.0, "hidden_activation": "gelu_pytorch_tanh", "head_dim": 256, "pad_token_id": 0,
            "attention_bias": False, "query_pre_attn_scalar": 256, "sliding_window": 4096,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
           {**_NO_DROPOUT, "use_bidirectional_attention": None}),
    Family("gemma3_text", "Gemma3ForCausalLM",
           {"norm_unit_offset": True, "sandwich_norms": True, "embed_scale": True, "qk_norm": True},
           COMMON_READS + ("hidden_activation", "hidden_act", "attention_bias", "query_pre_attn_scalar",
                           "sliding_window", "layer_types", "sliding_window_pattern", "_sliding_window_pattern",
                           "rope_local_base_freq", "final_logit_softcapping"),
           {"max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
            "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "hidden_activation": "gelu_pytorch_tanh",
            "head_dim": 256, "attention_bias": False, "query_pre_attn_scalar": 256, "sliding_window": 4096,
            "final_logit_softcapping": None, "pad_token_id": 0},
           # transformers' Gemma 3 reads attn_logit_softcapping but never applies it (Gemma 2 does):
           # a config that sets it is refused rather than guessed at
           {**_NO_DROPOUT, "use_bidirectional_attention": False, "attn_logit_softcapping": None}),
)}
ARCHITECTURES = {f.architecture: f.model_type for f in FAMILIES.values()}
# Not implemented yet; the reason names where each plugs in
PLANNED = {
    "mixtral": "a mixture-of-experts feed-forward (transformer.feed_forward_for)",
    "qwen3_moe": "a mixture-of-experts feed-forward (transformer.feed_forward_for)",
    "deepseek_v3": "multi-head latent attention and a mixture-of-experts feed-forward "
                   "(transformer.attention_for / feed_forward_for)",
    "gemma3": "the vision-language Gemma 3 (only its text model, model_type gemma3_text, is implemented)",
}


class ConfigError(ValueError):
    """A config.json this package cannot honour exactly: the message names the field and value."""


def family_of(hf, where="config.json"):
    """The Family of a Hugging Face config dict, from model_type (or architectures without one)."""
    model_type = hf.get("model_type")
    if model_type is None:
        archs = [a for a in hf.get("architectures") or () if a in ARCHITECTURES]
        if not archs:
            raise ConfigError(f"{where}: no model_type, and architectures {hf.get('architectures')} names "
                              f"none of {sorted(ARCHITECTURES)}")
        model_type = ARCHITECTURES[archs[0]]
    if model_type == "gpt2":
        return None  # GPT's own loader (hf.py)
    if model_type in PLANNED:
        raise ConfigError(f"{where}: model_type {model_type!r} is not implemented yet: it needs {PLANNED[model_type]}")
    if model_type not in FAMILIES:
        raise ConfigError(f"{where}: model_type {model_type!r} is not one of the implemented families "
                          f"{['gpt2'] + sorted(FAMILIES)}")
    family = FAMILIES[model_type]
    archs = hf.get("architectures")
    if archs and family.architecture not in archs:
        raise ConfigError(f"{where}: architectures {archs} for model_type {model_type!r}; only "
                          f"{family.architecture} (a causal language model) is implemented")
    return family


def config_from_hf(hf, where="config.json"):
    """TransformerConfig from a Hugging Face config dict, or a ConfigError naming the field at fault."""
    family = family_of(hf, where)
    if family is None:
        raise ConfigError(f"{where}: model_type 'gpt2' loads into GPT (models.from_pretrained does that)")
    for key, why in REFUSED.items():
        if key in hf:
            raise ConfigError(f"{where}: {key} is set: {why}")
    unknown = sorted(set(hf) - set(family.reads) - set(family.fixed) - METADATA)
    if unknown:
        raise ConfigError(f"{where}: field(s) {unknown} are not ones a {family.model_type} model has here; "
                          "each could change what it computes, so the folder is refused")
    for key, value in family.fixed.items():
        got = hf.get(key, value)
        if got != value and not (value is None and got is False) and not (value is False and got is None):
            raise ConfigError(f"{where}: {key}={got!r} is not implemented (only {value!r})")
    missing = [k for k in SIZES if hf.get(k) is None]
    if missing:
        raise ConfigError(f"{where}: {missing} missing")
    c = {**family.defaults, **{k: v for k, v in hf.items() if k in family.reads}}
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    cfg = dict(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
               num_hidden_layers=c["num_hidden_layers"], num_attention_heads=heads, num_key_value_heads=kv,
               head_dim=head_dim, max_position_embeddings=c["max_position_embeddings"],
               rms_norm_eps=c["rms_norm_eps"], tie_word_embeddings=bool(c["tie_word_embeddings"]),
               model_type=family.model_type, pad_token_id=hf.get("pad_token_id", family.defaults.get("pad_token_id")))
    cfg.update(family.changes)
    cfg["hidden_act"] = _activation(c, family, where)
    cfg.update(_biases(c, family))
    cfg.update(_windows(c, family, where))
    cfg.update(_ropes(c, family, where))
    if family.model_type.startswith("gemma"):
        cfg["query_pre_attn_scalar"] = c["query_pre_attn_scalar"]
        cfg["final_logit_softcap"] = c["final_logit_softcapping"]
        cfg["attn_logit_softcap"] = c.get("attn_logit_softcapping")
    try:
        return TransformerConfig(**cfg)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _activation(c, family, where):
    key = "hidden_activation" if "hidden_activation" in family.reads else "hidden_act"
    name = c.get(key)
    if name not in ACTIVATIONS:
        raise ConfigError(f"{where}: {key}={name!r} is not implemented; implemented: {sorted(ACTIVATIONS)}")
    legacy = c.get("hidden_act") if key == "hidden_activation" else None  # older Gemma configs carry both
    if legacy is not None and ACTIVATIONS.get(legacy) != ACTIVATIONS[name]:
        raise ConfigError(f"{where}: hidden_act={legacy!r} disagrees with hidden_activation={name!r}")
    return ACTIVATIONS[name]


def _biases(c, family):
    if family.model_type == "qwen2":
        return {}  # q, k, v biases always (changes), none on o_proj
    bias = bool(c.get("attention_bias", False))  # Llama's and Qwen3's: on all four projections
    return {"qkv_bias": bias, "o_bias": bias, "mlp_bias": bool(c.get("mlp_bias", False))}


def _windows(c, family, where):
    """layer_types and sliding_window, as each family's transformers config derives them."""
    L, window, kind = c["num_hidden_layers"], c.get("sliding_window"), family.model_type
    if kind == "llama":
        return {}
    if kind == "mistral":  # one window for every layer, or none
        return {"layer_types": ["sliding_attention" if window else "full_attention"] * L, "sliding_window": window}
    if kind in ("qwen2", "qwen3"):
        window = window if c.get("use_sliding_window") else None
        types = c.get("layer_types") or ["sliding_attention" if window is not None and i >= c["max_window_layers"]
                                         else "full_attention" for i in range(L)]
        if window is None and "sliding_attention" in types:
            # transformers gives those layers sliding_window None: full attention
            types = ["full_attention"] * L
    elif kind == "gemma2":
        types = c.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L)]
    else:  # gemma3_text: every pattern-th layer is global
        pattern = c.get("sliding_window_pattern", c.get("_sliding_window_pattern", 6))
        types = c.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                         for i in range(L)]
    if "sliding_attention" in types and not window:
        raise ConfigError(f"{where}: layer_types has sliding layers but sliding_window is {window!r}")
    return {"layer_types": list(types), "sliding_window": window if "sliding_attention" in types else None}


def _rope_dict(params, theta, where):
    """(theta, scaling or None) from one rope_parameters / rope_scaling dict."""
    params = dict(params or {})
    theta = params.pop("rope_theta", theta)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    try:
        check_rope_scaling(params, where)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if params.get("rope_type", "default") == "default" and set(params) <= {"rope_type"}:
        return float(theta), None
    return float(theta), params


def _ropes(c, family, where):
    """RoPE base and scaling of the full (and, Gemma 3, the sliding) layers, from either spelling:
    transformers 5's rope_parameters (rope_theta inside) or the older rope_theta + rope_scaling."""
    scaling = c.get("rope_scaling") or c.get("rope_parameters") or {}
    if family.model_type == "gemma3_text":
        nested = scaling if set(scaling) & {"full_attention", "sliding_attention"} else {}
        full = dict(nested.get("full_attention") or {})
        if not nested and scaling:  # old configs: rope_scaling applies to the global layers
            full.update(scaling)
        full_theta, full_scaling = _rope_dict(full, c["rope_theta"], f"{where}: rope (full_attention)")
        local_theta, local_scaling = _rope_dict(nested.get("sliding_attention"), c["rope_local_base_freq"],
                                                f"{where}: rope (sliding_attention)")
        return {"rope_theta": full_theta, "rope_scaling": full_scaling,
                "local_rope_theta": local_theta, "local_rope_scaling": local_scaling}
    if set(scaling) & {"full_attention", "sliding_attention"}:
        raise ConfigError(f"{where}: rope parameters per layer type are implemented for gemma3_text only")
    theta, scaling = _rope_dict(scaling, c["rope_theta"], f"{where}: rope_scaling")
    if not (isinstance(theta, float) and math.isfinite(theta) and theta > 0):
        raise ConfigError(f"{where}: rope_theta={theta!r}")
    return {"rope_theta": theta, "rope_scaling": scaling}


def config_to_hf(config):
    """config.json for transformers' class of the config's family, from our TransformerConfig; a
    ValueError names what that family's layout cannot express."""
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ValueError(f"save_pretrained: model_type {config.model_type!r} is not a family this package writes")
    problems = _inexpressible(config, family)
    if problems:
        raise ValueError(f"save_pretrained: {family.model_type}'s layout cannot express " + "; ".join(problems))
    hf = {"architectures": [family.architecture], "model_type": family.model_type,
          "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
          "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
          "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
          "head_dim": config.head_dim, "max_position_embeddings": config.max_position_embeddings,
          "rms_norm_eps": config.rms_norm_eps, "tie_word_embeddings": config.tie_word_embeddings,
          "initializer_range": config.initializer_range, "attention_dropout": 0.0, "torch_dtype": "float32",
          "pad_token_id": config.pad_token_id}
    act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[config.hidden_act]
    rope = {"rope_type": "default", **(config.rope_scaling or {}), "rope_theta": config.rope_theta}
    if family.model_type == "gemma3_text":
        local = {"rope_type": "default", **(config.local_rope_scaling or {}),
                 "rope_theta": config.local_rope_theta if config.local_rope_theta is not None else config.rope_theta}
        hf["rope_parameters"] = {"full_attention": rope, "sliding_attention": local}
    else:
        hf["rope_parameters"] = rope
    if family.model_type.startswith("gemma"):
        hf.update(hidden_activation=act, query_pre_attn_scalar=config.query_pre_attn_scalar or config.head_dim,
                  final_logit_softcapping=config.final_logit_softcap, attention_bias=config.qkv_bias,
                  layer_types=config.layer_types, sliding_window=config.sliding_window or 4096)
        if family.model_type == "gemma2":
            hf["attn_logit_softcapping"] = config.attn_logit_softcap
    else:
        hf["hidden_act"] = act
    if family.model_type in ("llama", "qwen3"):
        hf["attention_bias"] = config.qkv_bias
    if family.model_type == "llama":
        hf["mlp_bias"] = config.mlp_bias
    if family.model_type == "mistral":
        hf["sliding_window"] = config.sliding_window
    if family.model_type in ("qwen2", "qwen3"):
        sliding = config.sliding_window is not None
        first = config.layer_types.index("sliding_attention") if sliding else config.num_hidden_layers
        hf.update(use_sliding_window=sliding, sliding_window=config.sliding_window, layer_types=config.layer_types,
                  max_window_layers=first)
    return hf


def _inexpressible(config, family):
    """What the config switches on that the family's layout has no field for."""
    want = dict(qkv_bias=config.qkv_bias, o_bias=config.o_bias, mlp_bias=config.mlp_bias, qk_norm=config.qk_norm,
                norm_unit_offset=config.norm_unit_offset, sandwich_norms=config.sandwich_norms,
                embed_scale=config.embed_scale)
    free = {"llama": {"qkv_bias", "o_bias", "mlp_bias"}, "qwen3": {"qkv_bias", "o_bias"},
            "gemma2": {"qkv_bias", "o_bias"}, "gemma3_text": {"qkv_bias", "o_bias"}}.get(family.model_type, set())
    fixed = {k: family.changes.get(k, False) for k in want}
    problems = [f"{k}={v}" for k, v in want.items() if k not in free and v != fixed[k]]
    if "qkv_bias" in free and "o_bias" in free and config.qkv_bias != config.o_bias:
        problems.append(f"qkv_bias={config.qkv_bias} with o_bias={config.o_bias} (attention_bias sets both)")
    gemma = family.model_type.startswith("gemma")
    if not gemma:
        for name in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap", "local_rope_theta"):
            if getattr(config, name) is not None:
                problems.append(f"{name}={getattr(config, name)}")
        if config.hidden_act != "silu" and family.model_type != "llama":
            problems.append(f"hidden_act={config.hidden_act!r}")
    if family.model_type != "gemma3_text" and (config.local_rope_theta is not None or config.local_rope_scaling):
        problems.append("a separate RoPE for sliding layers")
    if family.model_type == "gemma3_text" and config.attn_logit_softcap is not None:
        problems.append(f"attn_logit_softcap={config.attn_logit_softcap} (transformers' Gemma 3 does not apply it)")
    sliding = [t == "sliding_attention" for t in config.layer_types]
    if family.model_type == "llama" and any(sliding):
        problems.append("sliding-window layers")
    if family.model_type == "mistral" and any(sliding) and not all(sliding):
        problems.append("sliding and full layers mixed (Mistral's window is on every layer)")
    if family.model_type in ("qwen2", "qwen3") and any(sliding):
        first = sliding.index(True)
        if not all(sliding[first:]):
            problems.append("full layers after the first sliding one (Qwen's sliding layers are the last ones)")
    return problems
