"""Training checkpoints: one safetensors file holding everything needed to resume exactly.

    tensors   model.<name>        the model's state_dict (weights, in float32)
              optim.<n>           every array of the optimizer's state (moments, momentum buffers)
    metadata  "tinygrad_llm"      JSON: format, step, model config, the optimizer state with its
                                  arrays replaced by references, RNG states, anything extra
              "crc32"             checksum of the tensor bytes: a flipped byte is refused too

Loading checks everything before trusting it: load_checkpoint refuses a damaged file or a
metadata field of the wrong type with one CheckpointError naming the file and the field, and
check_fits(ck, path, model, optimizer_state) names every way it does not fit a model and an
optimizer before anything is written into them.

One file means one atomic rename (safetensors.save_file writes a temporary file, fsyncs it and
renames it into place), so a crash during a save leaves the previous checkpoint whole. A file
that is truncated or corrupt is refused with a message that says so; nothing is unpickled.
"""
import json
import zlib

import numpy as np

from . import safetensors
from .files import JSONFileError, parse_json
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


MAX_DEPTH = 64  # optimizer state nests a few levels deep; far deeper is a damaged file


def decode_state(obj, tensors, where="optimizer", depth=0):
    """The structure encode_state wrote, with its arrays back; a CheckpointError naming the place
    (`where`, e.g. optimizer.state.3.exp_avg) for anything encode_state could not have written."""
    if depth > MAX_DEPTH:
        raise CheckpointError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(obj, dict):
        if "__array__" in obj:
            key = obj["__array__"]
            if len(obj) != 1 or not isinstance(key, str) or not key.startswith("optim.") or key not in tensors:
                raise CheckpointError(f"{where}: refers to tensor {key!r:.60}, which the file does not hold")
            return tensors[key]
        if "__tuple__" in obj:
            items = obj["__tuple__"]
            if len(obj) != 1 or not isinstance(items, list):
                raise CheckpointError(f"{where}: a tuple must be stored as a list, got {items!r:.60}")
            return tuple(decode_state(v, tensors, f"{where}.{i}", depth + 1) for i, v in enumerate(items))
        if "__items__" in obj:
            items = obj["__items__"]
            if len(obj) != 1 or not isinstance(items, list) or \
                    not all(isinstance(kv, list) and len(kv) == 2 for kv in items):
                raise CheckpointError(f"{where}: a mapping must be stored as [key, value] pairs")
            out = {}
            for k, v in items:
                key = _hashable(decode_state(k, tensors, f"{where}.<key>", depth + 1), where)
                if key in out:
                    raise CheckpointError(f"{where}: the key {key!r:.40} appears twice")
                out[key] = decode_state(v, tensors, f"{where}.{key}", depth + 1)
            return out
        return {k: decode_state(v, tensors, f"{where}.{k}", depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v, tensors, f"{where}.{i}", depth + 1) for i, v in enumerate(obj)]
    return obj


def _hashable(k, where="optimizer"):
    if isinstance(k, list):
        k = tuple(_hashable(v, where) for v in k)
    if not isinstance(k, (str, int, float, bool, tuple, type(None))):
        raise CheckpointError(f"{where}: a mapping key must be a number, string or tuple, got "
                              f"{type(k).__name__}")
    return k


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


def _metadata(path, metadata):
    """The checkpoint's own metadata ("tinygrad_llm"), each field checked."""
    if "tinygrad_llm" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a tinygrad_llm checkpoint "
                              "(no 'tinygrad_llm' metadata); for Hugging Face weights use GPT.from_safetensors")
    try:
        meta = parse_json(metadata["tinygrad_llm"], "its metadata")
    except JSONFileError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its metadata is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r:.60}; this code reads {FORMAT}")
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"checkpoint {path}: step must be a whole number >= 0, got {step!r:.60}")
    for field in ("config", "rng", "extra"):
        if not isinstance(meta.get(field), (dict, type(None))):
            raise CheckpointError(f"checkpoint {path}: {field} must be an object or null, got "
                                  f"{meta.get(field)!r:.60}")
    return meta


def load_checkpoint(path):
    """{"model": {name: array}, "optimizer", "step", "config", "rng", "extra"} from a checkpoint.

    Everything in the file is checked (the tensors against their checksum, every metadata field,
    the optimizer state's structure); a fault is one CheckpointError naming the file and the field.
    Whether it fits a given model and optimizer is check_fits's question.
    """
    try:
        tensors, metadata = safetensors.load_file(path)
    except SafetensorsError as e:
        raise CheckpointError(f"checkpoint {path} is unusable: {e}") from None
    if "tinygrad_llm" in metadata and metadata.get("crc32") != _crc(tensors):
        raise CheckpointError(f"checkpoint {path}: the tensor bytes do not match their checksum "
                              f"(stored {metadata.get('crc32')!r:.20}, computed {_crc(tensors)}); corrupt file")
    meta = _metadata(path, metadata)
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if not model:
        raise CheckpointError(f"checkpoint {path} holds no model tensors (model.*)")
    try:
        optim = decode_state(meta["optimizer"], tensors) if meta.get("optimizer") is not None else None
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    return {"model": model, "optimizer": optim, "step": meta["step"], "config": meta.get("config"),
            "rng": meta.get("rng"), "extra": meta.get("extra")}


def read_checkpoint_meta(path):
    """The step, model config, RNG states and extra of a checkpoint, from its header alone (no
    tensor is read): what `train --resume` compares with its flags before loading anything."""
    try:
        _, metadata, _, _ = safetensors.read_header(path)
    except SafetensorsError as e:
        raise CheckpointError(f"checkpoint {path} is unusable: {e}") from None
    meta = _metadata(path, metadata)
    return {k: meta.get(k) for k in ("step", "config", "rng", "extra")}


# --------------------------------------------------------------------------- does it fit?
def check_fits(ck, path, model=None, optimizer_state=None):
    """Raise one CheckpointError naming every misfit unless checkpoint ck (from load_checkpoint)
    fits `model` (the same state names, shapes and dtypes) and
    `optimizer_state` (a state_dict() of the optimizer it will load into: the same structure,
    arrays of the same shapes and dtypes, numbers where it has numbers, the same parameter
    numbering). Nothing is written: call it before loading anything, so a misfit leaves the
    model and optimizer as they were.
    """
    problems = []
    if model is not None:
        own = model.state_dict()
        saved = ck["model"]
        missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        if missing:
            problems.append(f"model tensors missing: {missing[:6]}")
        if unexpected:
            problems.append(f"model tensors unexpected: {unexpected[:6]}")
        for name in sorted(set(own) & set(saved)):
            a, b = saved[name], _as_array(own[name])
            if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
                problems.append(f"model.{name} is {a.dtype} {tuple(a.shape)}, the model's {b.dtype} {tuple(b.shape)}")
    if optimizer_state is not None:
        if ck["optimizer"] is None:
            problems.append("it holds no optimizer state")
        else:
            _misfits(ck["optimizer"], optimizer_state, "optimizer", problems)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"checkpoint {path} does not fit this run: {shown}")


def _kind(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float, np.number)):
        return "number"
    return type(v).__name__


def _misfits(saved, live, where, problems):
    """Append to problems each place where saved does not have live's structure."""
    if len(problems) > 64:
        return
    if _is_array(live):
        live = _as_array(live)
        if not isinstance(saved, np.ndarray):
            problems.append(f"{where} is {_kind(saved)}, expected an array {tuple(live.shape)}")
        elif saved.shape != live.shape or saved.dtype != live.dtype:
            problems.append(f"{where} is {saved.dtype} {tuple(saved.shape)}, expected {live.dtype} {tuple(live.shape)}")
    elif isinstance(live, dict):
        if not isinstance(saved, dict):
            problems.append(f"{where} is {_kind(saved)}, expected a mapping")
            return
        for k in live:
            if k not in saved and (_is_array(live[k]) or isinstance(live[k], (dict, list, tuple))):
                problems.append(f"{where}.{k} is missing")
            elif k in saved:
                _misfits(saved[k], live[k], f"{where}.{k}", problems)
        for k in saved:
            if k not in live:
                problems.append(f"{where}.{k} is unexpected")
    elif isinstance(live, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(live):
            problems.append(f"{where} is {_kind(saved)} {len(saved) if isinstance(saved, (list, tuple)) else ''}"
                            f", expected {len(live)} items")
            return
        numbering = where.endswith(".params")  # which state entry is which parameter
        for i, (a, b) in enumerate(zip(saved, live)):
            if numbering and a != b:
                problems.append(f"{where}.{i} numbers parameter {a!r:.20}, expected {b!r}")
            else:
                _misfits(a, b, f"{where}.{i}", problems)
    elif live is not None and not _same_kind(saved, live, count=where.endswith(".step")):
        problems.append(f"{where} is {_kind(saved)} {saved!r:.40}, expected "
                        f"{'a whole number' if where.endswith('.step') else 'a finite ' + _kind(live)}")


def _same_kind(saved, live, count=False):
    """A scalar that can stand where live stands: a whole number >= 0 for a step count, a finite
    number for a number (a rate), the same type otherwise."""
    if count:
        return isinstance(saved, (int, np.integer)) and not isinstance(saved, bool) and saved >= 0
    if _kind(live) == "number":
        return _kind(saved) == "number" and bool(np.isfinite(saved))
    return _kind(saved) == _kind(live)
