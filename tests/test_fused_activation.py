"""GELU (tanh and exact), SiLU, SwiGLU and the hand-written erf: float64 gradcheck on hypothesis
shapes (0-d included), float32 forward against NumPy, erf against math.erf, PyTorch agreement."""
import math

import numpy as np
import pytest
from hypothesis import given
from opcheck import SETTINGS, check, seeds, shapes, values

import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops.activation import erf

_erf = np.vectorize(math.erf)


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_gelu_exact(x):
    return 0.5 * x * (1 + _erf(np.asarray(x, np.float64) / np.sqrt(2))).astype(np.asarray(x).dtype)


def np_silu(x):
    return x / (1 + np.exp(-x))


def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-12, 12, 20001), [0.0, 0.46875, -0.46875, 4.0, -4.0, 1e-300, 40.0]])
    want = _erf(x)
    np.testing.assert_allclose(erf(x), want, rtol=1e-15, atol=1e-15)
    x32 = x.astype(np.float32)
    got32 = erf(x32)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, _erf(x32.astype(np.float64)), rtol=0, atol=3e-7)
    np.testing.assert_array_equal(erf(np.array([np.inf, -np.inf])), [1.0, -1.0])


@pytest.mark.parametrize("name", ["gelu_tanh", "gelu_exact", "silu"])
@SETTINGS
@given(shape=shapes(min_dims=0, max_dims=3), seed=seeds)
def test_unary(device, name, shape, seed):
    fn, ref = {"gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), np_gelu_tanh),
               "gelu_exact": (lambda x: F.gelu(x, approximate="none"), np_gelu_exact),
               "silu": (F.silu, np_silu)}[name]
    check(fn, ref, [values(shape, seed) * 3], device, atol=1e-6, rtol=1e-5)


@SETTINGS
@given(shape=shapes(min_dims=0, max_dims=3), seed=seeds)
def test_swiglu(device, shape, seed):
    check(F.swiglu, lambda g, u: np_silu(g) * u, [values(shape, seed) * 3, values(shape, seed + 1)],
          device, atol=1e-6, rtol=1e-5)


def test_swiglu_gradient_for_one_input_only():
    g = Tensor(np.linspace(-3, 3, 7), requires_grad=True)
    u = Tensor(np.linspace(1, 2, 7))
    F.swiglu(g, u).sum().backward()
    s = 1 / (1 + np.exp(-g.numpy()))
    np.testing.assert_allclose(g.grad.numpy(), u.numpy() * s * (1 + g.numpy() * (1 - s)), rtol=1e-12)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_keeps_x_and_h_on_the_cpu(approximate):
    """docs/backward.md#gelu: the CPU keeps h beside x so backward evaluates no tanh or erf."""
    x = Tensor(np.linspace(-3, 3, 12).reshape(3, 4), requires_grad=True)
    y = F.gelu(x, approximate)
    saved_x, h = y._ctx.saved
    assert saved_x.shape == (12,) and np.shares_memory(saved_x, x.data)
    np.testing.assert_allclose(y.numpy().reshape(-1), x.numpy().reshape(-1) * h, rtol=1e-12)


def test_large_inputs_stay_finite():
    x = Tensor(np.array([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4], np.float32), requires_grad=True)
    for fn in (F.gelu, lambda a: F.gelu(a, "none"), F.silu, lambda a: F.swiglu(a, a)):
        x.grad = None
        y = fn(x)
        y.sum().backward()
        assert np.isfinite(y.numpy()).all() and np.isfinite(x.grad.numpy()).all()
    np.testing.assert_allclose(F.silu(x).numpy(), [0, 0, -20 * np.exp(-20.0), 0, 20, 100, 1e4],
                               rtol=1e-6, atol=1e-30)


@pytest.mark.reference
def test_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 33)) * 3).astype(np.float32)
    u = rng.standard_normal((4, 33)).astype(np.float32)
    dy = rng.standard_normal((4, 33)).astype(np.float32)
    tf = torch.nn.functional
    cases = [(lambda a, b: F.gelu(a), lambda a, b: tf.gelu(a, approximate="tanh")),
             (lambda a, b: F.gelu(a, "none"), lambda a, b: tf.gelu(a)),
             (lambda a, b: F.silu(a), lambda a, b: tf.silu(a)),
             (F.swiglu, lambda a, b: tf.silu(a) * b)]
    for ours, theirs in cases:
        a, b = Tensor(x, requires_grad=True), Tensor(u, requires_grad=True)
        y = ours(a, b)
        y.backward(Tensor(dy))
        ta, tb = torch.tensor(x, requires_grad=True), torch.tensor(u, requires_grad=True)
        ty = theirs(ta, tb)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(Tensor([1.0]), approximate="erf")
    with pytest.raises(ValueError, match=r"gate \(2,\) and up \(3,\)"):
        F.swiglu(Tensor([1.0, 2.0]), Tensor([1.0, 2.0, 3.0]))


def test_one_logistic_function_keeps_tiny_values_and_limits():
    # sigmoid and GELU's h share 1 / (1 + exp(t)): exact limits, and no cancellation where the
    # result is tiny (the tanh form 0.5 (1 + tanh) returns 0 there in float32)
    from tinygrad_llm.ops.activation import gelu_tanh_forward_cpu
    from tinygrad_llm.ops.elementwise import sigmoid_cpu
    x = np.array([-200.0, -30.0, -17.0, 0.0, 17.0, 200.0], np.float32)
    want = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)  # 0 at -200: underflow
    with np.errstate(over="raise"):  # the overflow to inf is expected and silenced inside
        got = sigmoid_cpu(x)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)
    assert got[0] == 0.0 and got[-1] == 1.0
    xs = np.array([-9.0, -6.0, -5.0, -1.0, 0.5, 3.0], np.float32)
    u = np.sqrt(2 / np.pi) * (xs.astype(np.float64) + 0.044715 * xs.astype(np.float64) ** 3)
    h_want = (1.0 / (1.0 + np.exp(-2 * u))).astype(np.float32)
    y, h = gelu_tanh_forward_cpu(xs)
    np.testing.assert_allclose(h, h_want, rtol=1e-5, atol=0)  # relative, even at h ~ 1e-29
    np.testing.assert_allclose(y, xs * h_want, rtol=1e-5, atol=0)
