"""nn.MLA: parity with transformers' DeepseekV3Attention, the absorbed path equal to the plain one
(values and gradients, with and without the latent cache), float64 gradchecks on hypothesis
shapes, the cache's size, and GPTConfig's attn="mla" checks."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds

import tinygrad_llm as tl
from tinygrad_llm import Tensor, nn
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.models.gpt import KVCache
from tinygrad_llm.ops.rope import rope_tables


def mla(seed=0, C=24, H=3, r=10, rope=4, nope=6, v=5, q_rank=None, bias=False):
    tl.manual_seed(seed)
    m = nn.MLA(C, H, r, rope, nope, v, q_lora_rank=q_rank, bias=bias, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for p in m.parameters():  # norm gains away from 1, biases away from 0: every path matters
        p.data[...] = rng.standard_normal(p.shape) * (0.3 if p.ndim == 2 else 0.2) + (1.0 if p.ndim == 1 else 0.0)
    return m


@pytest.mark.reference
@pytest.mark.parametrize("q_rank, bias", [(None, False), (12, True)])
def test_matches_transformers_deepseek_v3_attention(q_rank, bias):
    pytest.importorskip("transformers", reason="parity with DeepseekV3Attention needs transformers")
    import torch
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding
    C, H, B, T = 24, 3, 2, 7
    cfg = DeepseekV3Config(hidden_size=C, num_attention_heads=H, num_key_value_heads=H, q_lora_rank=q_rank,
                           kv_lora_rank=10, qk_rope_head_dim=4, qk_nope_head_dim=6, v_head_dim=5,
                           rope_interleave=False, attention_bias=bias)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    att = DeepseekV3Attention(cfg, 0).double().eval()
    for p in att.parameters():
        torch.nn.init.normal_(p, std=0.3)
    m = nn.MLA(C, H, 10, 4, 6, 5, q_lora_rank=q_rank, bias=bias, dtype=np.float64)
    m.load_state_dict({k: v.detach().double().numpy() for k, v in att.state_dict().items()})  # HF's names
    x = np.random.default_rng(0).standard_normal((B, T, C))
    cos, sin = DeepseekV3RotaryEmbedding(cfg)(torch.tensor(x), torch.arange(T)[None].expand(B, T))
    mask = torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), 1)[None, None]
    with torch.no_grad():
        want = att(torch.tensor(x), (cos.double(), sin.double()), mask)[0].numpy()
    tables = rope_tables(T, 4, cfg.rope_parameters["rope_theta"], dtype=np.float64)
    assert m.scale == pytest.approx(att.scaling)
    for absorbed in (False, True):  # transformers' rotary tables are float32: 1e-6
        np.testing.assert_allclose(m(Tensor(x), tables, absorbed=absorbed).numpy(), want, rtol=1e-6, atol=1e-6)


def _grads(m, x, tables, absorbed, segment_ids=None):
    for p in m.parameters():
        p.grad = None
    xt = Tensor(x, requires_grad=True)
    y = m(xt, tables, segment_ids=segment_ids, absorbed=absorbed)
    (y * Tensor(np.cos(np.arange(y.size)).reshape(y.shape))).sum().backward()
    return y.numpy(), [xt.grad.numpy()] + [p.grad.numpy() for p in m.parameters()]


@pytest.mark.parametrize("q_rank", [None, 8])
def test_absorbed_path_equals_the_plain_one_values_and_gradients(q_rank):
    m = mla(q_rank=q_rank, bias=True)
    B, T = 2, 6
    x = np.random.default_rng(1).standard_normal((B, T, 24))
    tables = rope_tables(T, 4, dtype=np.float64)
    seg = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    for segment_ids in (None, seg):
        y_plain, g_plain = _grads(m, x, tables, False, segment_ids)
        y_abs, g_abs = _grads(m, x, tables, True, segment_ids)
        np.testing.assert_allclose(y_abs, y_plain, rtol=1e-12, atol=1e-12)
        for a, b in zip(g_abs, g_plain):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


class _LatentCache:
    """The models' KVCache for one MLA layer (append_latent), small enough to read."""

    def __init__(self, B, T, r, rope):
        self.k, self.v, self.length = np.zeros((B, T, r)), np.zeros((B, T, rope)), 0

    def append_latent(self, c, k_rope):
        end = self.length + c.shape[1]
        self.k[:, self.length:end], self.v[:, self.length:end] = c.data, k_rope.data
        self.length = end
        return Tensor(self.k[:, :end]), Tensor(self.v[:, :end])


@pytest.mark.parametrize("absorbed", [True, False])
def test_decoding_from_the_latent_cache_matches_the_full_forward(absorbed):
    m = mla()
    B, T = 2, 7
    x = np.random.default_rng(2).standard_normal((B, T, 24))
    cos, sin = rope_tables(T, 4, dtype=np.float64)
    full = m(Tensor(x), (cos, sin)).numpy()
    cache = _LatentCache(B, T, 10, 4)
    with tl.no_grad():
        first = m(Tensor(x[:, :3]), (cos[:3], sin[:3]), cache=cache, absorbed=absorbed).numpy()
        steps = [m(Tensor(x[:, t:t + 1]), (cos[t:t + 1], sin[t:t + 1]), cache=cache, absorbed=absorbed).numpy()
                 for t in range(3, T)]
    np.testing.assert_allclose(np.concatenate([first] + steps, axis=1), full, rtol=1e-12, atol=1e-12)


@settings(SETTINGS, max_examples=10)  # each example checks every element of eleven parameters
@given(B=st.integers(1, 2), T=st.integers(1, 4), H=st.integers(1, 3), r=st.integers(1, 5),
       rope=st.sampled_from([2, 4]), nope=st.integers(1, 3), v=st.integers(1, 4),
       q_rank=st.sampled_from([None, 3]), absorbed=st.booleans(), seed=seeds)
def test_mla_gradcheck(B, T, H, r, rope, nope, v, q_rank, absorbed, seed):
    C = 6
    m = mla(seed, C, H, r, rope, nope, v, q_rank, bias=True)
    x = Tensor(np.random.default_rng(seed).standard_normal((B, T, C)), requires_grad=True)
    tables = rope_tables(T, rope, dtype=np.float64)
    assert tl.gradcheck(lambda *_: m(x, tables, absorbed=absorbed), [x] + list(m.parameters()),
                        atol=1e-7, rtol=1e-5)


def test_the_cache_keeps_the_latent_and_rope_key_only():
    common = dict(vocab_size=32, block_size=16, n_layer=2, n_head=4, n_embd=64, pos="rope")
    sizes = {}
    for name, kw in {"mha": {}, "gqa": dict(n_kv_head=1), "mla": dict(attn="mla")}.items():
        cfg = GPTConfig(**common, **kw)
        sizes[name] = KVCache(cfg, 3, np.float32, np).bytes_per_token()
    hs = 16  # n_embd / n_head
    assert sizes["mha"] == 2 * 2 * 4 * hs * 4  # layers x (k, v) x heads x hs x float32
    assert sizes["gqa"] == 2 * 2 * 1 * hs * 4
    assert sizes["mla"] == 2 * (4 * hs + hs // 2) * 4  # layers x (kv_lora_rank + rope) x float32
    assert sizes["gqa"] < sizes["mla"] < sizes["mha"]


def test_gpt_with_mla_generates_the_same_with_and_without_the_cache():
    tl.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=16, pos="rope",
                          attn="mla", mla_q_rank=8))
    prompt = np.random.default_rng(0).integers(0, 40, (2, 3))
    with_cache = model.generate(prompt, 12, temperature=0).numpy()  # past block_size: the cropped rerun
    without = model.generate(prompt, 12, temperature=0, use_cache=False).numpy()
    np.testing.assert_array_equal(with_cache, without)


@pytest.mark.parametrize("kwargs, message", [
    (dict(attn="mla"), r"attn='mla' carries its own rotary key and needs pos='rope', got pos='learned'"),
    (dict(attn="mla", pos="rope", n_kv_head=1), r"n_kv_head=1 must equal n_head=2"),
    (dict(attn="mla", pos="rope", mla_rope_dim=3), r"mla_rope_dim=3 must be even"),
    (dict(attn="mla", pos="rope", mla_kv_rank=0), r"mla_kv_rank must be a positive integer, got 0"),
    (dict(attn="flash"), r"attn='flash'; expected one of \('mha', 'mla'\)"),
])
def test_bad_mla_configs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16, **kwargs)
