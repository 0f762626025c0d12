"""Helpers the op tests share: hypothesis shapes, input values kept away from kinks, and `check`,
which runs one op three ways: forward against NumPy, float64 gradcheck, and a float32 pass that
asserts every backward returns gradients in its inputs' dtypes and shapes."""
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_llm as tl
from tinygrad_llm import Tensor, autograd

# the device fixture is a constant string: reusing it across generated inputs is safe
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
seeds = st.integers(0, 2**16)


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcast_pairs(min_side=1, max_side=4):
    """Two shapes that broadcast together (size-1 axes, missing leading axes, 0-d included)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3,
                                             min_side=min_side, max_side=max_side).map(
        lambda s: s.input_shapes)


def values(shape, seed, kind="normal"):
    """float64 test values: normal, positive (0.5..2), away from 0 (|x| >= 0.2), or distinct
    (pairwise gaps >= 0.1, so max/min/sort never tie and finite differences never cross a kink)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if kind == "normal":
        out = rng.standard_normal(n)
    elif kind == "positive":
        out = rng.uniform(0.5, 2.0, n)
    elif kind == "away":
        out = rng.choice([-1.0, 1.0], n) * rng.uniform(0.2, 1.5, n)
    elif kind == "distinct":
        out = (rng.permutation(n) - n / 2) * 0.25 + rng.uniform(-0.05, 0.05, n)
    else:
        raise ValueError(kind)
    return out.reshape(shape)


def _dtype_observer(node, dy, dxs, seconds):
    for parent, dx in zip(node.parents, dxs):
        if parent is None or dx is None:
            continue
        want = (parent.shape, parent.dtype) if isinstance(parent, autograd.Context) else \
            (parent.data.shape, parent.data.dtype)
        assert (dx.shape, dx.dtype) == want, (
            f"{node.fn.__name__}.backward returned {dx.dtype}{dx.shape} for an input {want[1]}{want[0]}")


def check(fn, ref, arrays, device, grad=None, atol=1e-5, rtol=1e-4, gc_atol=1e-6, gc_rtol=1e-4):
    """fn: Tensors -> Tensor; ref: NumPy arrays -> array (the same function in NumPy).

    grad: which inputs get requires_grad (default: all). Checks, in order:
    1. forward in float64 and float32 matches ref (and keeps float32 as float32);
    2. tl.gradcheck in float64 on `device`;
    3. a float32 forward+backward where every node returns gradients in its inputs' dtypes.
    """
    grad = [True] * len(arrays) if grad is None else grad
    for dtype, tol in ((np.float64, 1e-10), (np.float32, atol)):
        ts = [Tensor(np.asarray(a, dtype=dtype), device=device) for a in arrays]
        got = fn(*ts)
        want = ref(*[np.asarray(a, dtype=dtype) for a in arrays])
        assert got.shape == np.shape(want), (got.shape, np.shape(want))
        assert got.dtype == dtype, f"forward changed {np.dtype(dtype)} to {got.dtype}"
        np.testing.assert_allclose(got.numpy(), want, rtol=max(tol, rtol) if dtype == np.float32 else 1e-10,
                                   atol=tol)
    ts = [Tensor(np.asarray(a, dtype=np.float64), device=device, requires_grad=g)
          for a, g in zip(arrays, grad)]
    assert tl.gradcheck(fn, ts, atol=gc_atol, rtol=gc_rtol)
    ts = [Tensor(np.asarray(a, dtype=np.float32), device=device, requires_grad=g)
          for a, g in zip(arrays, grad)]
    out = fn(*ts)
    autograd.add_backward_observer(_dtype_observer)
    try:
        out.backward(Tensor(np.ones(out.shape, np.float32), device=device))
    finally:
        autograd.remove_backward_observer(_dtype_observer)
    for t, g in zip(ts, grad):
        if g and t.grad is not None:
            assert t.grad.dtype == np.float32 and t.grad.shape == t.shape
