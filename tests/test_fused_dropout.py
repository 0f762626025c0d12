"""Dropout: identity in eval mode and at p = 0, the kept fraction and the 1 / (1 - p) scale,
seeded repeatability, gradient = the same mask."""
import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor


def test_identity_in_eval_and_at_p0():
    x = Tensor(np.ones((3, 4), np.float32), requires_grad=True)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_fraction_scale_and_gradient(p):
    x = Tensor(np.full((200, 500), 2.0, np.float32), requires_grad=True)
    y = F.dropout(x, p)
    out = y.numpy()
    assert y.dtype == np.float32
    kept = out != 0
    assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_allclose(out[kept], 2.0 / (1 - p), rtol=1e-6)
    dy = np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
    y.backward(Tensor(dy))
    np.testing.assert_allclose(x.grad.numpy(), dy * (out / 2.0), rtol=1e-6)


def test_seeded_and_advancing():
    x = Tensor(np.ones((64, 64), np.float32))
    tl.manual_seed(123)
    a, b = F.dropout(x, 0.3).numpy(), F.dropout(x, 0.3).numpy()
    tl.manual_seed(123)
    np.testing.assert_array_equal(F.dropout(x, 0.3).numpy(), a)
    assert not np.array_equal(a, b)  # each call draws a fresh mask


def test_float64_and_0d_and_p1():
    x = Tensor(np.float64(3.0), requires_grad=True)
    y = F.dropout(x, 0.5)
    assert y.dtype == np.float64 and y.shape == () and y.item() in (0.0, 6.0)
    z = F.dropout(Tensor(np.ones(5, np.float32)), 1.0)
    np.testing.assert_array_equal(z.numpy(), 0.0)


def test_bad_p():
    with pytest.raises(ValueError, match="p must be in"):
        F.dropout(Tensor([1.0]), 1.5)
