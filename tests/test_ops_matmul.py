"""Matrix products: 1-D, 2-D, batched and broadcast batch axes, and the Linear op; forward against
NumPy, float64 gradcheck on hypothesis shapes, errors naming both shapes."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from opcheck import SETTINGS, check, seeds, values

import tinygrad_llm.functional as F
from tinygrad_llm import Tensor


@st.composite
def matmul_shapes(draw):
    """Shapes a, b with a @ b defined: vectors, matrices, and batch axes that broadcast."""
    n, k, m = (draw(st.integers(1, 4)) for _ in range(3))
    batch_a, batch_b = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2,
                                                               max_side=3)).input_shapes
    a = (k,) if draw(st.integers(0, 4)) == 0 else batch_a + (n, k)
    b = (k,) if draw(st.integers(0, 4)) == 0 else batch_b + (k, m)
    return a, b


@SETTINGS
@given(ab=matmul_shapes(), seed=seeds, grad=st.sampled_from([(True, True), (True, False), (False, True)]))
def test_matmul(device, ab, seed, grad):
    a, b = values(ab[0], seed), values(ab[1], seed + 1)
    check(lambda u, v: u @ v, np.matmul, [a, b], device, grad=list(grad))


@pytest.mark.parametrize("a_shape, b_shape", [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)),
                                              ((4, 2, 3), (3, 5)), ((2, 3), (4, 3, 5)),
                                              ((2, 1, 2, 3), (1, 4, 3, 2)), ((3,), (2, 3, 4)),
                                              ((2, 4, 3), (3,)), ((0, 3), (3, 2)), ((2, 0), (0, 3))])
def test_matmul_named_cases(device, a_shape, b_shape):
    # the inner product (0-d result), vector-matrix, the shared-weight fold, and empty products
    check(lambda u, v: u @ v, np.matmul, [values(a_shape, 1), values(b_shape, 2)], device)


def test_matmul_with_arrays_and_reflected(device):
    w = np.arange(6.0).reshape(3, 2)
    x = Tensor(np.ones((2, 3)), requires_grad=True, device=device)
    np.testing.assert_array_equal((x @ w).numpy(), np.ones((2, 3)) @ w)
    np.testing.assert_array_equal((w.T @ x.T).numpy(), w.T @ np.ones((3, 2)))


def test_matmul_shape_errors(device):
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\) do not fit: the last axis "
                                         r"of the first \(3\) must equal the second-to-last axis of the second \(4\)"):
        Tensor.zeros(2, 3, device=device) @ Tensor.zeros(4, 5, device=device)
    with pytest.raises(ValueError, match=r"matmul: the batch axes of shapes \(2, 3, 4\) and \(5, 4, 1\)"):
        Tensor.zeros(2, 3, 4, device=device) @ Tensor.zeros(5, 4, 1, device=device)
    with pytest.raises(ValueError, match="at least one dimension"):
        Tensor(2.0, device=device) @ Tensor.zeros(3, device=device)


@SETTINGS
@given(lead=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), n_in=st.integers(1, 4),
       n_out=st.integers(1, 4), bias=st.booleans(), seed=seeds)
def test_linear(device, lead, n_in, n_out, bias, seed):
    x, w, b = values(lead + (n_in,), seed), values((n_out, n_in), seed + 1), values((n_out,), seed + 2)
    if bias:
        check(F.linear, lambda x, w, b: x @ w.T + b, [x, w, b], device)
    else:
        check(F.linear, lambda x, w: x @ w.T, [x, w], device)


def test_linear_errors(device):
    with pytest.raises(ValueError, match=r"linear: input of shape \(2, 3\) does not fit a weight of shape \(4, 5\)"):
        F.linear(Tensor.zeros(2, 3, device=device), Tensor.zeros(4, 5, device=device))
    with pytest.raises(ValueError, match=r"linear: bias of shape \(3,\) does not fit a weight of shape \(4, 5\)"):
        F.linear(Tensor.zeros(2, 5, device=device), Tensor.zeros(4, 5, device=device),
                 Tensor.zeros(3, device=device))
