"""Hostile training checkpoints (checkpoint.py): damaged bytes, every metadata field of the wrong
type or missing, optimizer state whose structure, shapes or numbering were changed, and state
from another model or optimizer. load_checkpoint ends in one CheckpointError naming the file and
the field; check_fits names every misfit before anything is written, so a checkpoint it passes
loads into the model and the optimizer without an error."""
import json

import numpy as np
import pytest
from fuzz_helpers import byte_mutations, json_mutations, json_text, refused_cleanly, scratch_dir
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_llm as tl
from tinygrad_llm import optim, safetensors
from tinygrad_llm.checkpoint import (CheckpointError, _crc, check_fits, load_checkpoint,
                                     read_checkpoint_meta, save_checkpoint)
from tinygrad_llm.models import GPT, GPTConfig

FUZZ = settings(max_examples=40, deadline=None)
TINY = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)


def trained(optimizer="adamw", steps=1, **kw):
    """A tiny model and its optimizer after `steps` steps (one: every state array is non-zero)."""
    tl.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, **kw}))
    opt = optim.AdamW(model.parameters(), lr=1e-2) if optimizer == "adamw" else \
        optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    for _ in range(steps):
        x = np.random.default_rng(0).integers(0, 11, (2, 8))
        model(x, x)[1].backward()
        opt.step()
    return model, opt


MODEL, OPT = trained()
with scratch_dir() as _d:
    save_checkpoint(_d / "ck.safetensors", MODEL.state_dict(), OPT.state_dict(), step=1,
                    config=MODEL.config.to_dict(), rng={"global": tl.get_rng_state()}, extra={"elapsed_s": 1.0})
    VALID_BYTES = (_d / "ck.safetensors").read_bytes()
    TENSORS, METADATA = safetensors.load_file(_d / "ck.safetensors")
META = json.loads(METADATA["tinygrad_llm"])


def write(path, tensors=TENSORS, meta=META, crc=None):
    """A checkpoint with these tensors and metadata, its checksum recomputed (so the damage reaches
    the checks behind it) unless crc is given."""
    safetensors.save_file(tensors, path, metadata={"tinygrad_llm": json_text(meta),
                                                  "crc32": _crc(tensors) if crc is None else crc})


def fresh():
    return trained(steps=0)  # the same shapes as MODEL, OPT: what a resumed run builds


def load_and_fit(path):
    """What a resume must do: read, check it fits, and only then load (which must then succeed)."""
    ck = load_checkpoint(path)
    model, opt = fresh()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    try:
        check_fits(ck, path, model, opt.state_dict())
    except CheckpointError:
        for k, v in model.state_dict().items():  # nothing was written
            np.testing.assert_array_equal(v, before[k])
        raise
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    return ck


def check(path):
    return refused_cleanly(lambda: load_and_fit(path), names=[path], errors=(CheckpointError,))


@FUZZ
@given(data=byte_mutations(VALID_BYTES))
def test_damaged_bytes_are_refused_by_name(data):
    with scratch_dir() as d:
        (d / "ck.safetensors").write_bytes(data)
        status, ck = check(d / "ck.safetensors")
        if status == "ok":  # the damage missed everything that matters (padding, ...)
            for k, v in ck["model"].items():
                np.testing.assert_array_equal(v, TENSORS["model." + k])


@FUZZ
@given(meta=json_mutations(META))
def test_damaged_metadata_is_refused_by_name(meta):
    with scratch_dir() as d:
        write(d / "ck.safetensors", meta=meta)
        check(d / "ck.safetensors")
        refused_cleanly(lambda: read_checkpoint_meta(d / "ck.safetensors"), names=[d / "ck.safetensors"],
                        errors=(CheckpointError,))


@FUZZ
@given(name=st.sampled_from(sorted(TENSORS)), change=st.sampled_from(["drop", "shape", "dtype", "rename"]))
def test_a_changed_tensor_is_refused_before_anything_is_loaded(name, change):
    tensors = dict(TENSORS)
    if change == "drop":
        del tensors[name]
    elif change == "shape":
        tensors[name] = np.zeros(tensors[name].size + 1, tensors[name].dtype)
    elif change == "dtype":
        tensors[name] = tensors[name].astype(np.float64)
    else:
        tensors[name + ".x"] = tensors.pop(name)
    with scratch_dir() as d:
        write(d / "ck.safetensors", tensors=tensors)
        status, _ = check(d / "ck.safetensors")
        assert status == "refused", f"{change} {name} was not noticed"


@pytest.mark.parametrize("meta_change, fault", [
    ({"step": -1}, "step must be a whole number"),
    ({"step": "1"}, "step must be a whole number"),
    ({"step": None}, "step must be a whole number"),
    ({"format": "tinygrad_llm.checkpoint/0"}, "has format"),
    ({"config": [1]}, "config must be an object"),
    ({"rng": "x"}, "rng must be an object"),
])
def test_each_metadata_fault_is_named(meta_change, fault):
    with scratch_dir() as d:
        write(d / "ck.safetensors", meta={**META, **meta_change})
        status, error = check(d / "ck.safetensors")
        assert status == "refused" and fault in str(error), error


def _optimizer(meta, fn):
    meta = json.loads(json.dumps(meta))
    fn(meta["optimizer"])
    return meta


@pytest.mark.parametrize("damage, fault", [
    (lambda o: o["state"]["__items__"][0][1].update({"exp_avg": {"__array__": "optim.999"}}),
     "which the file does not hold"),
    (lambda o: o["state"]["__items__"][0][1].update({"exp_avg": {"__array__": "model.transformer.wte.weight"}}),
     "which the file does not hold"),
    (lambda o: o["state"]["__items__"][0].append(1), "[key, value] pairs"),
    (lambda o: o["state"]["__items__"].append(o["state"]["__items__"][0]), "appears twice"),
    (lambda o: o["state"]["__items__"][0].__setitem__(0, {"a": 1}), "mapping key"),
    (lambda o: o["param_groups"][0].update({"betas": {"__tuple__": 5}}), "tuple must be stored as a list"),
    (lambda o: o["param_groups"][0].update({"params": list(range(1, 1 + len(o["param_groups"][0]["params"])))}),
     "numbers parameter"),
    (lambda o: o["param_groups"][0]["params"].pop(), "expected"),
    (lambda o: o["param_groups"][0].update({"lr": "fast"}), "lr is str"),
    (lambda o: o["state"]["__items__"][0][1].pop("exp_avg_sq"), "exp_avg_sq is missing"),
    (lambda o: o.pop("param_groups"), "param_groups is missing"),
    (lambda o: o.update({"extra": 1}), "extra is unexpected"),
    (lambda o: o["state"]["__items__"][0][1].update({"step": None}), "step is null"),  # once int(None)
    (lambda o: o["state"]["__items__"][0][1].update({"step": 1.5}), "expected a whole number"),
    (lambda o: o["param_groups"][0].update({"lr": float("nan")}), "expected a finite number"),
])
def test_each_optimizer_state_fault_is_named(damage, fault):
    with scratch_dir() as d:
        write(d / "ck.safetensors", meta=_optimizer(META, damage))
        status, error = check(d / "ck.safetensors")
        assert status == "refused" and fault in str(error), error


def test_deeply_nested_optimizer_state_is_refused():
    deep = {"x": 1}
    for _ in range(200):
        deep = {"__tuple__": [deep]}
    with scratch_dir() as d:
        write(d / "ck.safetensors", meta={**META, "optimizer": deep})
        status, error = check(d / "ck.safetensors")
        assert status == "refused" and "nested more than" in str(error)


@pytest.mark.parametrize("other, fault", [
    (dict(n_embd=16), "model.lm_head.weight is float32 (11, 16), the model's float32 (11, 8)"),
    (dict(n_layer=2), "model tensors unexpected"),
    (dict(optimizer="sgd"), "exp_avg is missing"),
])
def test_state_from_another_model_or_optimizer_does_not_fit(other, fault):
    model, opt = trained(**other)
    with scratch_dir() as d:
        path = d / "ck.safetensors"
        save_checkpoint(path, model.state_dict(), opt.state_dict(), step=3, config=model.config.to_dict())
        status, error = check(path)
        assert status == "refused" and fault in str(error), error


def test_a_checkpoint_that_fits_loads_exactly():
    with scratch_dir() as d:
        (d / "ck.safetensors").write_bytes(VALID_BYTES)
        status, ck = check(d / "ck.safetensors")
        assert status == "ok" and ck["step"] == 1
