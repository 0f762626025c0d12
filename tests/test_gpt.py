"""The GPT model: config checks, GPT-2 names and init, errors, overfitting, float64 gradient checks
of every parameter in every variant, and generation (KV cache == no cache, cropping, sampling)."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import optim
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.models.gpt import sample_next

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny(**kw):
    return GPTConfig(**{**TINY, **kw})


def test_config_errors_name_the_values():
    with pytest.raises(ValueError, match="n_embd=10 is not divisible by n_head=3"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="n_head=4 is not divisible by n_kv_head=3"):
        GPTConfig(n_embd=8, n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="pos='sinusoid'"):
        GPTConfig(pos="sinusoid")
    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        GPTConfig(vocab_size=0)
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(n_embd=6, n_head=2, pos="rope")
    with pytest.raises(ValueError, match="unknown keys"):
        GPTConfig.from_dict({"n_layers": 2})


def test_gpt2_parameter_names_and_init():
    cfg = GPTConfig(vocab_size=300, block_size=32, n_layer=4, n_head=4, n_embd=64)
    model = GPT(cfg)
    names = dict(model.named_parameters())
    for n in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
              "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
              "transformer.h.3.mlp.c_proj.weight", "transformer.ln_f.bias"]:
        assert n in names, n
    assert "lm_head.weight" not in names  # tied: counted once, under wte
    assert model.lm_head.weight is model.transformer.wte.weight
    assert names["transformer.h.0.attn.c_attn.weight"].shape == (192, 64)  # (out, in)
    assert model.num_parameters() == cfg.num_parameters()
    w = names["transformer.h.0.mlp.c_fc.weight"].numpy()
    assert abs(w.std() - 0.02) < 0.002
    proj = np.concatenate([names[f"transformer.h.{i}.attn.c_proj.weight"].numpy().ravel() for i in range(4)])
    assert abs(proj.std() - 0.02 / np.sqrt(8)) < 0.001  # scaled residual projections
    assert (names["transformer.h.0.attn.c_attn.bias"].numpy() == 0).all()
    assert (names["transformer.h.0.ln_1.weight"].numpy() == 1).all()
    assert all(p.dtype == np.float32 for p in model.parameters())


@pytest.mark.parametrize("kw", [{}, dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False),
                                dict(tie_weights=False, n_head=4, n_kv_head=2)])
def test_param_count_formula_matches_the_model(kw):
    cfg = tiny(**kw)
    assert GPT(cfg).num_parameters() == cfg.num_parameters()


def test_gpt2_124m_parameter_count_from_shapes():
    assert GPTConfig(vocab_size=50257, block_size=1024).num_parameters() == 124_439_808


@pytest.mark.slow
def test_gpt2_124m_parameter_count_constructed():
    assert GPT(GPTConfig(vocab_size=50257, block_size=1024)).num_parameters() == 124_439_808


def test_forward_errors_name_the_problem():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="length 9 is longer than block_size 8"):
        model(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="token id 11 is outside the vocabulary"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="integer token ids"):
        model(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="targets of shape"):
        model(np.zeros((2, 3), dtype=np.int64), np.zeros((2, 4), dtype=np.int64))


def test_forward_shapes_and_initial_loss():
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 50, (3, 16)), rng.integers(0, 50, (3, 16))
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, 50) and logits.dtype == np.float32
    assert abs(loss.item() - np.log(50)) < 0.1  # small init: close to uniform
    logits2, none = model(x)
    assert none is None
    np.testing.assert_array_equal(logits.numpy(), logits2.numpy())


@pytest.mark.parametrize("kw", [{}, dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_head=4, n_kv_head=2)])
def test_tiny_gpt_overfits_one_batch(kw):
    tl.manual_seed(0)
    model = GPT(GPTConfig(**{**dict(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=32), **kw}))
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 16, (4, 8)), rng.integers(0, 16, (4, 8))
    for _ in range(150):
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05, loss.item()


VARIANTS = {
    "gpt2": {},
    "rope": dict(pos="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "gqa": dict(n_head=4, n_kv_head=2),
    "mqa-nobias-untied": dict(n_head=2, n_kv_head=1, bias=False, tie_weights=False),
    "all": dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_head=4, n_kv_head=1, bias=False),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_whole_gpt_gradchecks_in_float64(name):
    tl.manual_seed(1)
    cfg = GPTConfig(**{**dict(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8), **VARIANTS[name]})
    model = GPT(cfg, dtype=np.float64)
    rng = np.random.default_rng(2)
    for n, p in model.named_parameters():  # random gains and biases too, so no gradient is special
        p.data[...] = rng.standard_normal(p.shape) * (0.5 if p.ndim == 2 else 0.3) + (1.0 if "ln_" in n and
                                                                                      n.endswith("weight") else 0.0)
    x, y = rng.integers(0, 7, (2, 5)), rng.integers(0, 7, (2, 5))
    params = list(model.parameters())
    assert all(p.dtype == np.float64 for p in params)
    tl.gradcheck(lambda *ps: model(x, y)[1], params, eps=1e-6, atol=1e-7, rtol=1e-4, max_full=96, directions=6)
    # and the logits themselves (every position, not only through the loss)
    tl.gradcheck(lambda *ps: model(x)[0], params, eps=1e-6, atol=1e-7, rtol=1e-4, max_full=0, directions=3)


# --------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("kw", [{}, dict(pos="rope", n_head=4, n_kv_head=2, mlp="swiglu")])
def test_greedy_kv_cache_equals_no_cache_across_the_crop(kw):
    tl.manual_seed(3)
    model = GPT(GPTConfig(**{**dict(vocab_size=20, block_size=10, n_layer=2, n_head=2, n_embd=16), **kw}))
    for p in model.parameters():  # larger weights: distinct logits, so greedy choices mean something
        p.data[...] *= 20
    prompt = np.array([[1, 5, 7], [2, 2, 9]])
    a = model.generate(prompt, 15, temperature=0, use_cache=True).numpy()
    b = model.generate(prompt, 15, temperature=0, use_cache=False).numpy()
    assert a.shape == (2, 18)
    np.testing.assert_array_equal(a, b)  # includes 8 steps past block_size (cropped context)
    np.testing.assert_array_equal(a[:, :3], prompt)
    assert len(set(a[0, 3:].tolist())) > 1


def test_cached_logits_match_full_forward():
    tl.manual_seed(4)
    model = GPT(tiny(pos="rope", n_kv_head=1)).eval()
    from tinygrad_llm.models import KVCache
    x = np.random.default_rng(0).integers(0, 11, (2, 7))
    with tl.no_grad():
        full, _ = model(x)
        cache = KVCache(model.config, 2, np.float32, np)
        first, _ = model(x[:, :4], cache=cache)
        rest = [model(x[:, t:t + 1], cache=cache)[0].numpy() for t in range(4, 7)]
    got = np.concatenate([first.numpy()] + rest, axis=1)
    np.testing.assert_allclose(got, full.numpy(), rtol=1e-5, atol=1e-5)


def test_sampling_seeded_and_options():
    tl.manual_seed(5)
    model = GPT(tiny())
    prompt = np.array([[1, 2]])
    a = model.generate(prompt, 6, temperature=1.0, seed=7).numpy()
    b = model.generate(prompt, 6, temperature=1.0, seed=7).numpy()
    np.testing.assert_array_equal(a, b)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    assert set(sample_next(np.repeat(logits, 200, 0), top_k=2, rng=rng)) == {0, 1}
    assert set(sample_next(np.repeat(logits, 200, 0), top_p=0.7, rng=rng)) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(sample_next(np.repeat(logits, 200, 0), top_p=0.4, rng=rng)) == {0}
    counts = np.bincount(sample_next(np.repeat(logits, 4000, 0), rng=rng), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, 2, top_p=1.5)


def test_generation_stops_at_eos():
    tl.manual_seed(6)
    model = GPT(tiny())
    for p in model.parameters():
        p.data[...] = 0
    # zero weights: the final norm outputs its bias (all ones), so the logits are the head's row sums
    model.lm_head.weight.data[3] = 1.0
    model.transformer.ln_f.bias.data[...] = 1.0
    out = model.generate(np.array([[1]]), 10, temperature=0, eos_id=3).numpy()
    assert out.tolist() == [[1, 3]]
