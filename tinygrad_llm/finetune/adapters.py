"""LoRA adapters on their own: a small safetensors file with lora_A and lora_B of every adapted
layer, and in its metadata the rank, alpha and layer names needed to put them back.

    save_adapters(model, "adapters.safetensors")     # megabytes, not the model's gigabyte
    load_adapters(GPT.from_safetensors("gpt2"), "adapters.safetensors")
"""
import json

from .. import nn, safetensors

KEY = "tinygrad_llm.lora"


def save_adapters(model, path):
    layers = nn.lora_layers(model)
    if not layers:
        raise ValueError("save_adapters: the model has no LoRA layers (nn.apply_lora first)")
    ranks = {(m.rank, m.alpha) for _, m in layers}
    if len(ranks) != 1:
        raise ValueError(f"save_adapters: layers with different (rank, alpha) {sorted(ranks)} are not supported")
    (rank, alpha), = ranks
    meta = {"rank": rank, "alpha": alpha, "layers": [n for n, _ in layers]}
    return safetensors.save_file(nn.lora_state_dict(model), path, metadata={KEY: json.dumps(meta)})


def load_adapters(model, path):
    """Load adapters saved by save_adapters into model; layers that are plain Linears yet are
    wrapped first (with the saved rank and alpha, the rest of the model frozen)."""
    tensors, metadata = safetensors.load_file(path)
    if KEY not in metadata:
        raise ValueError(f"{path}: not a LoRA adapter file (no {KEY!r} metadata)")
    meta = json.loads(metadata[KEY])
    have = dict(nn.lora_layers(model))
    modules = dict(model.named_modules())
    absent = [n for n in meta["layers"] if n not in modules]
    if absent:
        raise ValueError(f"{path}: the adapter file targets layers this model lacks: {absent[:4]}")
    todo = [n for n in meta["layers"] if n not in have]
    if todo:
        nn.apply_lora(model, meta["rank"], meta["alpha"], targets=tuple(todo))
    model.load_state_dict(tensors, strict=False)
    missing = sorted(set(nn.lora_state_dict(model)) - set(tensors))
    if missing:
        raise ValueError(f"{path}: no adapter weights for {missing[:4]}")
    return model
