"""Cross-entropy: float64 gradcheck over reductions, label smoothing, ignored targets, (N, V) and
(B, T, V) logits and a single class; float32 forward against NumPy; +-1e4 logits; PyTorch
agreement; bad targets named in the error."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops.cross_entropy import exp_rows


def np_cross_entropy(x, t, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """The textbook formula in float64: -log softmax at the target, optionally smoothed."""
    x = np.asarray(x, np.float64)
    V = x.shape[-1]
    x2, t2 = x.reshape(-1, V), t.reshape(-1)
    m = x2.max(-1, keepdims=True)
    logp = x2 - m - np.log(np.exp(x2 - m).sum(-1, keepdims=True))
    valid = t2 != ignore_index
    nll = -logp[np.arange(len(t2)), np.where(valid, t2, 0)]
    loss = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    loss = np.where(valid, loss, 0.0)
    if reduction == "none":
        return loss.reshape(t.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()


@st.composite
def problems(draw):
    lead = draw(st.sampled_from([(), (1,), (3,), (2, 3), (1, 1), (3, 1)]))
    V = draw(st.integers(1, 6))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    t = rng.integers(0, V, size=lead if lead else (1,)).reshape(lead if lead else (1,))
    ignore = rng.random(t.shape) < draw(st.sampled_from([0.0, 0.3]))
    t = np.where(ignore, -100, t)
    x = rng.standard_normal(t.shape + (V,)) * 2
    return x, t


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@SETTINGS
@given(p=problems())
def test_gradcheck_and_forward(device, reduction, smoothing, p):
    x, t = p
    if reduction == "mean" and not (t != -100).any():
        t = t.copy()
        t.reshape(-1)[0] = 0
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    want = np_cross_entropy(x, t, **kw)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        got = F.cross_entropy(Tensor(x.astype(dtype), device=device), t, **kw)
        assert got.dtype == dtype and got.shape == np.shape(want)
        np.testing.assert_allclose(got.numpy(), want, rtol=tol, atol=tol)
    xt = Tensor(x, device=device, requires_grad=True)
    assert tl.gradcheck(lambda a: F.cross_entropy(a, t, **kw), [xt], atol=1e-7, rtol=1e-5)


def test_all_targets_ignored():
    x = Tensor(np.random.default_rng(0).standard_normal((4, 5)), requires_grad=True)
    t = np.full(4, -100)
    loss = F.cross_entropy(x, t, reduction="sum")
    assert loss.item() == 0.0
    loss.backward()
    assert (x.grad.numpy() == 0).all()
    assert tl.gradcheck(lambda a: F.cross_entropy(a, t, reduction="sum"), [x])
    assert np.isnan(F.cross_entropy(x, t).item())  # 0 / 0, as in PyTorch


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_all_targets_ignored_under_mean_gives_nan_forward_and_zero_gradient(device, label_smoothing):
    """docs/backward.md#crossentropy: forward 0 / 0 = nan, backward 0 for every logit (PyTorch's)."""
    x = Tensor(np.random.default_rng(3).standard_normal((2, 3, 5)).astype(np.float32), device=device,
               requires_grad=True)
    t = np.full((2, 3), -100)
    loss = F.cross_entropy(x, t, label_smoothing=label_smoothing)
    assert np.isnan(loss.item())
    loss.backward()
    assert x.grad.shape == x.shape
    np.testing.assert_array_equal(x.grad.numpy(), 0.0)


@pytest.mark.reference
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_all_targets_ignored_matches_torch(label_smoothing):
    torch = pytest.importorskip("torch", reason="parity with PyTorch's cross-entropy needs torch")
    x0 = np.random.default_rng(4).standard_normal((4, 6))
    x, tx = Tensor(x0, requires_grad=True), torch.tensor(x0, requires_grad=True)
    t = np.full(4, -100)
    loss = F.cross_entropy(x, t, label_smoothing=label_smoothing)
    tloss = torch.nn.functional.cross_entropy(tx, torch.tensor(t), label_smoothing=label_smoothing)
    loss.backward()
    tloss.backward()
    assert np.isnan(loss.item()) and np.isnan(tloss.item())
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


def test_the_gradient_is_p_minus_the_smoothed_target():
    """dx = g (p - q), q = (1 - eps) onehot + eps / V, g = 1 / n_valid under "mean"."""
    rng = np.random.default_rng(5)
    x0, t, eps = rng.standard_normal((5, 7)), np.array([1, -100, 6, 0, 3]), 0.2
    x = Tensor(x0, requires_grad=True)
    F.cross_entropy(x, t, label_smoothing=eps).backward()
    p = np.exp(x0 - x0.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.full((5, 7), eps / 7)
    valid = t != -100
    q[np.arange(5)[valid], t[valid]] += 1 - eps
    want = (p - q) * valid[:, None] / valid.sum()
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-12, atol=1e-15)


def test_custom_ignore_index_and_tensor_targets():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4))
    t = np.array([0, 3, 2, 3, 1, 3])
    got = F.cross_entropy(Tensor(x), Tensor(t), ignore_index=3).item()
    np.testing.assert_allclose(got, np_cross_entropy(x, t, ignore_index=3), rtol=1e-12)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_logits(scale):
    rng = np.random.default_rng(2)
    x = (rng.choice([-1.0, 0.0, 1.0], size=(5, 7)) * abs(scale)).astype(np.float32)
    x[0] = scale  # a row of equal huge logits
    t = rng.integers(0, 7, 5)
    xt = Tensor(x, requires_grad=True)
    loss = F.cross_entropy(xt, t, reduction="none")
    np.testing.assert_allclose(loss.numpy(), np_cross_entropy(x, t, reduction="none"), rtol=1e-5,
                               atol=1e-5)
    loss.sum().backward()
    g = xt.grad.numpy()
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g.sum(-1), 0.0, atol=1e-5)  # softmax - onehot sums to 0 per row


def test_shifted_path_gradcheck():
    """Logits around 100 overflow exp's fast path, so the max-shifted path runs."""
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((3, 4)) + 100.0, requires_grad=True)
    t = np.array([1, 0, 3])
    np.testing.assert_allclose(F.cross_entropy(x, t).item(), np_cross_entropy(x.numpy(), t), rtol=1e-12)
    assert tl.gradcheck(lambda a: F.cross_entropy(a, t, label_smoothing=0.2), [x])


@pytest.mark.reference
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 11)).astype(np.float32) * 3
    t = rng.integers(0, 11, (2, 5))
    t[0, 1] = t[1, 3] = -100
    t_ = torch.tensor(t)
    for smoothing in (0.0, 0.25):
        xt = Tensor(x, requires_grad=True)
        loss = F.cross_entropy(xt, t, reduction=reduction, label_smoothing=smoothing)
        tx = torch.tensor(x, requires_grad=True)
        tl_ = torch.nn.functional.cross_entropy(tx.reshape(-1, 11), t_.reshape(-1), reduction=reduction,
                                                label_smoothing=smoothing)
        np.testing.assert_allclose(loss.numpy().reshape(-1), tl_.detach().numpy().reshape(-1), rtol=1e-5,
                                   atol=1e-6)
        dy = rng.standard_normal(loss.shape).astype(np.float32)
        loss.backward(Tensor(dy))
        tl_.backward(torch.tensor(dy).reshape(tl_.shape))
        np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_bad_targets_are_named():
    x = Tensor(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"target 5 at index \(1,\) is outside \[0, 5\)"):
        F.cross_entropy(x, np.array([0, 5, 1]))
    with pytest.raises(ValueError, match=r"target -3 at index \(2,\)"):
        F.cross_entropy(x, np.array([0, 1, -3]))
    with pytest.raises(TypeError, match="integer class ids.*float"):
        F.cross_entropy(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\(3, 5\) need targets of shape \(3,\), got \(4,\)"):
        F.cross_entropy(x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, np.array([0, 1, 2]), reduction="avg")


def test_exp_rows_without_a_shift_can_hold_subnormal_elements():
    """A row whose sum is in range takes no shift, yet an element far below its largest is
    subnormal: exp(-99) in float32. The docstring says so, and bounds what it costs p."""
    x = np.array([[-69.0, -99.0, -70.0]], np.float32)
    e, r, shift = exp_rows(x)
    assert isinstance(shift, int) and shift == 0  # the shift-free path was taken
    tiny = np.finfo(np.float32).tiny
    assert 0 < e[0, 1] < tiny  # subnormal
    assert (e[0, [0, 2]] >= tiny).all()
    p = e * r  # r = 1 / rowsum, (N, 1)
    x64 = x.astype(np.float64)
    p64 = np.exp(x64 - x64.max()) / np.exp(x64 - x64.max()).sum()
    assert abs(p[0, 1] - p64[0, 1]) > 1e-4 * p64[0, 1]  # relative precision lost at that element
    assert abs(p[0, 1] - p64[0, 1]) < 1.4e-15  # but below the documented absolute bound


@settings(max_examples=60, deadline=None)
@given(lo=st.floats(-160.0, 0.0), width=st.floats(0.0, 150.0), V=st.integers(2, 40), seed=seeds)
def test_exp_rows_shift_free_probabilities_stay_within_the_documented_error(lo, width, V, seed):
    x = np.random.default_rng(seed).uniform(lo, lo + width, (3, V)).astype(np.float32)
    e, r, shift = exp_rows(x)
    x64 = x.astype(np.float64)
    p64 = np.exp(x64 - x64.max(-1, keepdims=True))
    p64 /= p64.sum(-1, keepdims=True)
    p = e * r  # r = 1 / rowsum, (N, 1)
    # a few float32 roundings relative to each p, plus the subnormal floor times r <= 1e30
    assert (np.abs(p - p64) <= 1e-6 * p64 + 1.4e-15).all(), (shift, np.abs(p - p64).max())
