"""GPT.from_safetensors on Hugging Face GPT-2 checkpoints the test writes itself, in exactly HF's
naming and layout: Conv1D weights (in, out), keys with or without "transformer.", attn.bias /
attn.masked_bias buffers, lm_head absent or present; F32, F16 and BF16."""
import json

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.models.hf import to_hf_state
from tinygrad_llm.safetensors import save_file

HF_CONFIG = {"architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new", "model_type": "gpt2",
             "vocab_size": 37, "n_positions": 16, "n_ctx": 16, "n_embd": 24, "n_layer": 2, "n_head": 3,
             "n_inner": None, "layer_norm_epsilon": 1e-5}


def hf_tensors(seed=0):
    """A random GPT-2 state in HF's own layout (no 'transformer.' prefix, as the original files)."""
    rng = np.random.default_rng(seed)
    C, V, T = HF_CONFIG["n_embd"], HF_CONFIG["vocab_size"], HF_CONFIG["n_positions"]
    r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    t = {"wte.weight": r(V, C), "wpe.weight": r(T, C), "ln_f.weight": 1 + r(C), "ln_f.bias": r(C)}
    for i in range(HF_CONFIG["n_layer"]):
        p = f"h.{i}."
        t.update({p + "ln_1.weight": 1 + r(C), p + "ln_1.bias": r(C), p + "ln_2.weight": 1 + r(C), p + "ln_2.bias": r(C),
                  p + "attn.c_attn.weight": r(C, 3 * C), p + "attn.c_attn.bias": r(3 * C),  # Conv1D: (in, out)
                  p + "attn.c_proj.weight": r(C, C), p + "attn.c_proj.bias": r(C),
                  p + "mlp.c_fc.weight": r(C, 4 * C), p + "mlp.c_fc.bias": r(4 * C),
                  p + "mlp.c_proj.weight": r(4 * C, C), p + "mlp.c_proj.bias": r(C),
                  p + "attn.bias": np.tril(np.ones((T, T), np.float32))[None, None],
                  p + "attn.masked_bias": np.array(-1e4, np.float32)})
    return t


def reference_gpt2(t, idx):
    """GPT-2's forward written straight from HF's tensors (Conv1D: y = x @ W + b), in float64."""
    g = {k: v.astype(np.float64) for k, v in t.items()}
    C, H = HF_CONFIG["n_embd"], HF_CONFIG["n_head"]
    B, T = idx.shape

    def ln(x, w, b):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * w + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    x = g["wte.weight"][idx] + g["wpe.weight"][:T]
    for i in range(HF_CONFIG["n_layer"]):
        p = f"h.{i}."
        qkv = ln(x, g[p + "ln_1.weight"], g[p + "ln_1.bias"]) @ g[p + "attn.c_attn.weight"] + g[p + "attn.c_attn.bias"]
        q, k, v = (a.reshape(B, T, H, C // H).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(C // H) + np.where(np.tril(np.ones((T, T))), 0, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        y = (a / a.sum(-1, keepdims=True)) @ v
        x = x + y.transpose(0, 2, 1, 3).reshape(B, T, C) @ g[p + "attn.c_proj.weight"] + g[p + "attn.c_proj.bias"]
        h = gelu(ln(x, g[p + "ln_2.weight"], g[p + "ln_2.bias"]) @ g[p + "mlp.c_fc.weight"] + g[p + "mlp.c_fc.bias"])
        x = x + h @ g[p + "mlp.c_proj.weight"] + g[p + "mlp.c_proj.bias"]
    return ln(x, g["ln_f.weight"], g["ln_f.bias"]) @ g["wte.weight"].T


def write_hf(path, tensors, dtypes=None):
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"}, dtypes=dtypes)
    return path


@pytest.mark.parametrize("layout", ["original", "save_pretrained", "with_lm_head"])
def test_loads_hf_layout_and_matches_reference_forward(tmp_path, layout):
    t = hf_tensors()
    stored = dict(t)
    if layout != "original":
        stored = {"transformer." + k: v for k, v in t.items()}
    if layout == "with_lm_head":
        stored["lm_head.weight"] = t["wte.weight"]
    model = GPT.from_safetensors(write_hf(tmp_path / "gpt2", stored))
    assert model.config.n_layer == 2 and model.config.block_size == 16 and model.config.vocab_size == 37
    idx = np.random.default_rng(1).integers(0, 37, (2, 16))
    logits, _ = model(idx)
    np.testing.assert_allclose(logits.numpy(), reference_gpt2(t, idx), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_files_decode(tmp_path, dtype):
    t = hf_tensors()
    weights = {k: v for k, v in t.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    if dtype == "F16":
        stored, dtypes = {k: v.astype(np.float16) for k, v in weights.items()}, None
        expect = {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}
    else:
        stored, dtypes = weights, {k: "BF16" for k in weights}
        from tinygrad_llm.safetensors import encode_bf16
        expect = {k: (encode_bf16(v).astype(np.uint32) << 16).view(np.float32) for k, v in weights.items()}
    model = GPT.from_safetensors(write_hf(tmp_path / "h", stored, dtypes) / "model.safetensors")
    sd = model.state_dict()
    assert all(v.dtype == np.float32 for v in sd.values())
    np.testing.assert_array_equal(sd["transformer.h.1.attn.c_attn.weight"], expect["h.1.attn.c_attn.weight"].T)
    np.testing.assert_array_equal(sd["transformer.wpe.weight"], expect["wpe.weight"])
    idx = np.arange(10)[None] % 37
    np.testing.assert_allclose(model(idx)[0].numpy(), reference_gpt2(expect, idx), rtol=1e-4, atol=1e-4)


def test_round_trip_through_hf_layout(tmp_path):
    tl.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=3, n_embd=24))
    write_hf(tmp_path / "rt", to_hf_state(ours.state_dict()))
    back = GPT.from_safetensors(tmp_path / "rt")
    for k, v in ours.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)


def test_bad_checkpoints_are_named(tmp_path):
    t = hf_tensors()
    del t["h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match="missing.*h.1.mlp.c_fc.bias"):
        GPT.from_safetensors(write_hf(tmp_path / "a", t))
    t = hf_tensors()
    t["lm_head.weight"] = t["wte.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        GPT.from_safetensors(write_hf(tmp_path / "b", t))
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_safetensors(tmp_path / "nowhere")
