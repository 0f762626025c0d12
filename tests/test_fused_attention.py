"""Scaled dot-product attention: float64 gradcheck on hypothesis shapes (T = 1, T_q != T_k,
grouped-query heads, causal or not, custom scale), float32 forward against a plain NumPy
reference, the recompute-from-lse path, huge scores, KV-cache agreement, PyTorch, shape errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops import attention


def np_attention(q, k, v, causal=True, scale=None):
    """Textbook attention in float64, key/value heads repeated for the query heads they serve."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    Tq, Tk = q.shape[2], k.shape[2]
    s = q @ k.swapaxes(-1, -2) * (1 / np.sqrt(q.shape[-1]) if scale is None else scale)
    if causal:
        s = np.where(np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@st.composite
def problems(draw):
    B, Hk, g = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Tq = draw(st.integers(1, 4))
    Tk = Tq + draw(st.integers(0, 2))
    D, Dv = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    causal = draw(st.booleans())
    scale = draw(st.sampled_from([None, 0.7]))
    rng = np.random.default_rng(draw(seeds))
    q = rng.standard_normal((B, Hk * g, Tq, D))
    k = rng.standard_normal((B, Hk, Tk, D))
    v = rng.standard_normal((B, Hk, Tk, Dv))
    return q, k, v, causal, scale


def _check(q, k, v, causal, scale, device):
    want = np_attention(q, k, v, causal, scale)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        got = F.scaled_dot_product_attention(*(Tensor(a.astype(dtype), device=device) for a in (q, k, v)),
                                             causal=causal, scale=scale)
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=tol, atol=tol)
    ts = [Tensor(a, device=device, requires_grad=True) for a in (q, k, v)]
    assert tl.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal, scale=scale),
                        ts, atol=1e-7, rtol=1e-5)


@SETTINGS
@given(p=problems())
def test_gradcheck_and_forward(device, p):
    _check(*p, device)


@SETTINGS
@given(p=problems())
def test_recompute_from_lse(device, p, monkeypatch):
    monkeypatch.setattr(attention, "SAVE_PROBS_MAX_BYTES", 0)
    _check(*p, device)


@pytest.mark.parametrize("save", [True, False])
@SETTINGS
@given(p=problems())
def test_causal_query_blocks(device, save, p, monkeypatch):
    """Blocks of 2 query rows, each against only the keys it can see (as for T >= 128)."""
    monkeypatch.setattr(attention, "BLOCK_ROWS", 2)
    monkeypatch.setattr(attention, "BLOCK_MIN_T", 2)
    if not save:
        monkeypatch.setattr(attention, "SAVE_PROBS_MAX_BYTES", 0)
    q, k, v, _, scale = p
    _check(q, k, v, True, scale, device)


def test_huge_scores_take_the_shifted_path():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 5, 3)) * 30
    k = rng.standard_normal((1, 1, 5, 3)) * 30  # scores of several hundred: exp overflows unshifted
    v = rng.standard_normal((1, 1, 5, 2))
    _check(q, k, v, True, None, "cpu")
    out = F.scaled_dot_product_attention(*(Tensor(a.astype(np.float32)) for a in (q, k, v)))
    assert np.isfinite(out.numpy()).all()


def test_one_new_query_matches_the_last_row_of_full_attention():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 4, 7, 8)).astype(np.float32)
    k = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    v = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    full = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).numpy()
    last = F.scaled_dot_product_attention(Tensor(q[:, :, -1:]), Tensor(k), Tensor(v)).numpy()
    np.testing.assert_allclose(last, full[:, :, -1:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_matches_torch(causal):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 6, 9, 16)).astype(np.float32)
    k = rng.standard_normal((2, 3, 12, 16)).astype(np.float32)
    v = rng.standard_normal((2, 3, 12, 16)).astype(np.float32)
    dy = rng.standard_normal((2, 6, 9, 16)).astype(np.float32)
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, causal=causal)
    out.backward(Tensor(dy))
    tt = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    # torch's is_causal aligns the mask top-left when T_q != T_k; pass ours (bottom-right) explicitly
    mask = torch.tensor(np.arange(12)[None, :] <= np.arange(9)[:, None] + 3) if causal else None
    tout = torch.nn.functional.scaled_dot_product_attention(*tt, attn_mask=mask, enable_gqa=True)
    tout.backward(torch.tensor(dy))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-5, atol=1e-5)
    for a, t in zip(ts, tt):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_saves_no_attention_matrix_when_told(monkeypatch):
    monkeypatch.setattr(attention, "SAVE_PROBS_MAX_BYTES", 0)
    q = Tensor(np.ones((1, 1, 4, 2), np.float32), requires_grad=True)
    out = F.scaled_dot_product_attention(q, q, q)
    saved = out._ctx.saved
    assert out._ctx.Es is None and not any(a.shape[-2:] == (4, 4) for a in saved)  # no (.., T, T)
    assert saved[-1].shape == (1, 1, 1, 4)  # the log-sum-exp per row


def test_shape_errors_name_the_shapes():
    z = lambda *s: Tensor(np.zeros(s, np.float32))  # noqa: E731
    with pytest.raises(ValueError, match=r"q \(1, 2, 3, 4\), k \(1, 2, 3, 5\), v \(1, 2, 3, 4\)"):
        F.scaled_dot_product_attention(z(1, 2, 3, 4), z(1, 2, 3, 5), z(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"3 query heads are not a multiple of 2"):
        F.scaled_dot_product_attention(z(1, 3, 3, 4), z(1, 2, 3, 4), z(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"must be \(B, H, T, D\).*q \(3, 3, 4\)"):
        F.scaled_dot_product_attention(z(3, 3, 4), z(1, 2, 3, 4), z(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"k \(1, 2, 3, 4\), v \(1, 2, 5, 4\)"):
        F.scaled_dot_product_attention(z(1, 2, 3, 4), z(1, 2, 3, 4), z(1, 2, 5, 4))
    with pytest.raises(ValueError, match=r"T_q 5 > T_k 3"):
        F.scaled_dot_product_attention(z(1, 2, 5, 4), z(1, 2, 3, 4), z(1, 2, 3, 4))
    F.scaled_dot_product_attention(z(1, 2, 5, 4), z(1, 2, 3, 4), z(1, 2, 3, 4), causal=False)


@st.composite
def packed_problems(draw):
    B, Hk, g = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    T, D = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(seeds))
    qkv = rng.standard_normal((B, T, (Hk * g + 2 * Hk) * D))
    return qkv, Hk * g, Hk, draw(st.booleans()), draw(st.sampled_from([None, 0.7]))


def _unpacked(qkv, nh, nkv, causal, scale):
    """The same attention the long way: split the heads, attend, merge the heads."""
    B, T, W = qkv.shape
    h = qkv.reshape(B, T, nh + 2 * nkv, -1).transpose(0, 2, 1, 3)
    y = F.scaled_dot_product_attention(h[:, :nh], h[:, nh:nh + nkv], h[:, nh + nkv:], causal=causal,
                                       scale=scale)
    return y.transpose(0, 2, 1, 3).reshape(B, T, -1)


@pytest.mark.parametrize("mode", ["default", "blocks", "blocks_recompute"])
@SETTINGS
@given(p=packed_problems())
def test_qkv_attention_equals_split_attend_merge(device, mode, p, monkeypatch):
    if mode != "default":  # causal query blocks (and P rebuilt from the log-sum-exp) at tiny T
        monkeypatch.setattr(attention, "BLOCK_ROWS", 2)
        monkeypatch.setattr(attention, "BLOCK_MIN_T", 2)
    if mode == "blocks_recompute":
        monkeypatch.setattr(attention, "SAVE_PROBS_MAX_BYTES", 0)
    qkv, nh, nkv, causal, scale = p
    B, T, W = qkv.shape
    D = W // (nh + 2 * nkv)
    h = qkv.reshape(B, T, nh + 2 * nkv, D).transpose(0, 2, 1, 3)
    want = np_attention(h[:, :nh], h[:, nh:nh + nkv], h[:, nh + nkv:], causal, scale)
    want = want.transpose(0, 2, 1, 3).reshape(B, T, nh * D)
    got = F.qkv_attention(Tensor(qkv, device=device), nh, nkv, causal=causal, scale=scale)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    t = Tensor(qkv, device=device, requires_grad=True)
    assert tl.gradcheck(lambda a: F.qkv_attention(a, nh, nkv, causal=causal, scale=scale), [t],
                        atol=1e-7, rtol=1e-5)
    # the same gradient as the long way, to rounding (float32: the GPT's dtype)
    a32 = Tensor(qkv.astype(np.float32), device=device, requires_grad=True)
    b32 = Tensor(qkv.astype(np.float32), device=device, requires_grad=True)
    dy = np.random.default_rng(0).standard_normal((B, T, nh * D)).astype(np.float32)
    F.qkv_attention(a32, nh, nkv, causal=causal, scale=scale).backward(Tensor(dy, device=device))
    _unpacked(b32, nh, nkv, causal, scale).backward(Tensor(dy, device=device))
    np.testing.assert_allclose(a32.grad.numpy(), b32.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_qkv_attention_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"\(2, 3, 10\).*n_head \+ 2 n_kv_head = 2 \+ 2 x 1"):
        F.qkv_attention(Tensor(np.zeros((2, 3, 10))), 2, 1)  # 4 heads do not divide 10
    with pytest.raises(ValueError, match=r"must be \(B, T"):
        F.qkv_attention(Tensor(np.zeros((3, 12))), 2, 1)
