"""GeGLU (gelu(gate) * up, both GELU forms) and tanh soft-capping: float64 gradchecks on hypothesis
shapes (0-d included), the ops against their textbook versions (chunked too), huge inputs, PyTorch."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, check, seeds, shapes, values

import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops import activation, row_chunks


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@SETTINGS
@given(shape=shapes(min_dims=0, max_dims=3), seed=seeds)
def test_geglu(device, approximate, shape, seed):
    check(lambda g, u: F.geglu(g, u, approximate=approximate),
          lambda g, u: activation.geglu_textbook(g, u, approximate),
          [values(shape, seed) * 3, values(shape, seed + 1)], device, atol=1e-6, rtol=1e-5)


@SETTINGS
@given(shape=shapes(min_dims=0, max_dims=3), seed=seeds, cap=st.sampled_from([0.5, 3.0, 30.0]))
def test_soft_cap(device, shape, seed, cap):
    check(lambda x: F.soft_cap(x, cap), lambda x: activation.soft_cap_textbook(x, cap),
          [values(shape, seed) * 4], device, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@SETTINGS
@given(n=st.integers(1, 12), c=st.integers(1, 9), seed=seeds)
def test_geglu_backward_against_the_textbook_in_chunks(monkeypatch, approximate, n, c, seed):
    monkeypatch.setattr(row_chunks, "CHUNK_ELEMENTS", 7)  # several chunks, not a multiple of a row
    rng = np.random.default_rng(seed)
    g, u, dy = (rng.standard_normal((n, c)) * 3 for _ in range(3))
    tg, tu = Tensor(g, requires_grad=True), Tensor(u, requires_grad=True)
    y = F.geglu(tg, tu, approximate=approximate)
    (y * Tensor(dy)).sum().backward()
    np.testing.assert_allclose(y.numpy(), activation.geglu_textbook(g, u, approximate), rtol=1e-12, atol=1e-12)
    dg, du = activation.geglu_backward_textbook(dy, g, u, approximate)
    np.testing.assert_allclose(tg.grad.numpy(), dg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tu.grad.numpy(), du, rtol=1e-12, atol=1e-12)


def test_geglu_gradient_for_one_input_only():
    g = Tensor(np.linspace(-3, 3, 7), requires_grad=True)
    u = Tensor(np.linspace(1, 2, 7))
    F.geglu(g, u).sum().backward()
    want = activation.geglu_backward_textbook(np.ones(7), g.numpy(), u.numpy())[0]
    np.testing.assert_allclose(g.grad.numpy(), want, rtol=1e-12)
    assert u.grad is None


def test_soft_cap_of_huge_logits_stays_inside_the_cap():
    x = np.array([-1e30, -300.0, -1.0, 0.0, 1e-3, 300.0, 1e30], np.float32)
    t = Tensor(x, requires_grad=True)
    y = F.soft_cap(t, 30.0)
    y.sum().backward()
    assert np.all(np.abs(y.numpy()) <= 30.0) and np.isfinite(t.grad.numpy()).all()
    np.testing.assert_allclose(y.numpy()[4], 1e-3, rtol=1e-6)  # ~x well inside the cap
    np.testing.assert_allclose(t.grad.numpy(), activation.soft_cap_backward_textbook(1.0, x.astype(np.float64), 30.0),
                               atol=1e-6)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"geglu: gate \(2,\) and up \(3,\)"):
        F.geglu(Tensor(np.zeros(2)), Tensor(np.zeros(3)))
    with pytest.raises(ValueError, match=r"soft_cap: cap must be a finite number > 0, got 0.0"):
        F.soft_cap(Tensor(np.zeros(2)), 0.0)


@pytest.mark.reference
def test_match_torch():
    torch = pytest.importorskip("torch", reason="the parity test needs PyTorch")
    rng = np.random.default_rng(0)
    g, u, dy = (rng.standard_normal((5, 7)) * 2 for _ in range(3))
    tg, tu = torch.tensor(g, requires_grad=True), torch.tensor(u, requires_grad=True)
    want = torch.nn.functional.gelu(tg, approximate="tanh") * tu  # transformers' gelu_pytorch_tanh
    want.backward(torch.tensor(dy))
    ours_g, ours_u = Tensor(g, requires_grad=True), Tensor(u, requires_grad=True)
    got = F.geglu(ours_g, ours_u)
    got.backward(Tensor(dy))
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours_g.grad.numpy(), tg.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours_u.grad.numpy(), tu.grad.numpy(), rtol=1e-12, atol=1e-12)
    x = torch.tensor(g * 20, requires_grad=True)
    want = torch.tanh(x / 30.0) * 30.0  # Gemma's final_logit_softcapping
    want.backward(torch.tensor(dy))
    t = Tensor(g * 20, requires_grad=True)
    got = F.soft_cap(t, 30.0)
    got.backward(Tensor(dy))
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.grad.numpy(), x.grad.numpy(), rtol=1e-10, atol=1e-12)
