"""Parity with transformers on tiny random models of every family, built with transformers' own
classes (nothing downloaded): logits within 1e-4 relative on sequences longer than the sliding
windows and the RoPE scalings' original lengths, identical greedy tokens through the KV cache past
the window, agreement after SGD steps on both sides, and export read back by
AutoModelForCausalLM with the same logits (also after LoRA, merged)."""
import json

import numpy as np
import pytest

from tinygrad_llm import Tensor, nn, optim
from tinygrad_llm.models import from_pretrained

transformers = pytest.importorskip("transformers", reason="the parity tests need transformers (and torch)")
torch = pytest.importorskip("torch", reason="the parity tests need torch")
pytestmark = pytest.mark.reference

SIZES = dict(vocab_size=89, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
GEMMA_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]
VARIANTS = {  # name -> (config class, model class, config fields)
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=LLAMA3)),
    "llama_tied_biases": ("LlamaConfig", "LlamaForCausalLM",
                          dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5)),
    "llama_linear": ("LlamaConfig", "LlamaForCausalLM",
                     dict(rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 4.0})),
    "llama_dynamic": ("LlamaConfig", "LlamaForCausalLM",
                      dict(max_position_embeddings=12,
                           rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})),
    "llama_yarn": ("LlamaConfig", "LlamaForCausalLM",
                   dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                         "original_max_position_embeddings": 16})),
    "llama_yarn_mscale": ("LlamaConfig", "LlamaForCausalLM",
                          dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                "original_max_position_embeddings": 16, "mscale": 1.0,
                                                "mscale_all_dim": 0.5, "beta_fast": 16.0, "truncate": False})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen2_sliding": ("Qwen2Config", "Qwen2ForCausalLM",
                      dict(use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=12, rope_parameters={"rope_type": "default",
                                                                                     "rope_theta": 1e6})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=5)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(head_dim=8, sliding_window=5, layer_types=GEMMA_TYPES, query_pre_attn_scalar=10,
                    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                     "full_attention": {"rope_type": "default", "rope_theta": 20000.0}})),
    "gemma3_softcap_linear": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                              dict(head_dim=8, sliding_window=4, layer_types=GEMMA_TYPES, final_logit_softcapping=4.0,
                                   rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                                                    "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                       "rope_theta": 10000.0}})),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(head_dim=8, sliding_window=5, attn_logit_softcapping=2.0, final_logit_softcapping=4.0,
                    query_pre_attn_scalar=10)),
}
T = 24  # longer than every window and every original_max_position_embeddings above


def _randomize(model, seed):
    """Every parameter random, norms and biases included (a fresh init leaves them 0 or 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.15 if p.dim() > 1 else 0.3))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """variant -> a folder written by transformers' save_pretrained (built once per run)."""
    out = {}
    for i, (name, (config_cls, model_cls, fields)) in enumerate(VARIANTS.items()):
        config = getattr(transformers, config_cls)(**{**SIZES, **fields})
        model = getattr(transformers, model_cls)(config)
        _randomize(model, i)
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        out[name] = folder
    return out


def reference(folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def their_logits(model, idx):
    with torch.no_grad():
        return model(torch.tensor(idx)).logits.numpy()


def assert_close(got, want, rel=1e-4):
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= rel, f"max |ours - transformers| / max |transformers| = {err:.2e} > {rel}"


def ids(B, length, seed):
    return np.random.default_rng(seed).integers(0, SIZES["vocab_size"], (B, length))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits(folders, variant):
    idx = ids(2, T, 0)
    assert_close(from_pretrained(folders[variant])(idx)[0].numpy(), their_logits(reference(folders[variant]), idx))


@pytest.mark.parametrize("variant", ["llama3_rope", "llama_dynamic", "qwen2_sliding", "qwen3", "mistral", "gemma3",
                                     "gemma3_softcap_linear", "gemma2"])
def test_greedy_tokens_through_the_kv_cache(folders, variant):
    prompt = ids(2, 5, 1)
    theirs = reference(folders[variant]).generate(torch.tensor(prompt), max_new_tokens=16, do_sample=False).numpy()
    ours = from_pretrained(folders[variant]).generate(prompt, 16, temperature=0).numpy()
    np.testing.assert_array_equal(ours, theirs)


def torch_loss(logits, targets):
    """Mean cross-entropy of logits (B, T, V) against targets (B, T), as our models' loss (no shift)."""
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(targets).reshape(-1))


def _sgd_steps(ours, theirs, idx, targets, steps=3, lr=0.05):
    opt = optim.SGD(ours.parameters(), lr=lr)
    topt = torch.optim.SGD(theirs.parameters(), lr=lr)
    theirs.train()
    for _ in range(steps):
        opt.zero_grad()
        _, loss = ours(idx, targets)
        loss.backward()
        opt.step()
        topt.zero_grad()
        logits = theirs(torch.tensor(idx)).logits
        tloss = torch_loss(logits, targets)
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-4)
    theirs.eval()


@pytest.mark.parametrize("variant", ["llama3_rope", "llama_tied_biases", "qwen2_sliding", "qwen3", "mistral", "gemma3",
                                     "gemma3_softcap_linear", "gemma2"])
def test_sgd_steps_then_export(folders, variant, tmp_path):
    """Three SGD steps on both sides agree; then our export loads in transformers with our logits."""
    ours, theirs = from_pretrained(folders[variant]), reference(folders[variant])
    idx, targets = ids(2, T, 2), ids(2, T, 3)
    _sgd_steps(ours, theirs, idx, targets)
    probe = ids(2, T, 4)
    got = ours(probe)[0].numpy()
    assert_close(got, their_logits(theirs, probe))
    out = ours.save_pretrained(tmp_path / "export")
    assert_close(got, their_logits(reference(out), probe))


@pytest.mark.parametrize("variant", ["llama_tied_biases", "qwen3", "gemma3"])
def test_lora_then_merged_export(folders, variant, tmp_path):
    ours = from_pretrained(folders[variant])
    nn.apply_lora(ours, rank=4, alpha=8, targets=("q_proj", "v_proj"))
    opt = optim.AdamW(nn.trainable_parameters(ours), lr=2e-2)
    idx, targets = ids(2, T, 5), ids(2, T, 6)
    for _ in range(3):
        opt.zero_grad()
        _, loss = ours(idx, targets)
        loss.backward()
        opt.step()
    nn.merge_lora(ours)
    probe = ids(2, T, 7)
    got = ours(probe)[0].numpy()
    assert np.abs(got - from_pretrained(folders[variant])(probe)[0].numpy()).max() > 1e-3  # it moved
    assert_close(got, their_logits(reference(ours.save_pretrained(tmp_path / "lora")), probe))


def test_gemma3_older_config_spelling(folders, tmp_path):
    """rope_theta + rope_local_base_freq + sliding_window_pattern (configs on the hub today) read
    the same way transformers reads them."""
    src = folders["gemma3_softcap_linear"]
    hf = json.loads((src / "config.json").read_text())
    rope = hf.pop("rope_parameters")
    hf.pop("layer_types")
    hf.update(rope_theta=rope["full_attention"]["rope_theta"],
              rope_local_base_freq=rope["sliding_attention"]["rope_theta"],
              rope_scaling={"rope_type": "linear", "factor": 4.0}, sliding_window_pattern=2)
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf))
    (folder / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    ours = from_pretrained(folder)
    assert ours.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    idx = ids(2, T, 8)
    assert_close(ours(idx)[0].numpy(), their_logits(reference(folder), idx))


def test_rope_tables_match_transformers_init_functions():
    """inv_freq and the attention factor of every scaling against ROPE_INIT_FUNCTIONS."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tinygrad_llm.ops.rope import rope_inv_freq
    cases = [{"rope_type": "linear", "factor": 4.0}, {"rope_type": "dynamic", "factor": 2.0},
             {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64},
             {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64, "mscale": 1.0,
              "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2, "truncate": False},
             {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "attention_factor": 0.9},
             dict(LLAMA3, original_max_position_embeddings=64), dict(LLAMA3, factor=32.0, high_freq_factor=2.0)]
    for scaling in cases:
        config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=2, head_dim=32,
                                          max_position_embeddings=256,
                                          rope_parameters={**scaling, "rope_theta": 10000.0})
        for seq_len in (None, 300, 1000):
            if seq_len and scaling["rope_type"] != "dynamic":
                continue
            want, want_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu", seq_len=seq_len)
            got, factor = rope_inv_freq(32, 10000.0, scaling, 256, seq_len=seq_len)
            np.testing.assert_allclose(got, want.numpy(), rtol=3e-7, err_msg=str(scaling))
            np.testing.assert_allclose(factor, want_factor, rtol=1e-12, err_msg=str(scaling))


def test_gradients_match_torch_on_a_batch(folders):
    """The loss gradient of every parameter of the Gemma 3 variant (QK-norm, (1 + w) norms, sandwich
    norms, GeGLU, windows, local/global RoPE, tied head) against torch's autograd."""
    ours, theirs = from_pretrained(folders["gemma3"]), reference(folders["gemma3"])
    idx, targets = ids(2, T, 9), ids(2, T, 10)
    _, loss = ours(idx, targets)
    loss.backward()
    logits = theirs(torch.tensor(idx)).logits
    torch_loss(logits, targets).backward()
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        want = grads[name].grad.numpy()
        err = np.abs(p.grad.numpy() - want).max() / max(np.abs(want).max(), 1e-12)
        assert err < 1e-4, f"{name}: relative error {err:.2e}"
    assert isinstance(loss, Tensor)
