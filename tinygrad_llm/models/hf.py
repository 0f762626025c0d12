"""Hugging Face GPT-2 checkpoints (config.json + model.safetensors): loading into our GPT, and
writing our GPT back out so `transformers.GPT2LMHeadModel.from_pretrained(dir)` reads it.

What differs from our layout, and how each difference is met:
  - HF's Conv1D stores c_attn, c_proj and c_fc weights as (in, out); ours are (out, in) like
    nn.Linear, so those four matrices are transposed on the way in and on the way out.
  - The original gpt2 files name keys "h.0.attn..." with no "transformer." prefix;
    save_pretrained writes "transformer.h.0.attn...". Both are accepted.
  - lm_head.weight is usually absent (it is tied to wte); when present it must equal wte.
  - Older files carry attn.bias (the causal mask) and attn.masked_bias: buffers, not weights,
    which our attention does not need; they are skipped.

Nothing from the folder is trusted: config.json is read field by field (config_fields.py), and
the weights file's header must hold exactly the tensors that config describes, each of its shape
and a float dtype, before the model is allocated or a parameter written (gpt2_shapes).

Loading is memory-mapped: the model is built without initialising its weights, then each tensor
of the file is copied once, straight from the mapped pages into its parameter (transposed and
converted from F16/BF16 on the way), and its pages are released. Peak memory is the model plus
the pages of one tensor, not the model plus a second copy of the file.
"""
import json
from pathlib import Path

import numpy as np

from .. import safetensors
from ..files import atomic_write_text
from .config_fields import ConfigError, boolean, one_of, positive_float, positive_int, read_config

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
SKIPPED = (".attn.bias", ".attn.masked_bias")  # the dot: "c_attn.bias" is a real weight
GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu")  # our F.gelu(approximate="tanh") is gelu_new


def _config_from_hf(hf, GPTConfig, path="config.json"):
    """Our GPTConfig from a GPT-2 config.json, each field checked (config_fields: one error naming
    the file and the field)."""
    one_of(hf, "activation_function", GELU_NAMES, path, default="gelu_new")
    n_embd = positive_int(hf, "n_embd", path)
    block = positive_int(hf, "n_positions", path) if hf.get("n_positions") is not None else \
        positive_int(hf, "n_ctx", path, default=1024)  # older files name it n_ctx
    try:
        return GPTConfig(vocab_size=positive_int(hf, "vocab_size", path), block_size=block,
                         n_layer=positive_int(hf, "n_layer", path), n_head=positive_int(hf, "n_head", path),
                         n_embd=n_embd, mlp_hidden=positive_int(hf, "n_inner", path, default=4 * n_embd),
                         norm_eps=positive_float(hf, "layer_norm_epsilon", path, default=1e-5), bias=True,
                         dropout=0.0, tie_weights=boolean(hf, "tie_word_embeddings", path, default=True))
    except ConfigError:
        raise
    except ValueError as e:  # GPTConfig's own checks (n_embd a multiple of n_head, ...)
        raise ConfigError(f"{path}: {e}") from None


BLOCK_TENSORS = 12  # per transformer block: ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj


def gpt2_tensor_count(config):
    """How many tensors gpt2_shapes(config) names: compared with the file's count first, so a
    config that claims 2^40 layers is refused before its names are listed."""
    return 4 + BLOCK_TENSORS * config.n_layer + (0 if config.tie_weights else 1)


def gpt2_shapes(config):
    """Our parameter name -> the shape GPT-2's safetensors file stores it in (Conv1D matrices as
    (in, out)), from the config alone: what a file must hold before a model is allocated for it."""
    C, H, V = config.n_embd, config.mlp_hidden, config.vocab_size
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (config.block_size, C),
              "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)}
    block = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
             "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
             "mlp.c_fc.weight": (C, H), "mlp.c_fc.bias": (H,), "mlp.c_proj.weight": (H, C), "mlp.c_proj.bias": (C,)}
    for i in range(config.n_layer):
        shapes.update({f"transformer.h.{i}.{k}": v for k, v in block.items()})
    if not config.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    return shapes


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def _check_file_fits(f, names, weights, config):
    """Every tensor the config asks for is in the file, nothing else, each of the right shape and a
    float dtype: checked on the header alone, before a model is allocated or a parameter written."""
    if gpt2_tensor_count(config) > 2 * len(names) + BLOCK_TENSORS:  # far off: do not even list them
        raise ValueError(f"{weights} holds {len(names)} tensors, but GPT-2 {config.n_layer} layers / "
                         f"{config.n_embd} wide (its config.json) has {gpt2_tensor_count(config)}")
    expected = gpt2_shapes(config)
    missing, unexpected = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
    wrong = [f"{names[n]} is {f.dtype(names[n])} {list(f.shape(names[n]))}, expected a float "
             f"{list(expected[n])}" for n in sorted(set(names) & set(expected))
             if f.shape(names[n]) != expected[n] or f.dtype(names[n]) not in FLOAT_DTYPES]
    if missing or unexpected or wrong:
        raise ValueError(f"{weights} does not fit GPT-2 {config.n_layer} layers / {config.n_embd} wide "
                         f"(its config.json): missing {missing[:6]}, unexpected {unexpected[:6]}, "
                         f"wrong {wrong[:4]}")
    return expected


def _our_name(key):
    """HF key -> our parameter name, or None for the buffers we skip."""
    name = key[len("transformer."):] if key.startswith("transformer.") else key
    if name.endswith(SKIPPED):
        return None
    return name if name == "lm_head.weight" else "transformer." + name


def _paths(path):
    path = Path(path)
    directory, weights = (path, path / "model.safetensors") if path.is_dir() else (path.parent, path)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: a Hugging Face GPT-2 directory holds "
                                "config.json and model.safetensors")
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found (only safetensors weights are read: "
                                "pytorch_model.bin is a pickle and is never loaded)")
    return config_path, weights


def load_hf_gpt2(cls, path, dtype=None):
    config_path, weights = _paths(path)
    config = _config_from_hf(read_config(config_path), cls.config_class, config_path)
    with safetensors.open_mapped(weights) as f:
        names = {}  # our name -> HF key
        for key in f.keys():
            name = _our_name(key)
            if name is not None:
                names[name] = key
        tied = config.tie_weights
        head_key = names.pop("lm_head.weight") if tied and "lm_head.weight" in names else None
        expected = _check_file_fits(f, names, weights, config)
        if head_key is not None:
            head, wte = f.view(head_key), f.view(names["transformer.wte.weight"])
            if head.shape != wte.shape or head.dtype != wte.dtype or not np.array_equal(head, wte):
                raise ValueError(f"{weights}: lm_head.weight differs from wte.weight, but GPT-2 ties them")
            del head, wte  # views into the mapping: drop them so it can close
        model = cls(config, dtype=dtype, init=False)
        params = dict(model.named_parameters())  # tied: lm_head.weight is wte's, listed once
        if set(params) != set(expected):  # gpt2_shapes must describe the model GPT builds
            raise RuntimeError(f"gpt2_shapes disagrees with the model: {sorted(set(params) ^ set(expected))[:6]}")
        for name, key in names.items():
            f.copy_into(params[name].data, key, transpose=name.endswith(CONV1D))
            f.release(key)
    return model


def to_hf_state(state_dict):
    """Our state dict -> HF's naming and Conv1D layout (the inverse of what load_hf_gpt2 copies in)."""
    out = {}
    for name, arr in state_dict.items():
        if name == "lm_head.weight":
            continue
        arr = np.asarray(arr)
        out[name] = np.ascontiguousarray(arr.T) if name.endswith(CONV1D) else arr
    return out


# ------------------------------------------------------------------------------------------ export
def check_exportable(config):
    """Raise a ValueError naming every option GPT-2's layout cannot express."""
    problems = []
    if config.pos != "learned":
        problems.append(f"pos={config.pos!r} (GPT-2 learns absolute positions: pos='learned')")
    if config.norm != "layernorm":
        problems.append(f"norm={config.norm!r} (GPT-2 uses LayerNorm: norm='layernorm')")
    if config.mlp != "gelu":
        problems.append(f"mlp={config.mlp!r} (GPT-2's MLP is one GELU layer: mlp='gelu')")
    if config.n_kv_head != config.n_head:
        problems.append(f"n_kv_head={config.n_kv_head} with n_head={config.n_head} (grouped-query "
                        "attention; GPT-2 has one k/v head per query head)")
    if problems:
        raise ValueError("save_pretrained: Hugging Face's GPT-2 layout cannot express " + "; ".join(problems))


def hf_config(config):
    """config.json for transformers' GPT2LMHeadModel, from our GPTConfig."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
            "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
            "n_inner": config.mlp_hidden, "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps, "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout, "attn_pdrop": 0.0,  # our fused attention has no dropout
            "tie_word_embeddings": config.tie_weights, "torch_dtype": "float32"}


def save(model, directory):
    """Write model (our GPT) as a Hugging Face GPT-2 directory: config.json + model.safetensors.

    GPT-2 always has biases: a model built with bias=False gets zero biases, which compute the
    same thing. A model with LoRA adapters must merge them first (nn.merge_lora): GPT-2's layout
    has no place for them.
    """
    config = model.config
    check_exportable(config)
    state = model.state_dict()
    adapters = [k for k in state if ".lora_" in k]
    if adapters and not all(getattr(m, "merged", True) for m in model.modules()):
        raise ValueError(f"save_pretrained: the model has unmerged LoRA adapters ({adapters[0]}, ...); "
                         "call nn.merge_lora(model) first, or save them alone with save_adapters")
    state = {k: v for k, v in state.items() if ".lora_" not in k}
    if not config.bias:  # fill the slots GPT-2 has with zeros
        C = config.n_embd
        widths = {"attn.c_attn.bias": 3 * C, "attn.c_proj.bias": C, "mlp.c_fc.bias": config.mlp_hidden,
                  "mlp.c_proj.bias": C, "ln_1.bias": C, "ln_2.bias": C}
        for i in range(config.n_layer):
            for suffix, n in widths.items():
                state.setdefault(f"transformer.h.{i}.{suffix}", np.zeros(n, np.float32))
        state.setdefault("transformer.ln_f.bias", np.zeros(C, np.float32))
    tensors = to_hf_state(state)
    if not config.tie_weights:
        tensors["lm_head.weight"] = state["lm_head.weight"]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    atomic_write_text(directory / "config.json", json.dumps(hf_config(config), indent=2) + "\n")
    return directory
