"""tl.gradcheck itself: it passes correct gradients and catches wrong ones in each of its modes
(full Jacobian, J^T dy only, random directions), naming the input, the element and both values."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor
from tinygrad_llm.autograd import Function


class HalfSquare(Function):
    """y = x^2 with a wrong backward (x * dy instead of 2 x * dy)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        return dy * x


class SwapsRows(Function):
    """y = x (n, 2) @ [[1, 2], [3, 4]]; backward wrongly uses the transposed matrix."""

    @staticmethod
    def forward(ctx, x):
        return x @ np.array([[1.0, 2.0], [3.0, 4.0]])

    @staticmethod
    def backward(ctx, dy):
        return dy @ np.array([[1.0, 2.0], [3.0, 4.0]])


def leaf(shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


def test_passes_correct_gradients(device):
    x = Tensor(np.random.randn(3, 4), requires_grad=True, device=device)
    w = Tensor(np.random.randn(4, 2), requires_grad=True, device=device)
    assert tl.gradcheck(lambda a, b: (a @ b).tanh(), [x, w]) is True
    assert tl.gradcheck(lambda a: a.exp().sum(), [Tensor(np.float64(0.3), requires_grad=True, device=device)])


def test_full_jacobian_names_input_element_and_values():
    c = Tensor(np.ones((2, 3)))
    x = leaf((2, 3))
    with pytest.raises(tl.GradcheckError) as err:
        tl.gradcheck(lambda a, b: a + HalfSquare.apply(b), [c, x])
    msg = str(err.value)
    assert "input 1 (shape (2, 3))" in msg and "element (" in msg and "output element (" in msg
    assert "analytic" in msg and "numeric" in msg
    # the worst element is reported: where |x| is largest, the error x is largest
    worst = np.unravel_index(np.argmax(np.abs(x.numpy())), x.shape)
    assert f"element {tuple(int(i) for i in worst)}," in msg


def test_catches_a_transposed_backward():
    # dy @ M instead of dy @ M^T: right shape, wrong Jacobian entries
    x = leaf((3, 2))
    with pytest.raises(tl.GradcheckError, match="input 0"):
        tl.gradcheck(SwapsRows.apply, [x])


def test_large_output_uses_the_vector_jacobian_product():
    x = leaf((20, 20))  # 400 outputs > max_rows: one dense dy, every input element checked
    with pytest.raises(tl.GradcheckError, match=r"input 0 \(shape \(20, 20\)\) element .* random dense dy"):
        tl.gradcheck(HalfSquare.apply, [x])
    assert tl.gradcheck(lambda a: a * a, [x])


def test_large_input_uses_random_directions():
    x = leaf((50, 50))
    with pytest.raises(tl.GradcheckError, match=r"input 0 \(shape \(50, 50\)\) along random direction \d"):
        tl.gradcheck(HalfSquare.apply, [x])
    assert tl.gradcheck(lambda a: a * a, [x])


def test_non_contiguous_and_zero_d_inputs_are_perturbed_in_place():
    x = Tensor(np.random.randn(4, 3).T, requires_grad=True)  # a transposed view
    assert not x.data.flags.c_contiguous
    assert tl.gradcheck(lambda a: (a * a).sum(axis=0), [x])
    with pytest.raises(tl.GradcheckError):
        tl.gradcheck(HalfSquare.apply, [x])
    s = Tensor(np.float64(1.3), requires_grad=True)
    with pytest.raises(tl.GradcheckError, match=r"shape \(\)\) element \(\)"):
        tl.gradcheck(HalfSquare.apply, [s])


def test_unused_inputs_have_zero_gradient():
    x, unused = leaf((2,)), leaf((3,), 1)
    assert tl.gradcheck(lambda a, b: a * 2, [x, unused])


def test_refuses_float32_and_nothing_to_check():
    with pytest.raises(TypeError, match="input 0 is float32; gradients are checked in float64"):
        tl.gradcheck(lambda a: a * 2, [Tensor(np.ones(2, np.float32), requires_grad=True)])
    with pytest.raises(ValueError, match="no input has requires_grad"):
        tl.gradcheck(lambda a: a * 2, [Tensor(np.ones(2))])


def test_nan_gradient_is_a_failure():
    class NanGrad(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1

        @staticmethod
        def backward(ctx, dy):
            return dy * np.nan

    with pytest.raises(tl.GradcheckError, match="analytic nan"):
        tl.gradcheck(NanGrad.apply, [leaf((2,))])
