"""Checkpoints: exact round trips of model and optimizer state, atomic saves, corrupt files refused."""
import os

import numpy as np
import pytest

from tinygrad_llm import checkpoint
from tinygrad_llm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state():
    rng = np.random.default_rng(1)
    model = {"transformer.wte.weight": rng.standard_normal((7, 4)).astype(np.float32),
             "lm_head.bias": rng.standard_normal(7).astype(np.float32)}
    optim = {"state": {0: {"m": rng.standard_normal((7, 4)).astype(np.float32), "step": 3},
                       1: {"m": np.zeros(7, np.float32), "step": 3}},
             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0, 1]}]}
    return model, optim


def test_round_trip_is_exact(tmp_path):
    model, optim = _state()
    rng_state = np.random.Generator(np.random.PCG64(5)).bit_generator.state
    save_checkpoint(tmp_path / "c.safetensors", model, optim, step=42, config={"n_layer": 2},
                    rng=rng_state, extra={"data": "x"})
    ck = load_checkpoint(tmp_path / "c.safetensors")
    assert ck["step"] == 42 and ck["config"] == {"n_layer": 2} and ck["extra"] == {"data": "x"}
    assert ck["rng"] == rng_state
    for k in model:
        np.testing.assert_array_equal(ck["model"][k], model[k])
    assert ck["optimizer"]["param_groups"] == optim["param_groups"]  # tuple betas survive
    assert set(ck["optimizer"]["state"]) == {0, 1}  # int keys survive JSON
    np.testing.assert_array_equal(ck["optimizer"]["state"][0]["m"], optim["state"][0]["m"])


def test_truncated_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", *_state())
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) - 10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_flipped_byte_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", *_state())
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, optim = _state()
    path = save_checkpoint(tmp_path / "c.safetensors", model, optim, step=1)

    def crash(fd):
        raise OSError("disk died")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk died"):
        save_checkpoint(path, {k: v * 0 for k, v in model.items()}, optim, step=2)
    monkeypatch.undo()
    ck = load_checkpoint(path)
    assert ck["step"] == 1
    np.testing.assert_array_equal(ck["model"]["lm_head.bias"], model["lm_head.bias"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind


def test_plain_safetensors_is_not_a_checkpoint(tmp_path):
    from tinygrad_llm.safetensors import save_file
    save_file({"w": np.ones(2, np.float32)}, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="not a tinygrad_llm checkpoint"):
        load_checkpoint(tmp_path / "m.safetensors")


def test_unstorable_state_is_named():
    with pytest.raises(TypeError, match="object"):
        checkpoint.encode_state({"x": object()}, {})
