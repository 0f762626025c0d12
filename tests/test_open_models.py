"""The Llama-layout Transformer without any reference package: hub configs mapped to switches,
every refusal's one-line error, loading (single file, shards, BF16/F16), export read back exactly,
the KV caches (ring buffers past the window, chunked turns) against the cache-free path, a float64
gradcheck of whole models with every switch on, and LoRA on the family's module names."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS

import hub_configs as hub
import tinygrad_llm as tl
from tinygrad_llm import Tensor, nn, optim
from tinygrad_llm.models import GPT, Transformer, TransformerConfig, from_pretrained
from tinygrad_llm.models.families import ConfigError, config_from_hf
from tinygrad_llm.models.kv_cache import WindowLayerCache
from tinygrad_llm.models.pretrained import CheckpointMismatch
from tinygrad_llm.safetensors import encode_bf16, load_file, save_file

SMALL = dict(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
VARIANTS = {
    "llama": dict(model_type="llama", rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "llama_biased_tied": dict(model_type="llama", qkv_bias=True, o_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "qwen2": dict(model_type="qwen2", qkv_bias=True, sliding_window=4,
                  layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
    "qwen3": dict(model_type="qwen3", qk_norm=True, head_dim=10, tie_word_embeddings=True),
    "mistral": dict(model_type="mistral", sliding_window=5, layer_types=["sliding_attention"] * 3),
    "gemma2": dict(model_type="gemma2", norm_unit_offset=True, sandwich_norms=True, embed_scale=True,
                   hidden_act="gelu_tanh", head_dim=8, query_pre_attn_scalar=12, attn_logit_softcap=2.0,
                   final_logit_softcap=3.0, sliding_window=4, tie_word_embeddings=True,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "gemma3": dict(model_type="gemma3_text", norm_unit_offset=True, sandwich_norms=True, embed_scale=True, qk_norm=True,
                   hidden_act="gelu_tanh", head_dim=8, query_pre_attn_scalar=12, final_logit_softcap=3.0,
                   sliding_window=4, local_rope_theta=100.0, rope_theta=5000.0, tie_word_embeddings=True,
                   rope_scaling={"rope_type": "linear", "factor": 2.0},
                   layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
}


def random_model(variant, seed=0, dtype=np.float32, **kw):
    """A Transformer of the variant with every parameter random (norm gains and biases too)."""
    tl.manual_seed(seed)
    model = Transformer(TransformerConfig(**{**SMALL, **VARIANTS[variant], **kw}), dtype=dtype)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data[...] = (rng.standard_normal(p.shape) * 0.3).astype(dtype)
    return model


def ids(B, T, seed=1, V=61):
    return np.random.default_rng(seed).integers(0, V, (B, T))


# --- hub configs -> switches -------------------------------------------------------------------
def test_hub_configs_map_to_the_switches():
    smol = config_from_hf(hub.SMOLLM2_135M)
    assert (smol.head_dim, smol.num_key_value_heads, smol.rope_theta, smol.tie_word_embeddings) == (64, 3, 1e5, True)
    assert smol.rms_norm_eps == 1e-5 and smol.rope_scaling is None and not smol.qkv_bias
    llama = config_from_hf(hub.LLAMA_32_1B)
    assert llama.rope_scaling == {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    assert config_from_hf(hub.TINYLLAMA).tie_word_embeddings is False
    qwen = config_from_hf(hub.QWEN25_05B)
    assert qwen.qkv_bias and not qwen.o_bias and set(qwen.layer_types) == {"full_attention"}
    assert qwen.sliding_window is None  # use_sliding_window false: sliding_window 32768 is unused
    qwen3 = config_from_hf(hub.QWEN3_06B)
    assert qwen3.qk_norm and qwen3.head_dim == 128 != 1024 // 16
    mistral = config_from_hf(hub.MISTRAL_7B)
    assert mistral.sliding_window == 4096 and set(mistral.layer_types) == {"sliding_attention"}
    g2 = config_from_hf(hub.GEMMA2_2B)
    assert (g2.attn_logit_softcap, g2.final_logit_softcap, g2.hidden_act) == (50.0, 30.0, "gelu_tanh")
    assert g2.layer_types[:2] == ["sliding_attention", "full_attention"] and not g2.qk_norm
    g3 = config_from_hf(hub.GEMMA3_270M)
    assert g3.qk_norm and g3.sandwich_norms and g3.norm_unit_offset and g3.embed_scale
    assert (g3.rope_theta, g3.local_rope_theta, g3.sliding_window) == (1e6, 1e4, 512)
    assert g3.attention_scale() == 256 ** -0.5 and g3.attn_logit_softcap is None
    g3_4b = config_from_hf(hub.GEMMA3_4B_TEXT)
    assert g3_4b.rope_scaling == {"factor": 8.0, "rope_type": "linear"} and g3_4b.local_rope_scaling is None
    assert g3_4b.layer_types[5] == "full_attention" and g3_4b.layer_types.count("full_attention") == 5


def test_new_rope_spelling_and_num_parameters():
    cfg = config_from_hf({**{k: v for k, v in hub.LLAMA_32_1B.items() if k not in ("rope_theta", "rope_scaling")},
                          "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4,
                                              "original_max_position_embeddings": 2048}})
    assert cfg.rope_theta == 1e4 and cfg.rope_scaling["rope_type"] == "yarn"
    assert config_from_hf(hub.LLAMA_32_1B).num_parameters() == 1_235_814_400  # Llama 3.2 1B's published count
    for variant in VARIANTS:
        model = random_model(variant)
        assert model.config.num_parameters() == model.num_parameters(), variant


REFUSALS = [
    ({"model_type": "bert"}, r"model_type 'bert' is not one of the implemented families"),
    ({"model_type": "mixtral"}, r"'mixtral' is not implemented yet: it needs a mixture-of-experts feed-forward"),
    ({"model_type": "gemma3"}, r"vision-language Gemma 3"),
    ({"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}, r"auto_map is set: .* never run"),
    ({"quantization_config": {"quant_method": "gptq"}}, r"quantization_config is set"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}},
     r"rope_type 'longrope' is not implemented"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "mrope_section": [1]}},
     r"rope_type 'linear' with \['mrope_section'\], which it does not implement"),
    ({"rope_scaling": {"rope_type": "linear"}}, r"rope_type 'linear' needs \['factor'\]"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not implemented"),
    ({"attention_dropout": 0.1}, r"attention_dropout=0.1 is not implemented \(only 0.0\)"),
    ({"pretraining_tp": 2}, r"pretraining_tp=2 is not implemented"),
    ({"rope_interleaved": True}, r"rope_interleaved=True is not implemented"),
    ({"partial_rotary_factor": 0.5}, r"field\(s\) \['partial_rotary_factor'\] are not ones a llama model has"),
    ({"architectures": ["LlamaForSequenceClassification"]}, r"only LlamaForCausalLM .* is implemented"),
    ({"hidden_size": None}, r"\['hidden_size'\] missing"),
    ({"num_key_value_heads": 4}, r"num_attention_heads=9 is not a multiple of num_key_value_heads=4"),
]


@pytest.mark.parametrize("change, message", REFUSALS, ids=[m[:30] for _, m in REFUSALS])
def test_config_refusals_name_the_field(change, message):
    with pytest.raises(ConfigError, match=message) as e:
        config_from_hf({**hub.SMOLLM2_135M, **change})
    assert "\n" not in str(e.value)


def test_gemma_refusals():
    with pytest.raises(ConfigError, match=r"attn_logit_softcapping=50.0 is not implemented \(only None\)"):
        config_from_hf({**hub.GEMMA3_270M, "attn_logit_softcapping": 50.0})
    with pytest.raises(ConfigError, match=r"use_bidirectional_attention=True"):
        config_from_hf({**hub.GEMMA3_270M, "use_bidirectional_attention": True})
    with pytest.raises(ConfigError, match=r"hidden_act='silu' disagrees with hidden_activation"):
        config_from_hf({**hub.GEMMA2_2B, "hidden_act": "silu"})
    with pytest.raises(ConfigError, match=r"layer_types \['chunked_attention'\] are not implemented"):
        config_from_hf({**hub.GEMMA3_270M, "num_hidden_layers": 1, "layer_types": ["chunked_attention"]})


# --- loading and export ------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_reads_back_exactly(tmp_path, variant):
    model = random_model(variant)
    out = model.save_pretrained(tmp_path / variant)
    hf = json.loads((out / "config.json").read_text())
    assert hf["model_type"] == model.config.model_type and hf["architectures"][0].endswith("ForCausalLM")
    tensors, _ = load_file(out / "model.safetensors")
    assert ("lm_head.weight" in tensors) == (not model.config.tie_word_embeddings)
    back = from_pretrained(out)
    assert back.config == model.config
    x = ids(2, 9)
    np.testing.assert_array_equal(back(x)[0].numpy(), model(x)[0].numpy())


def test_gpt2_folders_load_into_gpt(tmp_path):
    gpt = GPT(dict(vocab_size=37, block_size=16, n_layer=2, n_head=3, n_embd=24))
    back = from_pretrained(gpt.save_pretrained(tmp_path / "gpt2"))
    assert isinstance(back, GPT)
    x = ids(1, 8, V=37)
    np.testing.assert_allclose(back(x)[0].numpy(), gpt(x)[0].numpy(), rtol=1e-6, atol=1e-6)


def test_sharded_and_half_precision_files_load(tmp_path):
    model = random_model("qwen3")
    tensors = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    names = sorted(tensors)
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_hf_config(model)))
    half = names[: len(names) // 2]
    save_file({k: tensors[k] for k in half}, folder / "model-00001-of-00002.safetensors",
              dtypes={k: "BF16" for k in half})
    save_file({k: tensors[k].astype(np.float16) for k in names if k not in half},
              folder / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" if k in half else "model-00002-of-00002.safetensors"
                  for k in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    back = from_pretrained(folder)
    params = dict(back.named_parameters())
    for k in names:
        want = tensors[k].astype(np.float16).astype(np.float32) if k not in half else \
            (encode_bf16(tensors[k]).astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(params[k].numpy(), want)


def _hf_config(model):
    from tinygrad_llm.models.families import config_to_hf
    return config_to_hf(model.config)


def _folder(tmp_path, model, tensors=None, config=None):
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or _hf_config(model)))
    if tensors is None:
        tensors = {k: v for k, v in model.state_dict().items()
                   if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    save_file(tensors, folder / "model.safetensors")
    return folder


def test_weight_refusals_name_the_tensor(tmp_path):
    model = random_model("llama")
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(CheckpointMismatch, match=r"missing 1 \['model.layers.1.mlp.up_proj.weight'\]"):
        from_pretrained(_folder(tmp_path, model, missing))
    extra = {**state, "model.layers.3.mlp.up_proj.weight": state["model.layers.1.mlp.up_proj.weight"]}
    with pytest.raises(CheckpointMismatch, match=r"unexpected 1 \['model.layers.3.mlp.up_proj.weight'\]"):
        from_pretrained(_folder(tmp_path, model, extra))
    wrong = {**state, "model.layers.0.self_attn.k_proj.weight": np.zeros((13, 24), np.float32)}
    with pytest.raises(CheckpointMismatch, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(13, 24\)"):
        from_pretrained(_folder(tmp_path, model, wrong))
    ints = {**state, "model.norm.weight": np.zeros(24, np.int32)}
    with pytest.raises(CheckpointMismatch, match=r"'model.norm.weight' is I32, not a float"):
        from_pretrained(_folder(tmp_path, model, ints))
    # buffers older checkpoints carry are recomputed, not refused
    buffers = {**state, "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(3, np.float32)}
    from_pretrained(_folder(tmp_path, model, buffers))


def test_tied_head_must_be_the_embedding(tmp_path):
    model = random_model("llama_biased_tied")
    state = model.state_dict()
    from_pretrained(_folder(tmp_path, model, dict(state)))  # the head stored too, equal: fine
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(CheckpointMismatch, match=r"lm_head.weight differs from model.embed_tokens.weight"):
        from_pretrained(_folder(tmp_path, model, state))


def test_folder_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is not a folder"):
        from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config.json not found"):
        from_pretrained(tmp_path / "empty")
    model = random_model("llama")
    folder = _folder(tmp_path, model)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model.bin is a pickle and is never loaded"):
        from_pretrained(folder)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"lm_head.weight": "../x.safetensors"}}))
    with pytest.raises(CheckpointMismatch, match=r"points at '../x.safetensors'; shards must be .safetensors files"):
        from_pretrained(folder)
    index.write_text(json.dumps({"weight_map": {"lm_head.weight": "a.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"names a.safetensors, which is not in"):
        from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json: not valid JSON"):
        from_pretrained(folder)


def test_export_refusals(tmp_path):
    model = random_model("mistral", qk_norm=True)
    with pytest.raises(ValueError, match=r"mistral's layout cannot express qk_norm=True"):
        model.save_pretrained(tmp_path / "x")
    model = random_model("qwen3")
    nn.apply_lora(model, targets=("q_proj", "v_proj"))
    with pytest.raises(ValueError, match=r"unmerged LoRA adapters"):
        model.save_pretrained(tmp_path / "x")


# --- generation and the KV caches --------------------------------------------------------------
@pytest.mark.parametrize("variant", ["mistral", "gemma3", "qwen2", "llama"])
def test_cached_generation_equals_the_cache_free_path_past_the_window(variant):
    model = random_model(variant)
    prompt = ids(2, 6)
    fast = model.generate(prompt, 14, temperature=0).numpy()
    slow = model.generate(prompt, 14, temperature=0, use_cache=False).numpy()
    np.testing.assert_array_equal(fast, slow)
    assert fast.shape == (2, 20)


def test_window_caches_stay_bounded_and_turns_append_in_chunks():
    """A chat: a prompt, a reply, then a new turn of several tokens fed through the same cache;
    the logits at every step equal a cache-free run over the whole conversation."""
    model = random_model("gemma3")
    cache = model.new_cache(1, capacity=8)
    convo = ids(1, 7, seed=2)
    reply = list(model.stream(convo, 5, temperature=0, cache=cache))
    convo = np.concatenate([convo] + [t[:, None] for t in reply], axis=1)
    assert cache.length == convo.shape[1] - 1
    convo = np.concatenate([convo, ids(1, 6, seed=3)], axis=1)  # the user's next turn, 6 tokens
    more = list(model.stream(convo, 4, temperature=0, cache=cache))
    want = model.generate(convo, 4, temperature=0, use_cache=False).numpy()[0, -4:]
    np.testing.assert_array_equal(np.concatenate(more), want)
    for layer, kind in zip(cache.layers, model.config.layer_types):
        if kind == "sliding_attention":
            assert isinstance(layer, WindowLayerCache) and layer.ring.k.shape[2] == 4  # the window, not 21
        else:
            assert layer.k.shape[2] >= cache.length


@SETTINGS
@given(chunks=st.lists(st.integers(1, 5), min_size=1, max_size=6), window=st.integers(1, 6))
def test_window_cache_feeds_attention_what_the_window_rule_shows(chunks, window):
    """Any sequence of chunk sizes: attention over what the ring hands back equals attention over
    the whole history with the window mask."""
    import tinygrad_llm.functional as F
    rng = np.random.default_rng(sum(chunks) * 7 + window)
    total = sum(chunks)
    q_all, k_all, v_all = (rng.standard_normal((1, 2, total, 3)) for _ in range(3))
    cache, start = WindowLayerCache(1, 2, 3, np.float64, np, window, capacity=2), 0
    for n in chunks:
        k, v = cache.update(start, k_all[:, :, start:start + n], v_all[:, :, start:start + n])
        got = F.scaled_dot_product_attention(Tensor(q_all[:, :, start:start + n]), Tensor(k), Tensor(v),
                                             window=window).numpy()
        want = F.scaled_dot_product_attention(*(Tensor(a[:, :, :start + n]) for a in (q_all, k_all, v_all)),
                                              window=window).numpy()[:, :, start:]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert cache.ring.k.shape[2] <= window
        start += n


def test_generate_options_and_errors():
    model = random_model("llama")
    out = model.generate(ids(3, 4), 6, temperature=0.8, top_k=5, top_p=0.9, seed=3).numpy()
    again = model.generate(ids(3, 4), 6, temperature=0.8, top_k=5, top_p=0.9, seed=3).numpy()
    np.testing.assert_array_equal(out, again)
    greedy = model.generate(ids(1, 4), 8, temperature=0).numpy()[0]
    eos = int(greedy[6])
    stopped = model.generate(ids(1, 4), 8, temperature=0, eos_id=[999, eos]).numpy()[0]
    assert stopped[-1] == eos and len(stopped) <= 7
    with pytest.raises(ValueError, match=r"token id 61 is outside the vocabulary \[0, 61\)"):
        model(np.array([[1, 61]]))
    with pytest.raises(ValueError, match=r"targets of shape \(1, 3\) do not match idx of shape \(1, 2\)"):
        model(np.array([[1, 2]]), np.array([[1, 2, 3]]))
    cache = model.new_cache(1)
    model.generate(ids(1, 4), 2, cache=cache)
    with pytest.raises(ValueError, match=r"the cache holds 5 positions; idx must extend them"):
        model.generate(ids(1, 4), 2, cache=cache)


def test_long_dynamic_rope_generation_matches_the_cache_free_path():
    """Dynamic NTK past max_position_embeddings: each step's new position uses the frequencies of
    the sequence's current length, with or without a cache (as transformers does)."""
    model = random_model("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=8)
    prompt = ids(1, 5)
    np.testing.assert_array_equal(model.generate(prompt, 9, temperature=0).numpy(),
                                  model.generate(prompt, 9, temperature=0, use_cache=False).numpy())


# --- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["gemma3", "gemma2", "qwen2", "llama_biased_tied"])
def test_gradcheck_of_the_whole_model(variant):
    """float64: the loss of a model with every switch of the variant on, against central
    differences along random directions of every parameter (windows shorter than the sequence)."""
    two_layers = {"layer_types": ["sliding_attention", "full_attention"]} if "layer_types" in VARIANTS[variant] else {}
    model = random_model(variant, dtype=np.float64, hidden_size=12, intermediate_size=16, num_attention_heads=2,
                         num_key_value_heads=1, num_hidden_layers=2, vocab_size=17, **two_layers)
    x, y = ids(2, 7, V=17), ids(2, 7, seed=5, V=17)
    params = list(model.parameters())
    assert tl.gradcheck(lambda *ps: model(x, y)[1], params, max_full=0, directions=4, atol=1e-7, rtol=1e-5)


def test_lora_on_the_family_module_names():
    model = random_model("qwen3")
    x, y = ids(2, 8), ids(2, 8, seed=4)
    before = model(x)[0].numpy()
    names = nn.apply_lora(model, rank=4, alpha=8, targets=("q_proj", "v_proj"))
    assert len(names) == 6 and all(n.endswith(("self_attn.q_proj", "self_attn.v_proj")) for n in names)
    np.testing.assert_allclose(model(x)[0].numpy(), before, rtol=1e-6)  # B = 0 at the start
    opt = optim.AdamW(nn.trainable_parameters(model), lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    tuned = model(x)[0].numpy()
    nn.merge_lora(model)
    np.testing.assert_allclose(model(x)[0].numpy(), tuned, rtol=1e-4, atol=1e-5)


def test_instruction_tuning_and_adapter_files(tmp_path):
    """finetune.instruct's fit (loss on the response only) and the LoRA adapter files work on a
    Transformer as on GPT: the response loss falls, and the adapters reload into a fresh model."""
    from tinygrad_llm.finetune import instruct
    from tinygrad_llm.finetune.adapters import load_adapters, save_adapters
    rng = np.random.default_rng(0)
    examples = [(rng.integers(1, 61, 12).tolist(), 5) for _ in range(8)]
    model = random_model("gemma3")
    nn.apply_lora(model, rank=4, alpha=8, targets=("q_proj", "v_proj"))
    before = instruct.eval_loss(model, examples, batch_size=4)
    history = instruct.fit(model, examples, examples, epochs=3, batch_size=4, lr=3e-2, log=None)
    assert history[-1]["val_loss"] < before
    save_adapters(model, tmp_path / "adapters.safetensors")
    fresh = load_adapters(random_model("gemma3"), tmp_path / "adapters.safetensors")
    x = ids(2, 9)
    np.testing.assert_allclose(fresh(x)[0].numpy(), model(x)[0].numpy(), rtol=1e-5, atol=1e-6)
