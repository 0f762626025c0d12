"""Reductions over an axis, a tuple of axes or all, with keepdims: forward against NumPy, float64
gradcheck on hypothesis shapes (size-1 axes, 0-d, empty axes where NumPy allows), the tie rule."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, check, seeds, shapes, values

from tinygrad_llm import Tensor


@st.composite
def shape_and_axis(draw, min_side=1):
    shape = draw(shapes(min_dims=0, max_dims=3, min_side=min_side))
    nd = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none" or nd == 0:
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-nd, nd - 1))
    else:
        axis = tuple(draw(st.lists(st.integers(0, nd - 1), unique=True, min_size=1, max_size=nd)))
        axis = tuple(a - nd if draw(st.booleans()) else a for a in axis)  # negative axes too
    return shape, axis, draw(st.booleans())


REDUCE = {
    "sum": (lambda x, **k: x.sum(**k), np.sum, "normal"),
    "mean": (lambda x, **k: x.mean(**k), np.mean, "normal"),
    "max": (lambda x, **k: x.max(**k), np.max, "distinct"),
    "min": (lambda x, **k: x.min(**k), np.min, "distinct"),
    "var": (lambda x, **k: x.var(**k), np.var, "normal"),
    "var_unbiased": (lambda x, **k: x.var(correction=1, **k), lambda x, **k: np.var(x, ddof=1, **k), "normal"),
    "logsumexp": (lambda x, **k: x.logsumexp(**k),
                  lambda x, axis, keepdims: np.log(np.exp(x).sum(axis=axis, keepdims=keepdims)), "normal"),
}


@pytest.mark.parametrize("name", list(REDUCE))
@SETTINGS
@given(sak=shape_and_axis(), seed=seeds)
def test_reduce(device, name, sak, seed):
    shape, axis, keepdims = sak
    fn, ref, kind = REDUCE[name]
    x = values(shape, seed, kind)
    if name == "var_unbiased":
        n = x.size if axis is None else int(np.prod([shape[a] for a in np.atleast_1d(axis)]))
        if n < 2:
            with pytest.raises(ValueError, match="no degrees of freedom"):
                fn(Tensor(x, device=device), axis=axis, keepdims=keepdims)
            return
    check(lambda t: fn(t, axis=axis, keepdims=keepdims), lambda a: ref(a, axis=axis, keepdims=keepdims),
          [x], device)


@pytest.mark.parametrize("name", ["sum", "logsumexp"])
def test_reduce_over_empty_axis(device, name):
    # NumPy allows summing zero elements: 0 (and log 0 = -inf); the gradient is empty
    x = Tensor(np.zeros((0, 3)), requires_grad=True, device=device)
    y = getattr(x, name)(axis=0)
    np.testing.assert_array_equal(y.numpy(), [0.0] * 3 if name == "sum" else [-np.inf] * 3)
    y.backward(np.ones(3))
    assert x.grad.shape == (0, 3)
    x = Tensor(np.ones((2, 0)), requires_grad=True, device=device)
    y = x.sum(axis=0)  # reduces a non-empty axis into an empty result
    assert y.shape == (0,)
    y.backward(np.ones((0,)))
    assert x.grad.shape == (2, 0)


def test_max_ties_split_the_gradient(device):
    x = Tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], requires_grad=True, device=device)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    x.grad = None
    x.min().backward()  # the global minimum 1.0 is unique
    np.testing.assert_array_equal(x.grad.numpy(), [[1, 0, 0], [0, 0, 0]])


def test_logsumexp_is_stable(device):
    x = Tensor([[1000.0, 1000.0], [-np.inf, -np.inf]], requires_grad=True, device=device)
    y = x.logsumexp(axis=1)
    np.testing.assert_allclose(y.numpy(), [1000 + np.log(2), -np.inf])
    y.backward(np.ones(2, np.float32))
    np.testing.assert_allclose(x.grad.numpy(), [[0.5, 0.5], [0.0, 0.0]])


def test_mean_keeps_float32_and_scales_once(device):
    x = Tensor(np.ones((4, 5), np.float32), requires_grad=True, device=device)
    y = x.mean(axis=(0, 1))
    assert y.dtype == np.float32 and y.shape == ()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((4, 5), 1 / 20))


def test_reduction_errors(device):
    x = Tensor.zeros(2, 3, device=device)
    with pytest.raises(ValueError, match="sum: axis 2 is out of range for a tensor with 2 dimensions"):
        x.sum(axis=2)
    with pytest.raises(ValueError, match="repeated axis"):
        x.sum(axis=(0, -2))
    with pytest.raises(ValueError, match=r"max: reducing axes \(0,\) of shape \(0, 3\)"):
        Tensor.zeros(0, 3, device=device).max(axis=0)
    with pytest.raises(ValueError, match="mean: reducing axes"):
        Tensor.zeros(0, 3, device=device).mean(axis=0)


def test_argmax_argmin_are_outside_the_graph(device):
    x = Tensor([[1.0, 5.0, 2.0]], requires_grad=True, device=device)
    assert x.argmax(axis=1).tolist() == [1] and x.argmin().item() == 0
    assert not x.argmax().requires_grad
