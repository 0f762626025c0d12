"""Layer norm and RMS norm: float64 gradcheck with and without weight/bias on hypothesis shapes,
float32 forward against NumPy, constant rows, what is saved, PyTorch agreement, shape errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, check, seeds, shapes, values

import tinygrad_llm.functional as F
from tinygrad_llm import Tensor


def np_layer_norm(x, w=None, b=None, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def np_rms_norm(x, w=None, eps=1e-6):
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y * (1 if w is None else w)


@pytest.mark.parametrize("affine", ["wb", "w", "b", ""])
@SETTINGS
@given(shape=shapes(min_dims=1, max_dims=3, max_side=5), seed=seeds)
def test_layer_norm(device, affine, shape, seed):
    x = values(shape, seed)
    C = shape[-1]
    w, b = values((C,), seed + 1) + 1.0, values((C,), seed + 2)
    args = [x] + ([w] if "w" in affine else []) + ([b] if "b" in affine else [])

    def fn(x, *p):
        return F.layer_norm(x, p[0] if "w" in affine else None,
                            p[-1] if "b" in affine else None, eps=1e-5)

    def ref(x, *p):
        return np_layer_norm(x, p[0] if "w" in affine else None, p[-1] if "b" in affine else None)
    # C = 1 makes xhat = 0 for every x: dx is exactly 0, the numeric check still runs
    check(fn, ref, args, device, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_weight", [True, False])
@SETTINGS
@given(shape=shapes(min_dims=1, max_dims=3, max_side=5), seed=seeds)
def test_rms_norm(device, with_weight, shape, seed):
    x = values(shape, seed)
    w = values(shape[-1:], seed + 1) + 1.0
    if with_weight:
        check(lambda x, w: F.rms_norm(x, w), np_rms_norm, [x, w], device, atol=1e-5, rtol=1e-5)
    else:
        check(lambda x: F.rms_norm(x), np_rms_norm, [x], device, atol=1e-5, rtol=1e-5)


def test_constant_row_is_finite():
    x = Tensor(np.full((3, 8), 7.5, np.float32), requires_grad=True)
    w = Tensor(np.ones(8, np.float32), requires_grad=True)
    b = Tensor(np.full(8, 0.5, np.float32), requires_grad=True)
    y = F.layer_norm(x, w, b)
    np.testing.assert_allclose(y.numpy(), 0.5)
    y.backward(Tensor(np.ones((3, 8), np.float32)))
    for t in (x, w, b):
        assert np.isfinite(t.grad.numpy()).all()
    z = F.rms_norm(Tensor(np.zeros((2, 4), np.float32)), None)
    assert np.isfinite(z.numpy()).all()


def test_saves_xhat_rstd_and_w():
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32), requires_grad=True)
    w = Tensor(np.ones(8, np.float32), requires_grad=True)
    for y in (F.layer_norm(x, w, Tensor(np.zeros(8, np.float32))), F.rms_norm(x, w)):
        xhat, rstd, weight = y._ctx.saved
        assert xhat.shape == (6, 8) and rstd.shape == (6,) and weight is w.data


@pytest.mark.reference
def test_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6, 32)).astype(np.float32) * 3 + 1
    w, b = rng.standard_normal(32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ts = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    F.layer_norm(*ts).backward(Tensor(dy))
    tt = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    y = torch.nn.functional.layer_norm(tt[0], (32,), tt[1], tt[2], 1e-5)
    y.backward(torch.tensor(dy))
    np.testing.assert_allclose(F.layer_norm(*ts).numpy(), y.detach().numpy(), rtol=1e-5, atol=1e-5)
    for a, t in zip(ts, tt):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-4, atol=1e-4)
    ts = [Tensor(a, requires_grad=True) for a in (x, w)]
    F.rms_norm(*ts).backward(Tensor(dy))
    tt = [torch.tensor(a, requires_grad=True) for a in (x, w)]
    y = torch.nn.functional.rms_norm(tt[0], (32,), tt[1], 1e-6)
    y.backward(torch.tensor(dy))
    np.testing.assert_allclose(F.rms_norm(*ts).numpy(), y.detach().numpy(), rtol=1e-5, atol=1e-5)
    for a, t in zip(ts, tt):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_bad_weight_shape_is_named():
    x = Tensor(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"weight of shape \(3,\).*\(2, 4\).*expected \(4,\)"):
        F.layer_norm(x, Tensor(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match=r"bias of shape \(5,\)"):
        F.layer_norm(x, None, Tensor(np.ones(5, np.float32)))
    with pytest.raises(ValueError, match=r"weight of shape \(2, 4\)"):
        F.rms_norm(x, Tensor(np.ones((2, 4), np.float32)))
