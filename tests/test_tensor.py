"""Tensor: construction and dtypes, factories, properties and conversions, operators, repr."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor


def test_construction_dtypes(device):
    assert Tensor(np.ones(2, np.float64), device=device).dtype == np.float64  # arrays keep float dtype
    assert Tensor(np.ones(2, np.float32), device=device).dtype == np.float32
    assert Tensor(np.arange(3), device=device).dtype == np.int64  # indices stay integers
    assert Tensor([1, 2, 3], device=device).dtype == np.float32  # lists become float32
    assert Tensor(2.5, device=device).dtype == np.float32 and Tensor(2.5).shape == ()
    assert Tensor([[1, 2]], dtype=np.float64, device=device).dtype == np.float64
    assert Tensor(np.ones(2), dtype=np.float32, device=device).dtype == np.float32
    assert Tensor([1, 2], dtype=np.int32, device=device).dtype == np.int32
    t = Tensor(np.ones(2), device=device)
    assert Tensor(t).data is t.data


def test_requires_grad_only_on_floats(device):
    with pytest.raises(TypeError, match=r"requires_grad needs a floating-point tensor; this one is int64 with shape \(2,\)"):
        Tensor(np.array([1, 2]), requires_grad=True, device=device)
    with pytest.raises(TypeError, match="int64"):
        Tensor(np.array([1, 2]), device=device).requires_grad_()
    t = Tensor([1.0], device=device).requires_grad_()
    assert t.requires_grad and t.requires_grad_(False).requires_grad is False


def test_factories(device):
    assert Tensor.zeros(2, 3, device=device).numpy().tolist() == [[0, 0, 0]] * 2
    assert Tensor.ones((2,), device=device).dtype == np.float32
    assert Tensor.full((2, 2), 7.0, device=device).numpy().tolist() == [[7, 7], [7, 7]]
    assert Tensor.full(3, 1, dtype=np.int64, device=device).dtype == np.int64
    assert Tensor.arange(4, device=device).tolist() == [0, 1, 2, 3]
    assert Tensor.arange(4, device=device).dtype == np.int64
    assert Tensor.arange(0.0, 1.0, 0.5, device=device).dtype == np.float32
    assert Tensor.eye(2, device=device).tolist() == [[1, 0], [0, 1]]
    r = Tensor.randn(1000, device=device)
    assert r.dtype == np.float32 and abs(float(r.numpy().mean())) < 0.2 and 0.8 < float(r.numpy().std()) < 1.2
    u = Tensor.rand(1000, dtype=np.float64, device=device)
    assert u.dtype == np.float64 and 0 <= u.numpy().min() and u.numpy().max() < 1
    w = Tensor.randn(3, 4, requires_grad=True, device=device)
    assert w.requires_grad and w.is_leaf and w.device == device
    ref = Tensor(np.ones((2, 3), np.float64), device=device)
    for like in (Tensor.zeros_like(ref), Tensor.ones_like(ref), Tensor.full_like(ref, 2.0),
                 Tensor.randn_like(ref), Tensor.rand_like(ref)):
        assert like.shape == (2, 3) and like.dtype == np.float64 and like.device == device
    assert Tensor.zeros_like(ref, dtype=np.float32).dtype == np.float32


def test_seeded_factories_repeat():
    tl.manual_seed(123)
    a = Tensor.randn(5).numpy()
    tl.manual_seed(123)
    assert np.array_equal(a, Tensor.randn(5).numpy())
    assert not np.array_equal(a, Tensor.randn(5).numpy())


def test_properties_and_conversions(device):
    t = Tensor(np.arange(6.0).reshape(2, 3), device=device)
    assert (t.shape, t.ndim, t.size, t.dtype, t.device, len(t)) == ((2, 3), 2, 6, np.float64, device, 2)
    assert isinstance(t.numpy(), np.ndarray) and t.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert Tensor(3.0, device=device).item() == 3.0 and float(Tensor([2.0], device=device)) == 2.0
    with pytest.raises(ValueError, match=r"item\(\) needs a tensor with exactly one element, got shape \(2, 3\)"):
        t.item()
    with pytest.raises(TypeError, match="0-d"):
        len(Tensor(1.0))
    assert t.to(device) is t
    assert [row.tolist() for row in t] == [[0, 1, 2], [3, 4, 5]]  # iteration stops at the end


def test_astype_and_double_float_carry_gradient(device):
    x = Tensor(np.ones(2, np.float32), requires_grad=True, device=device)
    y = x.double()
    assert y.dtype == np.float64 and x.astype(np.float32) is x
    (y * 3).sum().backward()
    assert x.grad.dtype == np.float32 and x.grad.tolist() == [3, 3]
    assert Tensor(np.ones(2), device=device).float().dtype == np.float32


def test_operators_with_tensors_arrays_and_scalars(device):
    a = Tensor(np.array([1.0, 2.0, 3.0]), device=device)
    b = np.array([4.0, 5.0, 6.0])
    an = a.numpy()
    for got, want in ((a + b, an + b), (b + a, b + an), (a - 1, an - 1), (1 - a, 1 - an),
                      (a * 2, an * 2), (2 * a, 2 * an), (a / 2, an / 2), (2 / a, 2 / an),
                      (a ** 2, an ** 2), (2 ** a, 2 ** an), (-a, -an), (+a, an),
                      (a @ b, an @ b), (a.pow(Tensor(2.0, dtype=np.float64, device=device)), an ** 2)):
        np.testing.assert_allclose(got.numpy(), want)
        assert got.dtype == np.float64


def test_integer_tensors_do_integer_arithmetic(device):
    i = Tensor(np.array([1, 2, 3]), device=device)
    assert (i + 1).dtype == np.int64 and (i * i).tolist() == [1, 4, 9]


def test_repr_shows_data_dtype_device_and_grad_fn(device):
    x = Tensor([1.0, 2.0], requires_grad=True, device=device)
    assert repr(x) == f"Tensor([1., 2.], dtype=float32, device='{device}', requires_grad=True)"
    r = repr(x * 2)
    assert r.startswith("Tensor([2., 4.]") and f"device='{device}'" in r and "grad_fn=Mul" in r
    assert "dtype=int64" in repr(Tensor(np.arange(3), device=device))
    assert "..." in repr(Tensor.zeros(1000, device=device))  # large tensors are summarised


def test_grad_is_a_plain_tensor(device):
    x = Tensor([1.0], requires_grad=True, device=device)
    (x * 2).sum().backward()
    assert isinstance(x.grad, Tensor) and not x.grad.requires_grad and x.grad.grad_fn is None
    assert isinstance(x.grad.numpy(), np.ndarray)


def test_hash_and_eq_are_separate(device):
    a, b = Tensor([1.0], device=device), Tensor([1.0], device=device)
    assert len({a, b}) == 2  # hashed by identity, so tensors can key dicts
    assert (a == b).tolist() == [True]  # == compares elementwise, like NumPy
