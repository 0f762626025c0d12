"""Softmax and log-softmax: float64 gradcheck on hypothesis shapes and axes, float32 forward
against NumPy, logits of +-1e4, PyTorch agreement when it is installed, bad axes."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, check, seeds, shapes, values

import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops.softmax import (log_softmax_backward_cpu, log_softmax_forward_cpu,
                                      softmax_backward_cpu, softmax_forward_cpu)


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


@st.composite
def shape_axis(draw):
    shape = draw(shapes(min_dims=1, max_dims=3, max_side=5))
    return shape, draw(st.integers(-len(shape), len(shape) - 1))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@SETTINGS
@given(sa=shape_axis(), seed=seeds)
def test_gradcheck_and_forward(device, name, sa, seed):
    shape, axis = sa
    fn, ref = (F.softmax, np_softmax) if name == "softmax" else (F.log_softmax, np_log_softmax)
    check(lambda x: fn(x, axis=axis), lambda x: ref(x, axis=axis), [values(shape, seed)], device,
          atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_extreme_logits_stay_finite_and_right(name):
    x = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4, -1e4, -1e4 + 2.0],
                  [1e4, 1e4, 1e4, 1e4], [3.0, 1.0, -2.0, 0.5]], dtype=np.float32)
    fn, ref = (F.softmax, np_softmax) if name == "softmax" else (F.log_softmax, np_log_softmax)
    t = Tensor(x, requires_grad=True)
    y = fn(t)
    assert np.isfinite(y.numpy()).all()
    np.testing.assert_allclose(y.numpy(), ref(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    y.backward(Tensor(np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)))
    assert np.isfinite(t.grad.numpy()).all()


def test_softmax_rows_sum_to_one_and_saves_only_y():
    x = Tensor(np.random.default_rng(1).standard_normal((6, 50)).astype(np.float32) * 30,
               requires_grad=True)
    y = F.softmax(x)
    np.testing.assert_allclose(y.numpy().sum(-1), 1.0, rtol=1e-6)
    assert len(y._ctx.saved) == 1 and y._ctx.saved[0].shape == (6, 50)


def test_refs_are_plain_functions_on_the_last_axis():
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    y = softmax_forward_cpu(x)
    np.testing.assert_allclose(y, np_softmax(x), rtol=1e-12)
    J = np.stack([np.diag(r) - np.outer(r, r) for r in y])  # (3, 7, 7)
    np.testing.assert_allclose(softmax_backward_cpu(y, dy), np.einsum("nij,nj->ni", J, dy), rtol=1e-10)
    ly = log_softmax_forward_cpu(x)
    np.testing.assert_allclose(ly, np_log_softmax(x), rtol=1e-12)
    Jl = np.stack([np.eye(7) - np.outer(np.ones(7), r) for r in y])  # d logsm_i / d x_j
    np.testing.assert_allclose(log_softmax_backward_cpu(ly, dy), np.einsum("nij,ni->nj", Jl, dy),
                               rtol=1e-10)


def test_float32_stays_float32():
    x = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    assert F.softmax(x).dtype == np.float32 and F.log_softmax(x).dtype == np.float32


@pytest.mark.reference
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_matches_torch(axis):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 9)).astype(np.float32) * 5
    dy = rng.standard_normal((5, 9)).astype(np.float32)
    for ours, theirs in ((F.softmax, torch.softmax), (F.log_softmax, torch.log_softmax)):
        t = Tensor(x, requires_grad=True)
        y = ours(t, axis=axis)
        y.backward(Tensor(dy))
        tx = torch.tensor(x, requires_grad=True)
        ty = theirs(tx, axis)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_bad_axis_names_it():
    with pytest.raises(ValueError, match=r"axis 2 is out of range.*\(3, 4\)"):
        F.softmax(Tensor(np.zeros((3, 4), np.float32)), axis=2)
    with pytest.raises(ValueError, match="0-d"):
        F.log_softmax(Tensor(np.float32(1.0)))
