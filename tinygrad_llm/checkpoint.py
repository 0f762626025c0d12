"""Training checkpoints: one safetensors file holding everything needed to resume exactly.

    tensors   model.<name>        the model's state_dict (weights, in float32)
              optim.<n>           every array of the optimizer's state (moments, momentum buffers)
    metadata  "tinygrad_llm"      JSON: format, step, model config, the optimizer state with its
                                  arrays replaced by references, RNG states, anything extra
              "crc32"             checksum of the tensor bytes: a flipped byte is refused too

One file means one atomic rename (safetensors.save_file writes a temporary file, fsyncs it and
renames it into place), so a crash during a save leaves the previous checkpoint whole. A file
that is truncated or corrupt is refused with a message that says so; nothing is unpickled.
"""
import json
import zlib

import numpy as np

from . import safetensors
from .safetensors import SafetensorsError

FORMAT = "tinygrad_llm.checkpoint/1"


class CheckpointError(SafetensorsError):
    """A checkpoint cannot be used: truncated, corrupt, or not one of ours."""


def _as_array(x):
    data = getattr(x, "data", x)  # a Tensor or Parameter holds its array in .data
    return data.get() if hasattr(data, "get") and not isinstance(data, np.ndarray) else np.asarray(data)


def _is_array(x):
    return isinstance(x, np.ndarray) or (hasattr(x, "data") and hasattr(x, "shape")
                                          and not isinstance(x, (dict, list, tuple)))


def encode_state(obj, tensors, prefix="optim."):
    """A JSON-able copy of obj with every array moved into tensors under a fresh name.

    Dicts with non-string keys (optimizer state keyed by parameter index) and tuples are tagged,
    so decode_state gives back exactly the structure that went in.
    """
    if _is_array(obj) and not isinstance(obj, (np.generic,)):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = _as_array(obj)
        return {"__array__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__array__" not in obj and "__items__" not in obj:
            return {k: encode_state(v, tensors, prefix) for k, v in obj.items()}
        return {"__items__": [[encode_state(k, tensors, prefix), encode_state(v, tensors, prefix)]
                              for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} ({obj!r:.80}) in optimizer state")


def decode_state(obj, tensors):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return tensors[obj["__array__"]]
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_hashable(decode_state(k, tensors)): decode_state(v, tensors) for k, v in obj["__items__"]}
        return {k: decode_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    return obj


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


def _crc(tensors):
    crc = 0
    for name in sorted(tensors):  # the order serialize() lays them out in
        crc = zlib.crc32(np.ascontiguousarray(tensors[name]).tobytes(), crc)
    return f"{crc:08x}"


def save_checkpoint(path, model_state, optimizer_state=None, step=0, config=None, rng=None, extra=None):
    """Write a checkpoint atomically. model_state: {name: array or Tensor} (a state_dict)."""
    tensors = {f"model.{k}": _as_array(v) for k, v in model_state.items()}
    optim = encode_state(optimizer_state, tensors) if optimizer_state is not None else None
    meta = {"format": FORMAT, "step": int(step), "config": config, "optimizer": optim,
            "rng": rng, "extra": extra}
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint: config/rng/extra must be JSON-serialisable ({e})") from None
    return safetensors.save_file(tensors, path, metadata={"tinygrad_llm": meta_json, "crc32": _crc(tensors)})


def load_checkpoint(path):
    """{"model": {name: array}, "optimizer", "step", "config", "rng", "extra"} from a checkpoint."""
    try:
        tensors, metadata = safetensors.load_file(path)
    except SafetensorsError as e:
        raise CheckpointError(f"checkpoint {path} is unusable: {e}") from None
    if "tinygrad_llm" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a tinygrad_llm checkpoint "
                              "(no 'tinygrad_llm' metadata); for Hugging Face weights use GPT.from_safetensors")
    if metadata.get("crc32") != _crc(tensors):
        raise CheckpointError(f"checkpoint {path}: the tensor bytes do not match their checksum "
                              f"(stored {metadata.get('crc32')}, computed {_crc(tensors)}); corrupt file")
    try:
        meta = json.loads(metadata["tinygrad_llm"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path}: metadata is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}; this code reads {FORMAT}")
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optim = decode_state(meta["optimizer"], tensors) if meta.get("optimizer") is not None else None
    return {"model": model, "optimizer": optim, "step": meta["step"], "config": meta.get("config"),
            "rng": meta.get("rng"), "extra": meta.get("extra")}


def read_checkpoint_meta(path):
    """The step, model config, RNG states and extra of a checkpoint, from its header alone (no
    tensor is read): what `train --resume` compares with its flags before loading anything."""
    try:
        _, metadata, _, _ = safetensors.read_header(path)
        meta = json.loads(metadata["tinygrad_llm"])
    except SafetensorsError as e:
        raise CheckpointError(f"checkpoint {path} is unusable: {e}") from None
    except KeyError:
        raise CheckpointError(f"{path} is a safetensors file but not a tinygrad_llm checkpoint") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path}: metadata is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}; this code reads {FORMAT}")
    return {k: meta.get(k) for k in ("step", "config", "rng", "extra")}
