"""Sliding-window attention and soft-capped scores in the attention op: the window rule itself, the
tuned path against the textbook (forward and backward, with query blocks, saved or rebuilt
probabilities, grouped heads, segment ids), float64 gradchecks on hypothesis shapes, PyTorch, the
flash kernel's dispatch falling back, and the errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops import attention


@st.composite
def problems(draw):
    B, Hk, g = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    Tq = draw(st.integers(1, 6))
    Tk = Tq + draw(st.integers(0, 3))
    D = draw(st.integers(1, 4))
    window = draw(st.one_of(st.none(), st.integers(1, Tk + 1)))
    softcap = draw(st.sampled_from([None, 0.5, 2.0]))
    if window is None and softcap is None:
        window = 2
    rng = np.random.default_rng(draw(seeds))
    q = rng.standard_normal((B, Hk * g, Tq, D)) * 1.5  # scores of a few units: the cap bends them
    k = rng.standard_normal((B, Hk, Tk, D))
    v = rng.standard_normal((B, Hk, Tk, D))
    ids = None
    if draw(st.booleans()):
        ids = np.sort(rng.integers(0, 2, size=(B, Tk)), axis=1)
    scale = draw(st.sampled_from([None, 0.8]))
    return q, k, v, scale, ids, window, softcap


def _check(q, k, v, scale, ids, window, softcap, device="cpu"):
    kw = dict(causal=True, scale=scale, segment_ids=ids, window=window, softcap=softcap)
    dy = np.random.default_rng(1).standard_normal(q.shape[:3] + (v.shape[-1],))
    ts = [Tensor(a, device=device, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, **kw)
    out.backward(Tensor(dy, device=device))
    want_o, _ = attention.attention_textbook(q, k, v, True, scale, ids, window, softcap)
    np.testing.assert_allclose(out.numpy(), want_o, rtol=1e-10, atol=1e-12)
    want = attention.attention_backward_textbook(dy, q, k, v, True, scale, ids, window, softcap)
    for t, w in zip(ts, want):
        np.testing.assert_allclose(t.grad.numpy(), w, rtol=1e-9, atol=1e-11)
    ts = [Tensor(a, device=device, requires_grad=True) for a in (q, k, v)]
    assert tl.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, **kw), ts,
                        atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("mode", ["default", "query_blocks", "recompute"])
@SETTINGS
@given(p=problems())
def test_against_the_textbook_and_gradcheck(device, mode, p, monkeypatch):
    if mode != "default":  # causal query blocks of 2 rows (as for T >= 256): windows skip keys
        monkeypatch.setattr(attention, "QUERY_BLOCK_ROWS", 2)
        monkeypatch.setattr(attention, "QUERY_BLOCK_MIN_T", 2)
    if mode == "recompute":
        monkeypatch.setattr(attention, "SAVE_PROBS_MAX_BYTES", 0)
    _check(*p, device)


def test_the_window_rule():
    """Query at position p sees key j iff p - W < j <= p: W keys, its own included."""
    Tq, Tk, W = 3, 6, 2
    see = attention.visible(Tq, Tk, True, window=W)[0, 0]
    for i in range(Tq):
        p = i + Tk - Tq
        assert [j for j in range(Tk) if see[i, j]] == [p - 1, p]
    # a window at least as long as the sequence hides nothing the causal mask shows
    np.testing.assert_array_equal(attention.visible(5, 5, True, window=5), attention.visible(5, 5, True))
    assert attention.query_blocks(6, 6, True, window=2) == [(0, 6, 0, 6)]


def test_query_blocks_skip_the_keys_before_the_window(monkeypatch):
    monkeypatch.setattr(attention, "QUERY_BLOCK_ROWS", 4)
    monkeypatch.setattr(attention, "QUERY_BLOCK_MIN_T", 2)
    assert attention.query_blocks(12, 12, True, window=3) == [(0, 4, 0, 4), (4, 8, 2, 8), (8, 12, 6, 12)]
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 12, 4)) for _ in range(3))
    _check(q, k, v, None, None, 3, None)


def test_window_one_is_each_query_alone():
    """W = 1: a query sees only its own key, so o = v, dq = dk = 0 and dv = dO."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((1, 2, 5, 3)) for _ in range(3))
    dy = rng.standard_normal((1, 2, 5, 3))
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, window=1)
    out.backward(Tensor(dy))
    np.testing.assert_allclose(out.numpy(), v, rtol=1e-12)
    np.testing.assert_allclose(ts[0].grad.numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(ts[1].grad.numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(ts[2].grad.numpy(), dy, rtol=1e-12)


def test_soft_cap_bounds_huge_scores():
    """Scores of several hundred are capped to (-cap, cap): the softmax of a capped row stays close
    to uniform over the capped scores, the float32 result finite and equal to float64's."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 1, 4, 3)) * 30 for _ in range(3))
    got = F.scaled_dot_product_attention(*(Tensor(a.astype(np.float32)) for a in (q, k, v)), softcap=5.0)
    want, P = attention.attention_textbook(q, k, v, True, None, None, None, 5.0)
    assert np.isfinite(got.numpy()).all()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    assert P[0, 0, -1].min() >= np.exp(-10) / 4  # logits within 2 cap of each other


def test_one_new_query_after_a_cache_matches_the_last_row():
    rng = np.random.default_rng(6)
    q = rng.standard_normal((1, 2, 7, 4)).astype(np.float32)
    k, v = (rng.standard_normal((1, 1, 7, 4)).astype(np.float32) for _ in range(2))
    full = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), window=3, softcap=2.0).numpy()
    last = F.scaled_dot_product_attention(Tensor(q[:, :, -1:]), Tensor(k[:, :, -3:]), Tensor(v[:, :, -3:]),
                                          window=3, softcap=2.0).numpy()
    np.testing.assert_allclose(last, full[:, :, -1:], rtol=1e-5, atol=1e-6)


def test_errors_name_the_option():
    z = Tensor(np.zeros((1, 1, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"window must be an integer >= 1.*got 0"):
        F.scaled_dot_product_attention(z, z, z, window=0)
    with pytest.raises(ValueError, match=r"sliding window .* needs causal=True"):
        F.scaled_dot_product_attention(z, z, z, causal=False, window=2)
    with pytest.raises(ValueError, match=r"softcap must be a finite number > 0, got -1.0"):
        F.scaled_dot_product_attention(z, z, z, softcap=-1.0)


class RecordingGlue:
    def __init__(self):
        self.calls = 0

    def flash_attention_forward(self, *args, **kwargs):
        self.calls += 1
        raise AssertionError("the flash kernel serves no window or softcap")


@pytest.mark.parametrize("option", [{"softcap": 3.0}, {"softcap": 3.0, "window": 2}])
def test_the_flash_kernel_is_not_handed_softcaps(monkeypatch, option):
    """Where the kernel would serve (a stand-in says it does), a softcap still sends the op down the
    xp path, which computes it: nothing is dropped on the way."""
    glue = RecordingGlue()
    monkeypatch.setattr(attention, "flash_kernels", lambda q, k, v: glue)
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((1, 2, 5, 4)) for _ in range(3))
    out = F.scaled_dot_product_attention(*(Tensor(a) for a in (q, k, v)), **option)
    want, _ = attention.attention_textbook(q, k, v, True, None, None, option.get("window"), option.get("softcap"))
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12)
    assert glue.calls == 0


@pytest.mark.reference
@pytest.mark.parametrize("window, softcap", [(3, None), (None, 2.0), (2, 1.5)])
def test_matches_torch(window, softcap):
    """PyTorch's attention with transformers' window mask (kv_idx > q_idx - W) and Gemma 2's cap."""
    torch = pytest.importorskip("torch", reason="the parity test needs PyTorch")
    rng = np.random.default_rng(8)
    q = rng.standard_normal((2, 4, 6, 8))
    k, v = (rng.standard_normal((2, 2, 6, 8)) for _ in range(2))
    dy = rng.standard_normal((2, 4, 6, 8))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    S = tq @ tk.repeat_interleave(2, 1).transpose(-1, -2) / np.sqrt(8)
    if softcap is not None:
        S = softcap * torch.tanh(S / softcap)
    i, j = torch.arange(6)[:, None], torch.arange(6)[None, :]
    see = j <= i
    if window is not None:
        see &= j > i - window
    S = S.masked_fill(~see, float("-inf"))
    want = torch.softmax(S, -1) @ tv.repeat_interleave(2, 1)
    want.backward(torch.tensor(dy))
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    got = F.scaled_dot_product_attention(*ts, window=window, softcap=softcap)
    got.backward(Tensor(dy))
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-10, atol=1e-12)
    for t, w in zip(ts, (tq, tk, tv)):
        np.testing.assert_allclose(t.grad.numpy(), w.grad.numpy(), rtol=1e-9, atol=1e-11)


@SETTINGS
@given(B=st.integers(1, 2), Hk=st.integers(1, 2), g=st.integers(1, 3), Tk=st.integers(1, 7), D=st.integers(1, 4),
       softcap=st.sampled_from([None, 1.5]), causal=st.booleans(), seed=seeds)
def test_the_decode_step_path_against_the_textbook(monkeypatch, B, Hk, g, Tk, D, softcap, causal, seed):
    """One query per head under no_grad takes attention_decode_cpu (the general loop is not run)
    and equals the textbook; with a gradient wanted, the general path runs."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, Hk * g, 1, D)) * 2
    k, v = rng.standard_normal((B, Hk, Tk, D)), rng.standard_normal((B, Hk, Tk, D))
    window = Tk if causal else None  # a window no shorter than the keys hides nothing
    want, _ = attention.attention_textbook(q, k, v, causal, None, None, window, softcap)
    loop = attention.attention_forward_cpu

    def refuse(*a, **kw):
        raise AssertionError("the general loop ran for a decoding step")
    monkeypatch.setattr(attention, "attention_forward_cpu", refuse)
    with tl.no_grad():
        got = F.scaled_dot_product_attention(*(Tensor(a) for a in (q, k, v)), causal=causal, window=window,
                                             softcap=softcap)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(attention, "attention_forward_cpu", loop)
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    F.scaled_dot_product_attention(*ts, causal=causal, window=window, softcap=softcap).sum().backward()
    assert ts[0].grad is not None
