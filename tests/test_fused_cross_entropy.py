"""Cross-entropy: float64 gradcheck over reductions, label smoothing, ignored targets, (N, V) and
(B, T, V) logits and a single class; float32 forward against NumPy; +-1e4 logits; PyTorch
agreement; bad targets named in the error."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor


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
