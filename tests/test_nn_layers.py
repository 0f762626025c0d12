"""Layers: forward against NumPy formulas, float64 gradient checks through the modules'
parameters on hypothesis shapes, and PyTorch's default initialisations."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_llm as tl
from tinygrad_llm import Tensor, nn

f64 = np.float64


def batch_shape():
    return st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


def x_of(shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


def check_module(layer, x):
    """Gradcheck the input and every parameter of `layer` (gradcheck perturbs their arrays in
    place, so the module sees the perturbation)."""
    params = list(layer.parameters())
    assert tl.gradcheck(lambda x, *ps: layer(x), [x, *params], atol=1e-6, rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(batch_shape(), st.integers(1, 5), st.integers(1, 4), st.booleans())
def test_linear_forward_and_gradients(batch, n_in, n_out, bias):
    layer = nn.Linear(n_in, n_out, bias=bias, dtype=f64)
    x = x_of(batch + (n_in,))
    want = x.numpy() @ layer.weight.numpy().T + (layer.bias.numpy() if bias else 0.0)
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-12, atol=1e-12)
    check_module(layer, x)


def test_linear_weight_is_out_by_in_and_conv1d_loads_by_one_transpose():
    layer = nn.Linear(3, 5)
    assert layer.weight.shape == (5, 3) and layer.bias.shape == (5,)
    conv1d_w = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)  # HF GPT-2: (in, out)
    layer.weight.data[...] = conv1d_w.T
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).numpy(), x @ conv1d_w + layer.bias.numpy(), rtol=1e-6)


def test_linear_init_is_pytorchs_uniform_bound():
    tl.manual_seed(0)
    layer = nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    w, b = layer.weight.numpy(), layer.bias.numpy()
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.99 * bound  # fills the interval
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound  # U(-a, a) has std a / sqrt(3)
    tl.manual_seed(0)
    np.testing.assert_array_equal(nn.Linear(400, 300).weight.numpy(), w)  # seeded
    assert not np.array_equal(nn.Linear(400, 300).weight.numpy(), w)


@settings(max_examples=10, deadline=None)
@given(batch_shape(), st.integers(1, 6), st.integers(1, 4))
def test_embedding_lookup_and_gradient(batch, vocab, dim):
    emb = nn.Embedding(vocab, dim, dtype=f64)
    ids = np.random.default_rng(0).integers(0, vocab, batch + (3,))  # repeats: gradients add up
    np.testing.assert_array_equal(emb(ids).numpy(), emb.weight.numpy()[ids])
    assert tl.gradcheck(lambda w: emb(Tensor(ids)), [emb.weight])


def test_embedding_init_is_standard_normal():
    w = nn.Embedding(500, 200).weight.numpy()
    assert w.dtype == np.float32 and abs(w.mean()) < 0.01 and abs(w.std() - 1) < 0.01


@settings(max_examples=15, deadline=None)
@given(batch_shape(), st.integers(2, 6), st.booleans())
def test_layernorm(batch, C, bias):
    ln = nn.LayerNorm(C, eps=1e-5, bias=bias, dtype=f64)
    assert np.all(ln.weight.numpy() == 1) and (not bias or np.all(ln.bias.numpy() == 0))
    rng = np.random.default_rng(1)
    ln.weight.data[...] = rng.standard_normal(C)  # non-trivial gains so their gradient shows
    if bias:
        ln.bias.data[...] = rng.standard_normal(C)
    x = x_of(batch + (C,), seed=2)
    xv = x.numpy()
    want = (xv - xv.mean(-1, keepdims=True)) / np.sqrt(xv.var(-1, keepdims=True) + 1e-5)
    want = want * ln.weight.numpy() + (ln.bias.numpy() if bias else 0.0)
    np.testing.assert_allclose(ln(x).numpy(), want, rtol=1e-10, atol=1e-10)
    check_module(ln, x)


@settings(max_examples=15, deadline=None)
@given(batch_shape(), st.integers(1, 6))
def test_rmsnorm(batch, C):
    norm = nn.RMSNorm(C, eps=1e-6, dtype=f64)
    assert np.all(norm.weight.numpy() == 1)
    norm.weight.data[...] = np.random.default_rng(1).standard_normal(C)
    x = x_of(batch + (C,), seed=3)
    xv = x.numpy()
    want = xv / np.sqrt((xv ** 2).mean(-1, keepdims=True) + 1e-6) * norm.weight.numpy()
    np.testing.assert_allclose(norm(x).numpy(), want, rtol=1e-10, atol=1e-12)
    check_module(norm, x)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu(approximate):
    x = x_of((3, 4))
    xv = x.numpy()
    if approximate == "tanh":
        want = 0.5 * xv * (1 + np.tanh(math.sqrt(2 / math.pi) * (xv + 0.044715 * xv ** 3)))
    else:
        want = 0.5 * xv * (1 + np.vectorize(math.erf)(xv / math.sqrt(2)))
    np.testing.assert_allclose(nn.GELU(approximate)(x).numpy(), want, rtol=1e-10, atol=1e-12)
    check_module(nn.GELU(approximate), x)


def test_dropout_train_eval_and_seed():
    drop = nn.Dropout(0.25)
    x = Tensor(np.ones((200, 100), np.float32))
    tl.manual_seed(5)
    a = drop(x).numpy()
    tl.manual_seed(5)
    b = drop(x).numpy()
    np.testing.assert_array_equal(a, b)  # a seed fixes the mask
    assert set(np.unique(a).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.02
    drop.eval()
    assert drop(x) is x
    assert nn.Dropout(0.0)(x) is x
    with pytest.raises(ValueError, match="p must be in"):
        nn.Dropout(1.5)


def test_layer_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"shape \(2, 4\).*\(5, 3\)"):
        nn.Linear(3, 5)(Tensor(np.ones((2, 4), np.float32)))
    with pytest.raises(ValueError, match="sizes must be positive"):
        nn.Linear(0, 3)


def test_init_functions_are_in_place_and_seeded():
    p = nn.Parameter(np.zeros((50, 40), np.float32))
    data = p.data
    tl.manual_seed(1)
    nn.init.uniform_(p, -2.0, 3.0)
    assert p.data is data and p.data.min() >= -2.0 and p.data.max() < 3.0
    nn.init.normal_(p, mean=1.0, std=0.1)
    assert abs(p.data.mean() - 1.0) < 0.01 and abs(p.data.std() - 0.1) < 0.01
    nn.init.zeros_(p)
    assert not p.data.any()
