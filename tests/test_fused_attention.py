"""Scaled dot-product attention: the tuned path against the textbook version (forward and
backward) and float64 gradchecks on hypothesis shapes (T = 1, T_q != T_k, grouped-query heads,
causal or not, custom scale, segment ids), the recompute-from-lse path, huge scores, KV-cache
agreement, PyTorch, the flash kernel's dispatch through a stand-in, shape errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops import attention


def np_attention(q, k, v, causal=True, scale=None, segment_ids=None):
    return attention.attention_textbook(q, k, v, causal, scale, segment_ids)[0]


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
    monkeypatch.setattr(attention, "QUERY_BLOCK_ROWS", 2)
    monkeypatch.setattr(attention, "QUERY_BLOCK_MIN_T", 2)
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


@pytest.mark.reference
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
    o, qs, k, v, Es, inv_rowsum, lse, segment_ids = out._ctx.saved
    assert Es is None and inv_rowsum is None  # no (.., T, T) matrix
    assert lse.shape == (1, 1, 1, 4)  # the log-sum-exp per row


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
        monkeypatch.setattr(attention, "QUERY_BLOCK_ROWS", 2)
        monkeypatch.setattr(attention, "QUERY_BLOCK_MIN_T", 2)
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


# --- the tuned path against the textbook version --------------------------------------------

@st.composite
def segment_problems(draw):
    """Shapes as above (T_q <= T_k), with segment ids: packed documents (sorted ids, each
    document's first token sees only itself when causal) or any ids (any mask with the diagonal)."""
    B, Hk, g = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Tq = draw(st.integers(1, 5))
    Tk = Tq + draw(st.integers(0, 2))
    D, Dv = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(seeds))
    ids = rng.integers(0, draw(st.integers(1, 3)), size=(B, Tk))
    if draw(st.booleans()):
        ids = np.sort(ids, axis=1)
    q = rng.standard_normal((B, Hk * g, Tq, D))
    k = rng.standard_normal((B, Hk, Tk, D))
    v = rng.standard_normal((B, Hk, Tk, Dv))
    return q, k, v, draw(st.booleans()), draw(st.sampled_from([None, 0.7])), ids


def _check_against_textbook(q, k, v, causal, scale, ids, device):
    """Forward and backward of the op against attention_(backward_)textbook, float64 and float32,
    and a float64 gradcheck."""
    dy = np.random.default_rng(3).standard_normal(q.shape[:3] + v.shape[3:])
    want_o = np_attention(q, k, v, causal, scale, ids)
    want_grads = attention.attention_backward_textbook(dy, q, k, v, causal, scale, ids)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        ts = [Tensor(a.astype(dtype), device=device, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*ts, causal=causal, scale=scale, segment_ids=ids)
        out.backward(Tensor(dy.astype(dtype), device=device))
        np.testing.assert_allclose(out.numpy(), want_o, rtol=tol, atol=tol)
        for t, want in zip(ts, want_grads):
            assert t.grad.dtype == dtype
            np.testing.assert_allclose(t.grad.numpy(), want, rtol=tol, atol=tol)
    ts = [Tensor(a, device=device, requires_grad=True) for a in (q, k, v)]
    assert tl.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal, scale=scale,
                                                                       segment_ids=ids),
                        ts, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("mode", ["default", "query_blocks", "recompute"])
@SETTINGS
@given(p=segment_problems())
def test_segment_ids_against_the_textbook(device, mode, p, monkeypatch):
    if mode != "default":  # causal query blocks of 2 rows (as for T >= 256)
        monkeypatch.setattr(attention, "QUERY_BLOCK_ROWS", 2)
        monkeypatch.setattr(attention, "QUERY_BLOCK_MIN_T", 2)
    if mode == "recompute":
        monkeypatch.setattr(attention, "SAVE_PROBS_MAX_BYTES", 0)
    _check_against_textbook(*p, device)


@SETTINGS
@given(p=problems())
def test_backward_against_the_textbook(device, p):
    _check_against_textbook(*p, None, device)


def test_a_query_that_sees_only_itself():
    """Every token its own document: o = v, and P = 1 leaves dS = 1 * (dO.v - dO.o) = 0, so
    dq = dk = 0 while dv = dO."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, 2, 5, 3)) for _ in range(3))
    dy = rng.standard_normal((2, 2, 5, 3))
    ids = np.arange(10).reshape(2, 5)
    for causal in (True, False):
        ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*ts, causal=causal, segment_ids=Tensor(ids))
        out.backward(Tensor(dy))
        np.testing.assert_allclose(out.numpy(), v, rtol=1e-12)
        np.testing.assert_allclose(ts[0].grad.numpy(), 0, atol=1e-12)
        np.testing.assert_allclose(ts[1].grad.numpy(), 0, atol=1e-12)
        np.testing.assert_allclose(ts[2].grad.numpy(), dy, rtol=1e-12)


def test_a_query_whose_document_starts_at_its_own_key_sees_only_it_when_causal():
    """docs/backward.md#scaleddotproductattention: query i's own key is j = i + (T_k - T_q); with
    causal masking a document starting there leaves it only that key (P_ij = 1, O_i = V_j,
    dQ_i = 0, dV_j gets dO_i); without causal masking it sees the rest of its document too."""
    rng = np.random.default_rng(6)
    Tq, Tk = 3, 6  # queries are positions 3, 4, 5
    q, dy = rng.standard_normal((1, 1, Tq, 4)), rng.standard_normal((1, 1, Tq, 4))
    k, v = rng.standard_normal((1, 1, Tk, 4)), rng.standard_normal((1, 1, Tk, 4))
    ids = Tensor(np.array([[0, 0, 0, 0, 1, 1]]))  # document 1 starts at key 4, query 1's own key
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, causal=True, segment_ids=ids)
    out.backward(Tensor(dy))
    np.testing.assert_allclose(out.numpy()[0, 0, 1], v[0, 0, 4], rtol=1e-12)
    np.testing.assert_allclose(ts[0].grad.numpy()[0, 0, 1], 0, atol=1e-12)
    # dV_4 is dO_1 plus what query 2 (position 5, same document) sends it
    dv4_from_q2 = attention.attention_textbook(q, k, v, True, None, ids.numpy())[1][0, 0, 2, 4] * dy[0, 0, 2]
    np.testing.assert_allclose(ts[2].grad.numpy()[0, 0, 4], dy[0, 0, 1] + dv4_from_q2, rtol=1e-10)
    both_ways = F.scaled_dot_product_attention(*(Tensor(a) for a in (q, k, v)), causal=False, segment_ids=ids)
    assert not np.allclose(both_ways.numpy()[0, 0, 1], v[0, 0, 4])  # it sees key 5 as well


def test_query_head_h_reads_kv_head_h_over_g():
    """Grouped-query attention equals one attention per query head h against kv head h // g."""
    rng = np.random.default_rng(7)
    B, Hk, g, T, D = 2, 2, 3, 5, 4
    q = rng.standard_normal((B, Hk * g, T, D))
    k, v = rng.standard_normal((B, Hk, T, D)), rng.standard_normal((B, Hk, T, D))
    dy = rng.standard_normal((B, Hk * g, T, D))
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    F.scaled_dot_product_attention(*ts).backward(Tensor(dy))
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    for h in range(Hk * g):
        one = [Tensor(q[:, h:h + 1], requires_grad=True), Tensor(k[:, h // g:h // g + 1], requires_grad=True),
               Tensor(v[:, h // g:h // g + 1], requires_grad=True)]
        out = F.scaled_dot_product_attention(*one)
        out.backward(Tensor(dy[:, h:h + 1]))
        np.testing.assert_allclose(ts[0].grad.numpy()[:, h:h + 1], one[0].grad.numpy(), rtol=1e-12, atol=1e-14)
        dk[:, h // g:h // g + 1] += one[1].grad.numpy()  # a kv head's gradient: its group's sum
        dv[:, h // g:h // g + 1] += one[2].grad.numpy()
    np.testing.assert_allclose(ts[1].grad.numpy(), dk, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ts[2].grad.numpy(), dv, rtol=1e-12, atol=1e-14)


def test_packed_documents_equal_separate_sequences():
    """Two documents packed in one row with segment ids attend exactly as two separate rows."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 7, 4)).astype(np.float32) for _ in range(3))
    ids = np.array([[0, 0, 0, 1, 1, 1, 1]])
    packed = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), segment_ids=ids).numpy()
    for lo, hi in ((0, 3), (3, 7)):
        alone = F.scaled_dot_product_attention(*(Tensor(a[:, :, lo:hi]) for a in (q, k, v))).numpy()
        np.testing.assert_allclose(packed[:, :, lo:hi], alone, rtol=1e-6, atol=1e-6)


def test_segment_ids_with_a_kv_cache():
    """One new query against cached keys: its id is the last of the keys' ids."""
    rng = np.random.default_rng(6)
    q = rng.standard_normal((1, 2, 6, 4)).astype(np.float32)
    k, v = (rng.standard_normal((1, 1, 6, 4)).astype(np.float32) for _ in range(2))
    ids = np.array([[0, 0, 1, 1, 1, 2]]) + np.array([[0, 0, 0, 0, 0, -1]])  # last token in doc 1
    full = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), segment_ids=ids).numpy()
    last = F.scaled_dot_product_attention(Tensor(q[:, :, -1:]), Tensor(k), Tensor(v), causal=False,
                                          segment_ids=ids).numpy()
    np.testing.assert_allclose(last, full[:, :, -1:], rtol=1e-5, atol=1e-6)


def test_segment_id_errors_name_the_shapes():
    z = lambda *s: Tensor(np.zeros(s, np.float32))  # noqa: E731
    with pytest.raises(ValueError, match=r"\(B, T_k\) = \(1, 3\).*got \(1, 4\)"):
        F.scaled_dot_product_attention(z(1, 2, 3, 4), z(1, 2, 3, 4), z(1, 2, 3, 4), segment_ids=np.zeros((1, 4), int))
    with pytest.raises(TypeError, match=r"segment_ids must be integers, got float32"):
        F.scaled_dot_product_attention(z(1, 2, 3, 4), z(1, 2, 3, 4), z(1, 2, 3, 4), segment_ids=np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"T_q 5 must not exceed T_k 3"):
        F.scaled_dot_product_attention(z(1, 2, 5, 4), z(1, 2, 3, 4), z(1, 2, 3, 4), causal=False,
                                       segment_ids=np.zeros((1, 3), int))
    with pytest.raises(ValueError, match=r"qkv_attention|\(B, T_k\) = \(2, 3\)"):
        F.qkv_attention(z(2, 3, 12), 2, 1, segment_ids=np.zeros((2, 4), int))


@SETTINGS
@given(p=packed_problems(), ids_seed=seeds)
def test_qkv_attention_with_segment_ids(device, p, ids_seed):
    qkv, nh, nkv, causal, scale = p
    B, T, W = qkv.shape
    D = W // (nh + 2 * nkv)
    ids = np.sort(np.random.default_rng(ids_seed).integers(0, 3, size=(B, T)), axis=1)
    h = qkv.reshape(B, T, nh + 2 * nkv, D).transpose(0, 2, 1, 3)  # (B, nh + 2 nkv, T, D)
    want = np_attention(h[:, :nh], h[:, nh:nh + nkv], h[:, nh + nkv:], causal, scale, ids)
    want = want.transpose(0, 2, 1, 3).reshape(B, T, nh * D)
    got = F.qkv_attention(Tensor(qkv, device=device), nh, nkv, causal=causal, scale=scale, segment_ids=ids)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    t = Tensor(qkv, device=device, requires_grad=True)
    assert tl.gradcheck(lambda a: F.qkv_attention(a, nh, nkv, causal=causal, scale=scale, segment_ids=ids),
                        [t], atol=1e-7, rtol=1e-5)


# --- the flash kernel's dispatch, through a stand-in for its glue -------------------------------

class FakeFlashGlue:
    """Stands in for the flash kernel's glue on NumPy arrays: the textbook math behind the agreed
    interface, recording each call and the arrays it was handed."""

    def __init__(self):
        self.calls = []

    def flash_attention_forward(self, q, k, v, causal, scale, segment_ids=None, window=None, alibi_slopes=None):
        self.calls.append(("forward", q, k, v, causal, scale, segment_ids))
        self.masks = (window, alibi_slopes)
        o, P = attention.attention_textbook(q, k, v, causal, scale, segment_ids, window, None, alibi_slopes)
        g = q.shape[1] // k.shape[1]
        S = q.astype(np.float64) @ np.repeat(k, g, axis=1).swapaxes(-1, -2) * scale
        S = np.where(attention.visible(q.shape[2], k.shape[2], causal, segment_ids), S, -np.inf)
        lse = np.log(np.exp(S - S.max(-1, keepdims=True)).sum(-1)) + S.max(-1)
        return o.astype(q.dtype), lse.astype(np.float32)

    def flash_attention_backward(self, do, q, k, v, o, lse, causal, scale, segment_ids=None, window=None,
                                 alibi_slopes=None):
        self.calls.append(("backward", do, q, k, v, o, lse, causal, scale, segment_ids))
        grads = attention.attention_backward_textbook(do, q, k, v, causal, scale, segment_ids, window, None,
                                                      alibi_slopes)
        return tuple(g.astype(q.dtype) for g in grads)


@pytest.fixture
def fake_flash(monkeypatch):
    glue = FakeFlashGlue()
    monkeypatch.setattr(attention, "flash_kernels", lambda q, k, v: glue)
    return glue


def _assert_glue_contract(glue, B, H, Hk, Tq, Tk, D, causal, scale, ids):
    (fwd, q, k, v, c, s, seg), (bwd, do, *rest) = glue.calls
    assert (fwd, bwd) == ("forward", "backward") and (c, s) == (causal, scale)
    assert q.shape == (B, H, Tq, D) and k.shape == v.shape == (B, Hk, Tk, D)
    assert all(a.flags.c_contiguous for a in (q, k, v, do))  # the kernel reads raw pointers
    assert rest[-3:-1] == [causal, scale] and rest[-1] is seg
    assert rest[4].shape == (B, H, Tq)  # the log-sum-exp the forward returned comes back
    if ids is None:
        assert seg is None
    else:
        np.testing.assert_array_equal(seg, ids)


@pytest.mark.parametrize("with_ids", [False, True])
def test_sdpa_calls_the_flash_glue(fake_flash, with_ids):
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 4, 5, 3))
    k, v = (rng.standard_normal((2, 2, 6, 3)) for _ in range(2))
    dy = rng.standard_normal((2, 4, 5, 3))
    ids = np.sort(rng.integers(0, 2, size=(2, 6)), axis=1) if with_ids else None
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, segment_ids=ids)
    out.backward(Tensor(dy))
    _assert_glue_contract(fake_flash, 2, 4, 2, 5, 6, 3, True, 1 / np.sqrt(3), ids)
    np.testing.assert_allclose(out.numpy(), np_attention(q, k, v, True, None, ids), rtol=1e-12)
    for t, want in zip(ts, attention.attention_backward_textbook(dy, q, k, v, True, None, ids)):
        np.testing.assert_allclose(t.grad.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_ids", [False, True])
def test_qkv_attention_calls_the_flash_glue(fake_flash, with_ids):
    """The packed op hands the kernel contiguous heads and places its outputs and gradients where
    qkv's layout puts them."""
    rng = np.random.default_rng(8)
    B, T, nh, nkv, D = 2, 5, 4, 2, 3
    qkv = rng.standard_normal((B, T, (nh + 2 * nkv) * D))
    dy = rng.standard_normal((B, T, nh * D))
    ids = np.sort(rng.integers(0, 2, size=(B, T)), axis=1) if with_ids else None
    t = Tensor(qkv, requires_grad=True)
    y = F.qkv_attention(t, nh, nkv, segment_ids=ids)
    y.backward(Tensor(dy))
    _assert_glue_contract(fake_flash, B, nh, nkv, T, T, D, True, 1 / np.sqrt(D), ids)
    h = qkv.reshape(B, T, nh + 2 * nkv, D).transpose(0, 2, 1, 3)  # (B, nh + 2 nkv, T, D)
    q, k, v = h[:, :nh], h[:, nh:nh + nkv], h[:, nh + nkv:]
    want = np_attention(q, k, v, True, None, ids).transpose(0, 2, 1, 3).reshape(B, T, nh * D)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
    do = dy.reshape(B, T, nh, D).transpose(0, 2, 1, 3)  # (B, nh, T, D)
    grads = attention.attention_backward_textbook(do, q, k, v, True, None, ids)
    want = np.concatenate(grads, axis=1).transpose(0, 2, 1, 3).reshape(qkv.shape)  # qkv's layout
    np.testing.assert_allclose(t.grad.numpy(), want, rtol=1e-12, atol=1e-12)


def test_flash_serves_no_numpy_and_no_float64():
    """Without CuPy (or for NumPy arrays, or float64) the query-block loop runs."""
    z = np.zeros((1, 1, 2, 32), np.float32)
    assert attention.flash_kernels(z, z, z) is None


# --- on a GPU: the op through the real flash kernel ---------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [("float32", 2e-4), ("bfloat16", 2e-2)])
@pytest.mark.parametrize("packed", [False, True])
def test_the_op_runs_the_flash_kernel_on_the_gpu(cp, monkeypatch, dtype, tol, packed):
    """F.scaled_dot_product_attention and F.qkv_attention on CuPy arrays (D = 64, GQA, T not a
    multiple of the tile, segment ids) call the flash glue, and match the textbook in float64."""
    if dtype == "bfloat16":
        dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    calls = []
    real = attention.flash_kernels

    def counting(q, k, v):
        glue = real(q, k, v)
        calls.append(glue is not None)
        return glue
    monkeypatch.setattr(attention, "flash_kernels", counting)
    rng = np.random.default_rng(9)
    B, nh, nkv, T, D = 2, 4, 2, 70, 64
    q = rng.standard_normal((B, nh, T, D))
    k, v = (rng.standard_normal((B, nkv, T, D)) for _ in range(2))
    dy = rng.standard_normal((B, nh, T, D))
    ids = np.sort(rng.integers(0, 3, size=(B, T)), axis=1)
    want_o = np_attention(q, k, v, True, None, ids)
    want = attention.attention_backward_textbook(dy, q, k, v, True, None, ids)
    if packed:
        qkv = np.concatenate([a.transpose(0, 2, 1, 3) for a in (q, k, v)], axis=2).reshape(B, T, -1)
        t = Tensor(qkv.astype(dtype), device="cuda", requires_grad=True)
        out = F.qkv_attention(t, nh, nkv, segment_ids=ids)
        out.backward(Tensor(dy.transpose(0, 2, 1, 3).reshape(B, T, -1).astype(dtype), device="cuda"))
        got_o = out.numpy().astype(np.float64).reshape(B, T, nh, D).transpose(0, 2, 1, 3)
        g = t.grad.numpy().astype(np.float64).reshape(B, T, nh + 2 * nkv, D).transpose(0, 2, 1, 3)
        got = (g[:, :nh], g[:, nh:nh + nkv], g[:, nh + nkv:])
    else:
        ts = [Tensor(a.astype(dtype), device="cuda", requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*ts, segment_ids=ids)
        out.backward(Tensor(dy.astype(dtype), device="cuda"))
        got_o, got = out.numpy().astype(np.float64), [t.grad.numpy().astype(np.float64) for t in ts]
    assert calls and all(calls)  # the kernel ran, forward and backward
    for a, b in zip((got_o, *got), (want_o, *want)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())
