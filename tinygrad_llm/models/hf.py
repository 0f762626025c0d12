"""Loading Hugging Face GPT-2 checkpoints (config.json + model.safetensors) into our GPT.

What differs from our layout, and how each difference is met:
  - HF's Conv1D stores c_attn, c_proj and c_fc weights as (in, out); ours are (out, in) like
    nn.Linear, so those four matrices are transposed on the way in.
  - The original gpt2 files name keys "h.0.attn..." with no "transformer." prefix;
    save_pretrained writes "transformer.h.0.attn...". Both are accepted.
  - lm_head.weight is usually absent (it is tied to wte); when present it must equal wte.
  - Older files carry attn.bias (the causal mask) and attn.masked_bias: buffers, not weights,
    which our attention does not need; they are skipped.
"""
import json
from pathlib import Path

import numpy as np

from .. import safetensors

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
SKIPPED = (".attn.bias", ".attn.masked_bias")  # the dot: "c_attn.bias" is a real weight


def _config_from_hf(hf, GPTConfig):
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        raise ValueError(f"config.json: activation_function {act!r} is not a GELU this model has")
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                     mlp_hidden=hf.get("n_inner") or 4 * hf["n_embd"],
                     norm_eps=hf.get("layer_norm_epsilon", 1e-5), bias=True, dropout=0.0)


def hf_state_to_ours(tensors):
    """HF GPT-2 tensor names/layouts -> our state dict (float32 arrays, GPT-2 names)."""
    out = {}
    for key, arr in tensors.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if name.endswith(SKIPPED):
            continue
        if name.endswith(CONV1D):
            arr = arr.T  # Conv1D (in, out) -> Linear (out, in)
        arr = np.ascontiguousarray(arr, dtype=np.float32)  # F16/BF16 files widen to float32
        out[name if name == "lm_head.weight" else "transformer." + name] = arr
    return out


def load_hf_gpt2(cls, path, dtype=None):
    path = Path(path)
    directory, weights = (path, path / "model.safetensors") if path.is_dir() else (path.parent, path)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: a Hugging Face GPT-2 directory holds "
                                "config.json and model.safetensors")
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found (only safetensors weights are read: "
                                "pytorch_model.bin is a pickle and is never loaded)")
    config = _config_from_hf(json.loads(config_path.read_text()), cls.config_class)
    tensors, _ = safetensors.load_file(weights)
    state = hf_state_to_ours(tensors)
    lm_head = state.pop("lm_head.weight", None)
    if lm_head is not None and not np.array_equal(lm_head, state.get("transformer.wte.weight")):
        raise ValueError(f"{weights}: lm_head.weight differs from wte.weight, but GPT-2 ties them")
    model = cls(config, dtype=dtype)
    own = set(model.state_dict())
    expected = {k for k in own if k != "lm_head.weight"}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit GPT-2 {config.n_layer} layers / {config.n_embd} wide: "
                         f"missing {missing[:6]}, unexpected {unexpected[:6]}")
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state)
    return model


def to_hf_state(state_dict):
    """Our state dict -> HF's naming and Conv1D layout (the inverse of hf_state_to_ours)."""
    out = {}
    for name, arr in state_dict.items():
        if name == "lm_head.weight":
            continue
        arr = np.asarray(arr)
        out[name] = np.ascontiguousarray(arr.T) if name.endswith(CONV1D) else arr
    return out
