"""Elementwise ops: forward against NumPy, float64 gradcheck on hypothesis shapes (broadcasting
pairs, size-1 axes, 0-d), float32 gradients stay float32, tie rules, errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, broadcast_pairs, check, seeds, shapes, values

import tinygrad_llm as tl
from tinygrad_llm import Tensor

BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b, "normal", "normal"),
    "sub": (lambda a, b: a - b, lambda a, b: a - b, "normal", "normal"),
    "mul": (lambda a, b: a * b, lambda a, b: a * b, "normal", "normal"),
    "div": (lambda a, b: a / b, lambda a, b: a / b, "normal", "away"),
    "pow": (lambda a, b: a ** b, lambda a, b: a ** b, "positive", "normal"),
}


@pytest.mark.parametrize("name", list(BINARY))
@SETTINGS
@given(pair=broadcast_pairs(min_side=0), seed=seeds,
       grad=st.sampled_from([(True, True), (True, False), (False, True)]))
def test_binary(device, name, pair, seed, grad):
    fn, ref, ka, kb = BINARY[name]
    a, b = values(pair[0], seed, ka), values(pair[1], seed + 1, kb)
    check(fn, ref, [a, b], device, grad=list(grad))


UNARY = {
    "neg": (lambda x: -x, lambda x: -x, "normal"),
    "exp": (lambda x: x.exp(), np.exp, "normal"),
    "log": (lambda x: x.log(), np.log, "positive"),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, "positive"),
    "abs": (lambda x: x.abs(), np.abs, "away"),
    "tanh": (lambda x: x.tanh(), np.tanh, "normal"),
    "sigmoid": (lambda x: x.sigmoid(), lambda x: 1 / (1 + np.exp(-x)), "normal"),
    "relu": (lambda x: x.relu(), lambda x: np.maximum(x, 0), "away"),
    "square": (lambda x: x ** 2, lambda x: x ** 2, "normal"),
    "cube": (lambda x: x ** 3, lambda x: x ** 3, "normal"),
    "pow_half": (lambda x: x ** 0.5, lambda x: x ** 0.5, "positive"),
    "pow_neg": (lambda x: x ** -1.5, lambda x: x ** -1.5, "positive"),
    "pow_one": (lambda x: x ** 1, lambda x: x ** 1, "normal"),
    "pow_zero": (lambda x: x ** 0, lambda x: x ** 0, "normal"),
    "rpow": (lambda x: 2.0 ** x, lambda x: 2.0 ** x, "normal"),
    "clip": (lambda x: x.clip(-0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7), "distinct"),
    "clip_lo": (lambda x: x.clip(min=0.1), lambda x: np.maximum(x, 0.1), "distinct"),
    "clip_hi": (lambda x: x.clip(max=0.1), lambda x: np.minimum(x, 0.1), "distinct"),
    "cast_roundtrip": (lambda x: (x.astype(np.float32) * 2).astype(x.dtype), lambda x: x * 2, "normal"),
}


@pytest.mark.parametrize("name", list(UNARY))
@SETTINGS
@given(shape=shapes(min_side=0), seed=seeds)  # empty axes too
def test_unary(device, name, shape, seed):
    fn, ref, kind = UNARY[name]
    x = values(shape, seed, kind)
    if name.startswith("clip"):  # keep finite differences off the clip bounds
        x = np.where(np.abs(x - 0.1) < 0.02, x + 0.05, x)
        x = np.where(np.abs(x + 0.5) < 0.02, x + 0.05, x)
        x = np.where(np.abs(x - 0.7) < 0.02, x + 0.05, x)
    if name == "cast_roundtrip":  # float32 in the middle: compare at float32 precision
        ts = Tensor(x, requires_grad=True, device=device)
        assert tl.gradcheck(fn, [ts], eps=1e-3, atol=1e-3, rtol=1e-3)
        return
    check(fn, ref, [x], device)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
@SETTINGS
@given(pair=broadcast_pairs(min_side=0), seed=seeds)
def test_maximum_minimum(device, name, pair, seed):
    a = values(pair[0], seed)
    b = values(pair[1], seed + 1)
    b = np.where(np.abs(np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape)) - b).min(initial=1) < 0.05,
                 b + 0.3, b) if a.size and b.size else b
    ref = getattr(np, name)
    check(lambda u, v: getattr(u, name)(v), ref, [a, b], device)


@SETTINGS
@given(pair=broadcast_pairs(), seed=seeds)
def test_where_broadcasts_and_routes_gradient(device, pair, seed):
    shape_a, shape_c = pair
    a = values(shape_a, seed)
    b = values(shape_a[-1:] if shape_a else (), seed + 1)
    cond = np.random.default_rng(seed).random(shape_c) > 0.5
    check(lambda u, v: tl.where(Tensor(cond, device=device), u, v), lambda u, v: np.where(cond, u, v),
          [a, b], device)


@SETTINGS
@given(T=st.integers(1, 5), B=st.integers(1, 3), seed=seeds)
def test_masked_fill_causal(device, T, B, seed):
    x = values((B, T, T), seed)
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)  # (T, T) broadcasts over B
    check(lambda u: u.masked_fill(mask, -1e9), lambda u: np.where(mask, -1e9, u), [x], device)
    y = Tensor(x, requires_grad=True, device=device).masked_fill(mask, -np.inf)
    assert np.isneginf(y.numpy()[:, mask]).all()


def test_python_scalars_on_both_sides(device):
    x = Tensor(np.array([1.0, 2.0, 4.0], np.float32), requires_grad=True, device=device)
    y = 1 + x * 2 - 3 / x + (5 - x) / 2 + 2 ** x + x ** 2 - (-x) + 1.5 * x
    assert y.dtype == np.float32
    xn = x.numpy().astype(np.float64)
    want = 1 + xn * 2 - 3 / xn + (5 - xn) / 2 + 2 ** xn + xn ** 2 + xn + 1.5 * xn
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-6)
    y.sum().backward()
    dwant = 2 + 3 / xn ** 2 - 0.5 + np.log(2) * 2 ** xn + 2 * xn + 1 + 1.5
    np.testing.assert_allclose(x.grad.numpy(), dwant, rtol=1e-5)


def test_numpy_scalars_keep_float32(device):
    x = Tensor(np.ones(3, np.float32), requires_grad=True, device=device)
    for y in (np.float64(2.0) * x, x * np.float64(2.0), x ** np.float64(2.5), x + np.float64(1),
              np.ones(3) + x):
        assert y.dtype == np.float32, y


def test_maximum_tie_splits_gradient(device):
    a = Tensor([1.0, 2.0, 3.0], requires_grad=True, device=device)
    b = Tensor([1.0, 5.0, 0.0], requires_grad=True, device=device)
    a.maximum(b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(b.grad.numpy(), [0.5, 1.0, 0.0])
    a.grad = b.grad = None
    a.minimum(b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(b.grad.numpy(), [0.5, 0.0, 1.0])


def test_kinks_take_pytorchs_subgradient(device):
    x = Tensor([0.0, 0.0, 0.0], requires_grad=True, device=device)
    (x.abs() + x.relu() + x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 0.0])  # sign(0) = 0, relu'(0) = 0
    x = Tensor([-1.0, 0.0, 1.0], requires_grad=True, device=device)
    x.clip(-1.0, 1.0).sum().backward()  # the bounds themselves pass the gradient
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0, 1.0])


def test_pow_tensor_exponent_at_zero_base(device):
    a = Tensor([0.0, 2.0], requires_grad=True, device=device)
    b = Tensor([2.0, 3.0], requires_grad=True, device=device)
    (a ** b).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), [0.0, 12.0])
    np.testing.assert_allclose(b.grad.numpy(), [0.0, 8 * np.log(2)], rtol=1e-6)  # 0^b ln 0 -> 0


def test_pow_at_zero_base_and_zero_exponent(device):
    # a^0 = 1 whatever a: da = 0 (not 0 * 0^-1 = nan); at a = 0 <= b, db = 0 (not 1 * ln 0 = -inf)
    a = Tensor([0.0, 0.0, 0.0, 2.0, -2.0], requires_grad=True, device=device)
    b = Tensor([0.0, 2.0, -1.0, 0.0, 0.0], requires_grad=True, device=device)
    y = a ** b
    np.testing.assert_array_equal(y.numpy(), [1.0, 0.0, np.inf, 1.0, 1.0])
    y.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0.0, 0.0, -np.inf, 0.0, 0.0])
    np.testing.assert_allclose(b.grad.numpy(), [0.0, 0.0, -np.inf, np.log(2), np.nan], rtol=1e-6)


@pytest.mark.reference
def test_pow_gradients_match_pytorch_at_the_special_points():
    torch = pytest.importorskip("torch", reason="parity with PyTorch's pow backward needs torch")
    grid = np.array([-2.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    a0, b0 = np.meshgrid(grid, np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0]))
    a, b = Tensor(a0, requires_grad=True), Tensor(b0, requires_grad=True)
    (a ** b).sum().backward()
    ta = torch.tensor(a0, requires_grad=True)
    tb = torch.tensor(b0, requires_grad=True)
    (ta ** tb).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-12, equal_nan=True)


def test_sigmoid_and_exp_extremes(device):
    x = Tensor([-1000.0, 0.0, 1000.0], requires_grad=True, device=device)
    y = x.sigmoid()
    np.testing.assert_allclose(y.numpy(), [0.0, 0.5, 1.0])
    y.sum().backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_comparisons_carry_no_gradient(device):
    x = Tensor([1.0, 2.0, 3.0], requires_grad=True, device=device)
    for m in (x > 2, x >= 2, x < 2, x <= 2, x == 2, x != 2, x > Tensor([0.0, 5.0, 3.0], device=device)):
        assert m.dtype == np.bool_ and not m.requires_grad
    np.testing.assert_array_equal((x >= 2).numpy(), [False, True, True])


def test_non_broadcastable_shapes_name_the_shapes(device):
    a, b = Tensor.zeros(2, 3, device=device), Tensor.zeros(4, 5, device=device)
    for op, name in ((lambda: a + b, "add"), (lambda: a * b, "mul"), (lambda: a - b, "sub"),
                     (lambda: a / b, "div"), (lambda: a.maximum(b), "maximum"), (lambda: a ** b, "pow")):
        with pytest.raises(ValueError, match=rf"{name}: shapes \(2, 3\) and \(4, 5\) cannot be broadcast"):
            op()
    with pytest.raises(ValueError, match=r"where: shapes"):
        tl.where(np.ones((3,), bool), a, b)


def test_masked_fill_errors(device):
    x = Tensor.zeros(2, 3, device=device)
    with pytest.raises(TypeError, match="boolean"):
        x.masked_fill(np.ones((2, 3), np.int64), 0.0)
    with pytest.raises(ValueError, match=r"mask of shape \(4, 2, 3\) does not broadcast"):
        x.masked_fill(np.ones((4, 2, 3), bool), 0.0)
    with pytest.raises(ValueError, match="clip: min 1.0 is greater than max 0.0"):
        x.clip(1.0, 0.0)


def test_clip_without_bounds_is_identity(device):
    x = Tensor([1.0, -2.0], requires_grad=True, device=device)
    y = x.clip()
    y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), [1.0, -2.0])
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])
