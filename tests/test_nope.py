"""NoPE (pos="none") and per-layer position patterns in GPTConfig / GPT: the pattern rule, what each
layer does, the JSON round trip, generation with the KV cache, float64 gradchecks of a whole small
model, and the errors."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.models.positions import layer_positions


def small(pos, **kw):
    return GPTConfig(**{**dict(vocab_size=30, block_size=16, n_layer=4, n_head=4, n_kv_head=2, n_embd=16,
                               pos=pos), **kw})


def test_patterns_name_each_layer_and_repeat():
    assert layer_positions("none", 3) == ("none",) * 3
    assert layer_positions("rope,rope,rope,none", 8) == ("rope", "rope", "rope", "none") * 2
    assert layer_positions(["alibi", "none"], 4) == ("alibi", "none", "alibi", "none")
    assert small("rope, none").layer_pos == ("rope", "none", "rope", "none")  # spaces allowed
    cfg = small(("rope", "rope", "none", "none"))
    assert GPTConfig.from_dict(cfg.to_dict()).layer_pos == cfg.layer_pos  # a tuple round-trips as a list


def test_each_layer_gets_its_own_scheme():
    model = GPT(small("rope,alibi,none,rope"))
    attn = [b.attn for b in model.transformer.h]
    assert [a.pos for a in attn] == ["rope", "alibi", "none", "rope"]
    assert attn[1].slopes is not None and attn[0].slopes is None and attn[2].slopes is None
    assert not hasattr(model.transformer, "wpe")  # no table: no parameter count for one either
    assert model.config.num_parameters() == sum(p.size for p in model.parameters())


def test_nope_sees_order_only_through_the_mask():
    """Without positions or a mask, attention is permutation-equivariant; with the causal mask
    alone the first token's output depends on nothing after it, and a token's on its prefix only."""
    model = GPT(small("none"))
    x = np.random.default_rng(0).integers(0, 30, (1, 10))
    with tl.no_grad():
        full, _ = model(x)
        changed = x.copy()
        changed[0, 6:] = (changed[0, 6:] + 1) % 30
        other, _ = model(changed)
    np.testing.assert_allclose(full.numpy()[0, :6], other.numpy()[0, :6], rtol=1e-5, atol=1e-6)
    assert np.abs(full.numpy()[0, 6:] - other.numpy()[0, 6:]).max() > 1e-4


@pytest.mark.parametrize("pos", ["none", "rope,rope,rope,none", "alibi,none"])
def test_generation_with_the_kv_cache_matches_full_recompute(pos):
    model = GPT(small(pos))
    prompt = np.random.default_rng(1).integers(0, 30, (2, 4))
    cached = model.generate(prompt, 20, temperature=0).numpy()  # past block_size 16: the window is rerun
    np.testing.assert_array_equal(cached, model.generate(prompt, 20, temperature=0, use_cache=False).numpy())


@pytest.mark.parametrize("pos", ["none", "rope,alibi"])
def test_whole_model_gradcheck_in_float64(pos):
    cfg = small(pos, n_layer=2, n_embd=8, vocab_size=11, block_size=6)
    model = GPT(cfg, dtype=np.float64)
    x = np.random.default_rng(2).integers(0, 11, (2, 5))
    ids = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
    params = [model.transformer.h[0].attn.c_attn.weight, model.transformer.h[1].attn.c_attn.weight]

    def loss(*_):
        return model(x, x, segment_ids=ids)[1]
    assert tl.gradcheck(loss, params, atol=1e-6, rtol=1e-4)


def test_errors_name_the_field():
    with pytest.raises(ValueError, match=r"pos='rope,sin'.*got 'sin'"):
        small("rope,sin")
    with pytest.raises(ValueError, match="'learned' is one table at the input"):
        small("learned,rope")
    with pytest.raises(ValueError, match="n_layer=4 must be a multiple of that"):
        small("rope,rope,none")
    with pytest.raises(ValueError, match="attn='mla'.*needs pos='rope'"):
        GPTConfig(n_layer=2, n_head=2, n_embd=16, pos="rope,none", attn="mla")
    with pytest.raises(ValueError, match="has no RoPE layer"):
        small("alibi", rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="GPT: a sequence of length 17 is longer than block_size 16"):
        GPT(small("none"))(Tensor(np.zeros((1, 17), np.int64)))
