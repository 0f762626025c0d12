"""Hugging Face folders in: from_pretrained(folder) for every family of families.py (and gpt2,
which loads into GPT). export.py writes them back out.

A folder holds config.json and either model.safetensors or model.safetensors.index.json with the
shards it names. Loading is memory-mapped (safetensors.open_mapped): the model is built without
initialising its weights, then each tensor is copied once, straight from the mapped pages into its
parameter (F16/BF16 converted on the way), and its pages are handed back. Peak memory is the model
plus a few MiB, not the model plus a second copy of the file.

Our parameter names are Hugging Face's, so the name map is the identity; what loading checks is
that the file's tensors and the model's parameters are the same set with the same shapes. Buffers
some older checkpoints carry (rotary_emb.inv_freq) are recomputed, not read. Nothing in the folder
is executed: only JSON and safetensors files are read (never pytorch_model.bin, a pickle).
"""
import json
from pathlib import Path

import numpy as np

from .. import safetensors
from .families import ConfigError, config_from_hf, family_of
from .transformer import Transformer

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers, recomputed from the config
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


class CheckpointMismatch(ValueError):
    """The folder's tensors do not fit the model its config.json describes."""


def read_config(folder):
    """config.json of a folder, parsed, or a clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (a Hugging Face model folder holds config.json "
                                "and model.safetensors)")
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Hugging Face model folder holds config.json")
    try:
        hf = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{path}: a JSON {type(hf).__name__}, not an object")
    return hf


def from_pretrained(folder, dtype=None):
    """The model in a Hugging Face folder: GPT for gpt2, Transformer for the families of
    families.py. dtype: the parameters' dtype (default float32; the file's F16/BF16 converted)."""
    folder = Path(folder)
    hf = read_config(folder)
    where = str(folder / "config.json")
    if family_of(hf, where) is None:
        from .gpt import GPT
        return GPT.from_safetensors(folder, dtype=dtype)
    config = config_from_hf(hf, where)
    shards = weight_files(folder)
    model = Transformer(config, dtype=dtype, init=False)
    load_weights(model, shards)
    return model


def weight_files(folder):
    """[(shard path, [tensor names])]: model.safetensors, or the shards model.safetensors.index.json
    names (each a file in the folder, every tensor in exactly one)."""
    folder = Path(folder)
    if (folder / SINGLE).is_file():
        path = folder / SINGLE
        return [(path, list(safetensors.read_header(path)[0]))]
    index = folder / INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{folder}: neither {SINGLE} nor {INDEX} (only safetensors weights are read; "
                                "pytorch_model.bin is a pickle and is never loaded)")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointMismatch(f"{index}: not a safetensors index with a weight_map ({e!r})") from None
    if not isinstance(weight_map, dict):
        raise CheckpointMismatch(f"{index}: weight_map must map tensor names to shard files")
    shards = {}
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file or not file.endswith(".safetensors"):
            raise CheckpointMismatch(f"{index}: tensor {name!r} points at {file!r}; shards must be "
                                     ".safetensors files in the folder itself")
        shards.setdefault(file, []).append(name)
    out = []
    for file, names in sorted(shards.items()):
        path = folder / file
        if not path.is_file():
            raise FileNotFoundError(f"{index} names {file}, which is not in {folder}")
        held = set(safetensors.read_header(path)[0])
        absent = sorted(set(names) - held)
        if absent:
            raise CheckpointMismatch(f"{index} puts {absent[:4]} in {file}, which does not hold them")
        out.append((path, names))
    return out


def load_weights(model, shards):
    """Copy every tensor of the shards into model's parameter of the same name (one copy each)."""
    params = dict(model.named_parameters())  # tied: lm_head.weight is embed_tokens', listed once
    tied = model.config.tie_word_embeddings
    found = {}
    for path, names in shards:
        for name in names:
            if name.endswith(SKIPPED_SUFFIXES):
                continue
            if name in found:
                raise CheckpointMismatch(f"tensor {name!r} is in both {found[name]} and {path.name}")
            found[name] = path.name
    head_in_file = tied and "lm_head.weight" in found
    want = set(params) | ({"lm_head.weight"} if head_in_file else set())
    missing, extra = sorted(want - set(found)), sorted(set(found) - want)
    if missing or extra:
        raise CheckpointMismatch(
            f"the weights do not fit the {model.config.model_type} model config.json describes "
            f"({model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}): "
            f"missing {len(missing)} {missing[:4]}, unexpected {len(extra)} {extra[:4]}")
    for path, names in shards:
        with safetensors.open_mapped(path) as f:
            for name in names:
                if name.endswith(SKIPPED_SUFFIXES):
                    continue
                if f.dtype(name) not in FLOAT_DTYPES:
                    raise CheckpointMismatch(f"{path.name}: tensor {name!r} is {f.dtype(name)}, not a float")
                if name == "lm_head.weight" and tied:
                    continue  # compared with embed_tokens below
                try:
                    f.copy_into(params[name].data, name)
                except ValueError as e:
                    raise CheckpointMismatch(f"{e} (parameter {name})") from None
    if head_in_file:  # some tied checkpoints store the head too: it must be the embedding itself
        _check_tied_head(model, shards, found)
    return model


def _check_tied_head(model, shards, found):
    path = next(p for p, names in shards if p.name == found["lm_head.weight"])
    embed = model.model.embed_tokens.weight.data
    with safetensors.open_mapped(path) as f:
        if f.shape("lm_head.weight") != tuple(embed.shape):
            raise CheckpointMismatch(f"lm_head.weight has shape {f.shape('lm_head.weight')}, the tied "
                                     f"embedding {tuple(embed.shape)}")
        head = np.empty(embed.shape, dtype=embed.dtype)
        f.copy_into(head, "lm_head.weight")
    if not np.array_equal(head, np.asarray(embed)):
        raise CheckpointMismatch("lm_head.weight differs from model.embed_tokens.weight, but "
                                 "tie_word_embeddings is true (they are one matrix)")
