"""Hostile GPT-2 config.json files (models/hf.py, models/config_fields.py): every field of the
wrong type, sign or size, missing, or null; a file that is not JSON, not an object, or far too
big. Loading ends in one ValueError naming config.json (and the field), or in a model equal to
the one saved, and never allocates a model the weights file does not back."""
import json

import numpy as np
import pytest
from fuzz_helpers import json_mutations, refused_cleanly, scratch_dir, write_json
from hypothesis import given, settings

import tinygrad_llm as tl
from tinygrad_llm import safetensors
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.models.config_fields import MAX_CONFIG_BYTES
from tinygrad_llm.models.hf import CONV1D, gpt2_shapes, gpt2_tensor_count

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def saved(directory):
    """The tiny model's folder (config.json, model.safetensors) written into directory."""
    for name, data in FILES.items():
        (directory / name).write_bytes(data)
    return MODEL


def load(directory):
    # a tiny model is a few KB: 4 MB at once can only be an allocation from a declared size
    return refused_cleanly(lambda: GPT.from_safetensors(directory), names=["config.json"], max_bytes=4 << 20)


tl.manual_seed(0)
MODEL = GPT(GPTConfig(**TINY))
with scratch_dir() as _d:
    MODEL.save_pretrained(_d)
    FILES = {name: (_d / name).read_bytes() for name in ("config.json", "model.safetensors")}
VALID = json.loads(FILES["config.json"])


@settings(max_examples=60, deadline=None)
@given(config=json_mutations(VALID))
def test_a_damaged_config_json_is_refused_by_name_or_loads_the_same_model(config):
    with scratch_dir() as d:
        model = saved(d)
        write_json(d / "config.json", config)
        status, loaded = load(d)
        if status == "ok":  # a harmless change (an unknown key, an equal value): the same weights
            want = model.state_dict()
            for name, value in loaded.state_dict().items():
                np.testing.assert_array_equal(value, want[name])


@pytest.mark.parametrize("change, fault", [
    ({"n_embd": None}, "'n_embd' is null"),
    ({"n_layer": "2"}, "n_layer must be a whole number"),
    ({"vocab_size": -11}, "vocab_size must be a whole number"),
    ({"n_head": True}, "n_head must be a whole number"),
    ({"n_head": 3}, "not divisible by n_head"),
    ({"n_layer": 2 ** 40}, "holds 28 tensors"),
    ({"n_positions": 9}, "wrong"),
    ({"n_inner": 0}, "n_inner"),
    ({"layer_norm_epsilon": -1e-5}, "layer_norm_epsilon must be a finite number > 0"),
    ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
    ({"activation_function": "relu"}, "activation_function"),
    ({"activation_function": ["gelu"]}, "activation_function"),
])
def test_each_config_fault_is_named(change, fault):
    with scratch_dir() as d:
        saved(d)
        write_json(d / "config.json", {**VALID, **change})
        status, error = load(d)
        assert status == "refused" and fault in str(error), (status, error)


def test_a_missing_field_is_named():
    with scratch_dir() as d:
        saved(d)
        write_json(d / "config.json", {k: v for k, v in VALID.items() if k != "vocab_size"})
        status, error = load(d)
        assert status == "refused" and "'vocab_size' is missing" in str(error)


@pytest.mark.parametrize("text, fault", [
    ("[1, 2]", "not an object"),
    ('{"n_embd": 8,', "not valid JSON"),
    ('{"n_embd": 8, "n_embd": 16}', "appears twice"),
    (" " * (MAX_CONFIG_BYTES + 1), "bytes, more than"),
], ids=["list", "cut", "twice", "huge"])
def test_a_config_json_that_is_not_one_is_named(text, fault):
    with scratch_dir() as d:
        saved(d)
        (d / "config.json").write_text(text)
        status, error = load(d)
        assert status == "refused" and fault in str(error), (status, error)


def test_a_weights_file_of_another_dtype_or_shape_is_refused_before_the_model_is_built(monkeypatch):
    with scratch_dir() as d:
        saved(d)
        tensors, meta = safetensors.load_file(d / "model.safetensors")
        key = "transformer.h.0.ln_1.weight"
        tensors[key] = tensors[key].astype(np.int64)
        safetensors.save_file(tensors, d / "model.safetensors", metadata=meta)
        built = []
        monkeypatch.setattr(GPT, "__init__", lambda self, *a, **k: built.append(a))
        status, error = load(d)
        assert status == "refused" and f"{key} is I64" in str(error) and not built


@pytest.mark.parametrize("kw", [{}, {"tie_weights": False}, {"mlp_hidden": 24}, {"n_layer": 3}])
def test_gpt2_shapes_describe_the_model_gpt_builds(kw):
    config = GPTConfig(**{**TINY, **kw})
    model = GPT(config)
    shapes = {name: tuple(p.shape)[::-1] if name.endswith(CONV1D) else tuple(p.shape)
              for name, p in model.named_parameters()}
    assert shapes == gpt2_shapes(config)
    assert len(shapes) == gpt2_tensor_count(config)
