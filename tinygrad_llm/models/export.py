"""Hugging Face folders out: a Transformer saved in its family's own layout (config.json from
families.config_to_hf, model.safetensors in float32), which transformers.AutoModelForCausalLM and
models.from_pretrained both load."""
import json
from pathlib import Path

import numpy as np

from .. import backend, safetensors
from ..files import atomic_write_text
from .families import config_to_hf

SINGLE = "model.safetensors"


def save_pretrained(model, directory):
    """Write config.json and model.safetensors (float32) in the family's Hugging Face layout. A model
    with LoRA adapters must merge them first (nn.merge_lora): the layout has no place for them."""
    hf = config_to_hf(model.config)
    params = dict(model.named_parameters(remove_duplicate=False))
    adapters = [k for k in params if ".lora_" in k]
    if adapters and not all(getattr(m, "merged", True) for m in model.modules()):
        raise ValueError(f"save_pretrained: the model has unmerged LoRA adapters ({adapters[0]}, ...); "
                         "call nn.merge_lora(model) first, or save them alone with save_adapters")
    if model.config.tie_word_embeddings:
        params.pop("lm_head.weight", None)  # one matrix, stored once as the embedding
    # the parameters' own arrays (float32 ones are written as they are: no copy of the model)
    tensors = {k: np.asarray(backend.to_numpy(p.data), dtype=np.float32) for k, p in params.items()
               if ".lora_" not in k}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.save_file(tensors, directory / SINGLE, metadata={"format": "pt"})
    atomic_write_text(directory / "config.json", json.dumps(hf, indent=2) + "\n")
    return directory
