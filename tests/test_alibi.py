"""ALiBi in the attention op: the paper's slopes, the bias against its definition (causal, KV-cache
offset, grouped heads, segment ids), float64 gradchecks on hypothesis shapes through both ops and
every CPU path (saved or rebuilt probabilities, query blocks, the decode step), a GPT with ALiBi
generating the same tokens with and without its KV cache, and the errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.ops import attention
from tinygrad_llm.ops.alibi import alibi_slopes


def test_slopes_for_powers_of_two_are_the_geometric_sequence():
    for n in (1, 2, 4, 8, 16):
        np.testing.assert_allclose(alibi_slopes(n), 2.0 ** (-8.0 * np.arange(1, n + 1) / n), rtol=1e-13)
    np.testing.assert_allclose(alibi_slopes(8), [1 / 2 ** h for h in range(1, 9)], rtol=1e-13)


@pytest.mark.parametrize("n", [3, 5, 6, 12, 20])
def test_other_head_counts_take_the_closest_power_then_interleaved_slopes(n):
    """The paper's rule: the 2^floor(log2 n) slopes, then every other slope of twice as many heads."""
    closest = 2 ** int(np.floor(np.log2(n)))
    s = alibi_slopes(n)
    assert s.shape == (n,) and len(set(s)) == n
    np.testing.assert_allclose(s[:closest], alibi_slopes(closest), rtol=1e-13)
    np.testing.assert_allclose(s[closest:], alibi_slopes(2 * closest)[0::2][:n - closest], rtol=1e-13)
    assert ((s > 0) & (s < 1)).all()


def brute_force(q, k, v, slopes, ids=None):
    """o by the definition, one query head and one query at a time: s_ij = q.k / sqrt(D) - m_h (p - j)."""
    B, H, Tq, D = q.shape
    Hk, Tk = k.shape[1], k.shape[2]
    o = np.zeros(q.shape[:3] + (v.shape[-1],))
    for b in range(B):
        for h in range(H):
            kv = h // (H // Hk)
            for i in range(Tq):
                p = i + Tk - Tq
                js = [j for j in range(p + 1) if ids is None or ids[b, j] == ids[b, p]]
                s = np.array([q[b, h, i] @ k[b, kv, j] / np.sqrt(D) - slopes[h] * (p - j) for j in js])
                w = np.exp(s - s.max())
                o[b, h, i] = (w / w.sum()) @ v[b, kv, js]
    return o


def test_the_bias_is_minus_slope_times_distance_from_the_absolute_position():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 6, 3, 4))  # 6 query heads on 2 k/v heads; 3 queries after 4 cached keys
    k, v = rng.standard_normal((2, 2, 7, 4)), rng.standard_normal((2, 2, 7, 4))
    ids = np.array([[0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 2, 2]])
    slopes = alibi_slopes(6) * 4  # large enough to change the answer a lot
    for seg in (None, ids):
        got = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), segment_ids=seg,
                                             alibi_slopes=slopes).numpy()
        np.testing.assert_allclose(got, brute_force(q, k, v, slopes, seg), rtol=1e-12, atol=1e-13)
    plain = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).numpy()
    assert np.abs(plain - got).max() > 0.1  # the slopes are not silently dropped


@st.composite
def problems(draw):
    B, Hk, g = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Tq = draw(st.integers(1, 6))
    Tk = Tq + draw(st.integers(0, 3))
    D = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(seeds))
    q, k, v = rng.standard_normal((B, Hk * g, Tq, D)), rng.standard_normal((B, Hk, Tk, D)), \
        rng.standard_normal((B, Hk, Tk, D))
    ids = np.sort(rng.integers(0, 2, size=(B, Tk)), axis=1) if draw(st.booleans()) else None
    window = draw(st.sampled_from([None, None, 2]))
    slopes = alibi_slopes(Hk * g) * draw(st.sampled_from([1.0, 3.0]))
    return q, k, v, ids, window, slopes


@pytest.mark.parametrize("mode", ["default", "query_blocks", "recompute"])
@SETTINGS
@given(p=problems())
def test_against_the_textbook_and_gradcheck(device, mode, p, monkeypatch):
    if mode != "default":
        monkeypatch.setattr(attention, "QUERY_BLOCK_ROWS", 2)
        monkeypatch.setattr(attention, "QUERY_BLOCK_MIN_T", 2)
    if mode == "recompute":
        monkeypatch.setattr(attention, "SAVE_PROBS_MAX_BYTES", 0)
    q, k, v, ids, window, slopes = p
    kw = dict(segment_ids=ids, window=window, alibi_slopes=slopes)
    dy = np.random.default_rng(1).standard_normal(q.shape)
    ts = [Tensor(a, device=device, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, **kw)
    out.backward(Tensor(dy, device=device))
    np.testing.assert_allclose(out.numpy(), attention.attention_textbook(q, k, v, True, None, ids, window,
                                                                         None, slopes)[0], rtol=1e-10, atol=1e-12)
    want = attention.attention_backward_textbook(dy, q, k, v, True, None, ids, window, None, slopes)
    for t, w in zip(ts, want):
        np.testing.assert_allclose(t.grad.numpy(), w, rtol=1e-9, atol=1e-11)
    ts = [Tensor(a, device=device, requires_grad=True) for a in (q, k, v)]
    assert tl.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, **kw), ts, atol=1e-7, rtol=1e-5)


@SETTINGS
@given(p=problems())
def test_packed_qkv_op_gradcheck(device, p):
    """QKVAttention (the training path of a GPT without RoPE) with ALiBi: same output, gradchecked."""
    q, k, v, ids, _, slopes = p
    if q.shape[2] != k.shape[2]:
        k, v = k[:, :, -q.shape[2]:], v[:, :, -q.shape[2]:]
        ids = None if ids is None else ids[:, -q.shape[2]:]
    B, H, T, _ = q.shape
    qkv = np.concatenate([a.transpose(0, 2, 1, 3) for a in (q, k, v)], axis=2).reshape(B, T, -1)
    t = Tensor(qkv, device=device, requires_grad=True)
    fn = lambda x: F.qkv_attention(x, H, k.shape[1], segment_ids=ids, alibi_slopes=slopes)
    want = attention.attention_textbook(q, k, v, True, None, ids, None, None, slopes)[0]
    np.testing.assert_allclose(fn(t).numpy(), want.transpose(0, 2, 1, 3).reshape(B, T, -1), rtol=1e-10,
                               atol=1e-12)
    assert tl.gradcheck(fn, [t], atol=1e-7, rtol=1e-5)


def test_the_decode_step_matches_the_full_rows():
    """One query after a cache (the decode path, no backward) sees the bias of its own position."""
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((2, 4, 1, 8)), rng.standard_normal((2, 2, 9, 8)), rng.standard_normal((2, 2, 9, 8))
    slopes = alibi_slopes(4)
    got = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), causal=False, alibi_slopes=slopes)
    np.testing.assert_allclose(got.numpy(), brute_force(q, k, v, slopes), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("pos", ["alibi", "alibi,none"])
def test_generation_with_the_kv_cache_matches_full_recompute(pos):
    cfg = GPTConfig(vocab_size=40, block_size=24, n_layer=2, n_head=6, n_kv_head=2, n_embd=48, pos=pos)
    model = GPT(cfg)
    prompt = np.random.default_rng(4).integers(0, 40, (2, 5))
    cached = model.generate(prompt, 30, temperature=0).numpy()  # past block_size: the window is rerun
    full = model.generate(prompt, 30, temperature=0, use_cache=False).numpy()
    np.testing.assert_array_equal(cached, full)
    # and the cached logits are the full forward's, position by position
    x = np.random.default_rng(5).integers(0, 40, (1, 12))
    from tinygrad_llm.models.gpt import KVCache
    with tl.no_grad():
        whole, _ = model(x)
        cache = KVCache(cfg, 1, np.float32, np)
        model(x[:, :7], cache=cache)
        step, _ = model(x[:, 7:8], cache=cache)
    np.testing.assert_allclose(step.numpy()[:, -1], whole.numpy()[:, 7], rtol=1e-4, atol=1e-5)


def test_bad_slopes_are_named():
    z = Tensor(np.zeros((1, 4, 3, 2)))
    with pytest.raises(ValueError, match=r"alibi_slopes of shape \(3,\) must be \(H,\) = \(4,\)"):
        F.scaled_dot_product_attention(z, z, z, alibi_slopes=np.ones(3))
    with pytest.raises(ValueError, match="alibi_slopes must be finite"):
        F.scaled_dot_product_attention(z, z, z, alibi_slopes=np.array([1, 1, np.nan, 1]))
    with pytest.raises(ValueError, match="n_head must be a positive integer"):
        alibi_slopes(0)
