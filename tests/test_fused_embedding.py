"""Embedding: float64 gradcheck with repeated ids on hypothesis shapes, the segment-sum backward
against np.add.at for small and large vocabularies, bad ids named."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds, shapes

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops.embedding import embedding_backward_cpu


@SETTINGS
@given(id_shape=shapes(min_dims=0, max_dims=3), V=st.integers(1, 5), C=st.integers(1, 4), seed=seeds)
def test_gradcheck(device, id_shape, V, C, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, id_shape)  # few ids: repeats are the rule
    w = rng.standard_normal((V, C))
    y = F.embedding(ids, Tensor(w.astype(np.float32), device=device))
    assert y.shape == tuple(id_shape) + (C,) and y.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), w.astype(np.float32)[ids])
    wt = Tensor(w, device=device, requires_grad=True)
    assert tl.gradcheck(lambda a: F.embedding(ids, a), [wt])


@pytest.mark.parametrize("N, C, V", [(1, 3, 1), (500, 8, 3), (2000, 16, 65), (3000, 4, 50304), (0, 4, 7)])
def test_backward_matches_add_at(N, C, V):
    rng = np.random.default_rng(N)
    ids = rng.integers(0, V, N)
    ids[: N // 4] = ids[0] if N else 0  # one id repeated many times
    dy = rng.standard_normal((N, C)).astype(np.float32)
    want = np.zeros((V, C), np.float32)
    np.add.at(want, ids, dy)
    got = embedding_backward_cpu(ids, dy, V)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ids_as_tensor_and_accumulation():
    w = Tensor(np.arange(12.0).reshape(4, 3), requires_grad=True)
    ids = Tensor(np.array([[1, 1], [3, 0]]))
    F.embedding(ids, w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [[1] * 3, [2] * 3, [0] * 3, [1] * 3])


def test_bad_ids_are_named():
    w = Tensor(np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match=r"id 5 is outside \[0, 5\)"):
        F.embedding(np.array([0, 5]), w)
    with pytest.raises(ValueError, match=r"id -1 is outside"):
        F.embedding(np.array([-1, 2]), w)
    with pytest.raises(TypeError, match="integers.*float"):
        F.embedding(np.array([0.0, 1.0]), w)
    with pytest.raises(ValueError, match=r"\(5, 2, 1\)"):
        F.embedding(np.array([0]), Tensor(np.zeros((5, 2, 1), np.float32)))


@SETTINGS
@given(N=st.integers(1, 12), V=st.integers(1, 5), seed=seeds)
def test_padding_idx_row_gets_no_gradient(device, N, V, seed):
    """padding_idx p: the forward is the plain lookup, and dW is np.add.at's with row p zeroed (as
    PyTorch's nn.Embedding(padding_idx=p) and every Hugging Face model with a pad_token_id)."""
    rng = np.random.default_rng(seed)
    ids, p = rng.integers(0, V, N), int(rng.integers(0, V))
    w, dy = rng.standard_normal((V, 3)), rng.standard_normal((N, 3))
    t = Tensor(w, device=device, requires_grad=True)
    y = F.embedding(ids, t, padding_idx=p)
    y.backward(Tensor(dy, device=device))
    np.testing.assert_array_equal(y.numpy(), w[ids])
    want = np.zeros_like(w)
    np.add.at(want, ids, dy)
    want[p] = 0
    np.testing.assert_allclose(t.grad.numpy(), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=rf"padding_idx {V} is outside \[0, {V}\)"):
        F.embedding(ids, t, padding_idx=V)
