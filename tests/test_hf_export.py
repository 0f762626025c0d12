"""save_pretrained: Hugging Face's GPT-2 layout written from our GPT; from_safetensors reads it
back exactly; configs GPT-2 cannot express are refused by name; and, when transformers is
installed, GPT2LMHeadModel loads the directory and gives our logits. Plus the memory-mapped
reader's pieces (copy_into, release) on files the tests write."""
import json

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import nn, safetensors
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.safetensors import encode_bf16, load_file, open_mapped, save_file

SMALL = dict(vocab_size=37, block_size=16, n_layer=2, n_head=3, n_embd=24)


def trained_like(seed=0, **kw):
    """A tiny GPT whose every parameter is random (biases and norms too, unlike a fresh init)."""
    tl.manual_seed(seed)
    model = GPT(GPTConfig(**{**SMALL, **kw}))
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data[...] = (rng.standard_normal(p.shape) * 0.3).astype(np.float32)
    return model


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"tie_weights": False}, {"mlp_hidden": 40}])
def test_export_then_from_safetensors_is_exact(tmp_path, kw):
    model = trained_like(**kw)
    out = model.save_pretrained(tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["n_layer"] == 2 and cfg["n_inner"] == model.config.mlp_hidden
    tensors, meta = load_file(out / "model.safetensors")
    assert meta == {"format": "pt"}
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (24, 72)  # Conv1D (in, out)
    assert ("lm_head.weight" in tensors) == (not model.config.tie_weights)
    back = GPT.from_safetensors(out)
    idx = np.random.default_rng(1).integers(0, 37, (2, 16))
    np.testing.assert_array_equal(back(idx)[0].numpy(), model(idx)[0].numpy())
    ours = model.state_dict()
    for k, v in back.state_dict().items():
        np.testing.assert_array_equal(v, ours[k] if k in ours else np.zeros_like(v))  # bias=False: zeros


@pytest.mark.parametrize("kw, option", [({"pos": "rope"}, "pos='rope'"), ({"norm": "rmsnorm"}, "norm='rmsnorm'"),
                                        ({"mlp": "swiglu"}, "mlp='swiglu'"), ({"n_kv_head": 1}, "n_kv_head=1")])
def test_export_refuses_what_gpt2_cannot_express(tmp_path, kw, option):
    model = GPT(GPTConfig(**{**SMALL, **kw}))
    with pytest.raises(ValueError, match="GPT-2 layout cannot express.*" + option.replace("(", r"\(")):
        model.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_with_lora_needs_a_merge_and_then_matches(tmp_path):
    model = trained_like()
    nn.apply_lora(model, rank=2, alpha=4)
    for _, layer in nn.lora_layers(model):
        layer.lora_B.data[...] = 0.1
    idx = np.arange(12)[None] % 37
    want = model(idx)[0].numpy()
    with pytest.raises(ValueError, match="merge_lora"):
        model.save_pretrained(tmp_path / "a")
    nn.merge_lora(model)
    back = GPT.from_safetensors(model.save_pretrained(tmp_path / "b"))
    np.testing.assert_allclose(back(idx)[0].numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.reference
def test_transformers_loads_the_export_with_the_same_logits(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed: the check against transformers is skipped")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed: the check is skipped")
    for kw in ({}, {"tie_weights": False}):
        model = trained_like(seed=3, **kw)
        out = model.save_pretrained(tmp_path / f"hf{len(kw)}")
        hf = transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()
        idx = np.random.default_rng(2).integers(0, 37, (2, 16))
        with torch.no_grad():
            theirs = hf(torch.from_numpy(idx)).logits.numpy()
        ours = model(idx)[0].numpy()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [8, 1 << 20])  # one row per chunk, or the whole tensor at once
@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_mapped_copy_into_converts_and_transposes(tmp_path, monkeypatch, dtype, chunk):
    monkeypatch.setattr(safetensors, "CHUNK_BYTES", chunk)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 7)).astype(np.float32)
    path = tmp_path / "w.safetensors"
    if dtype == "F16":
        save_file({"w": w.astype(np.float16)}, path)
        expect = w.astype(np.float16).astype(np.float32)
    elif dtype == "BF16":
        save_file({"w": w}, path, dtypes={"w": "BF16"})
        expect = (encode_bf16(w).astype(np.uint32) << 16).view(np.float32)
    else:
        save_file({"w": w}, path)
        expect = w
    with open_mapped(path) as f:
        assert f.view("w").flags.writeable is False  # the file's pages, never written
        for dst_dtype in (np.float32, np.float64):
            dst = np.full((7, 5), np.nan, dst_dtype)
            f.copy_into(dst, "w", transpose=True)
            np.testing.assert_array_equal(dst, expect.T.astype(dst_dtype))
        f.release("w")
        again = f.copy_into(np.empty((5, 7), np.float32), "w")  # released pages fault back in
        np.testing.assert_array_equal(again, expect)
        with pytest.raises(ValueError, match=r"tensor 'w' has shape \(5, 7\), the destination \(7, 5\)"):
            f.copy_into(np.empty((7, 5), np.float32), "w")


def test_loading_writes_each_parameter_once_and_draws_no_random_numbers(tmp_path):
    out = trained_like().save_pretrained(tmp_path / "hf")
    before = tl.backend.get_rng_state()
    back = GPT.from_safetensors(out)
    assert tl.backend.get_rng_state() == before  # no initialisation ran: the file wrote every weight
    with nn.init.skipped():
        bare = nn.Linear(3, 4)
    nn.init.normal_(bare.weight)  # outside the block the initialisers work again
    assert np.isfinite(bare.weight.numpy()).all() and back.config.n_layer == 2
