"""Every fused op against its textbook version: the docstring's formula in a few NumPy lines,
which sits in the op's module next to the tuned *_cpu functions. The op runs as users call it
(F.*, forward and backward), in float64, on hypothesis shapes, cut into tiny row chunks so the
chunked path runs too; the textbook version is the judge."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opcheck import SETTINGS, seeds

import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops import activation, cross_entropy, embedding, norm, row_chunks, softmax

rows = st.integers(1, 12)
cols = st.integers(1, 9)


@pytest.fixture(autouse=True)
def tiny_row_chunks(monkeypatch):
    monkeypatch.setattr(row_chunks, "CHUNK_ELEMENTS", 7)  # several chunks, not a multiple of a row


def run(fn, *arrays, dy):
    """fn's output and its inputs' gradients for the incoming gradient dy, through the op."""
    ts = [Tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    (y * Tensor(dy)).sum().backward()
    return y.numpy(), [t.grad.numpy() for t in ts]


def draw(seed, *shapes, scale=1.0):
    rng = np.random.default_rng(seed)
    return [scale * rng.standard_normal(s) for s in shapes]


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(n=rows, c=cols, seed=seeds, scale=st.sampled_from([1.0, 300.0]))
def test_softmax_and_log_softmax(n, c, seed, scale):
    # scale 300: exp overflows without the shift, so the tuned path's shifted branch runs too
    x, dy = draw(seed, (n, c), (n, c), scale=scale)
    y, (dx,) = run(F.softmax, x, dy=dy)
    close(y, softmax.softmax_textbook(x))
    close(dx, softmax.softmax_backward_textbook(softmax.softmax_textbook(x), dy))
    y, (dx,) = run(F.log_softmax, x, dy=dy)
    close(y, softmax.log_softmax_textbook(x))
    close(dx, softmax.log_softmax_backward_textbook(softmax.log_softmax_textbook(x), dy))


@SETTINGS
@given(n=rows, c=st.integers(2, 9), seed=seeds, eps=st.sampled_from([0.0, 0.1]),
       scale=st.sampled_from([1.0, 300.0]))
def test_cross_entropy(n, c, seed, eps, scale):
    x, dy = draw(seed, (n, c), (n,), scale=scale)
    rng = np.random.default_rng(seed + 1)
    t = rng.integers(0, c, n)
    t[rng.random(n) < 0.3] = -100  # some rows ignored
    valid = t != -100
    y, (dx,) = run(lambda a: F.cross_entropy(a, t, reduction="none", label_smoothing=eps), x, dy=dy)
    close(y, cross_entropy.cross_entropy_textbook(x, t, valid, eps))
    close(dx, cross_entropy.cross_entropy_backward_textbook(x, t, valid, dy, eps))


@SETTINGS
@given(n=rows, c=st.integers(2, 9), seed=seeds)
def test_layer_norm_and_rms_norm(n, c, seed):
    x, w, b, dy = draw(seed, (n, c), (c,), (c,), (n, c))
    y, (dx, dw, db) = run(F.layer_norm, x, w, b, dy=dy)
    close(y, norm.layer_norm_textbook(x, w, b))
    for got, want in zip((dx, dw, db), norm.layer_norm_backward_textbook(dy, x, w)):
        close(got, want)
    y, (dx, dw) = run(F.rms_norm, x, w, dy=dy)
    close(y, norm.rms_norm_textbook(x, w))
    for got, want in zip((dx, dw), norm.rms_norm_backward_textbook(dy, x, w)):
        close(got, want)


@SETTINGS
@given(n=rows, c=cols, seed=seeds, approximate=st.sampled_from(["tanh", "none"]))
def test_gelu(n, c, seed, approximate):
    x, dy = draw(seed, (n, c), (n, c), scale=3.0)
    y, (dx,) = run(lambda a: F.gelu(a, approximate=approximate), x, dy=dy)
    close(y, activation.gelu_textbook(x, approximate))
    close(dx, activation.gelu_backward_textbook(dy, x, approximate))


@SETTINGS
@given(n=st.integers(1, 40), v=st.integers(1, 6), c=cols, seed=seeds)
def test_embedding(n, v, c, seed):
    (w,) = draw(seed, (v, c))
    ids = np.random.default_rng(seed).integers(0, v, (2, n))  # many repeats: v is small
    (dy,) = draw(seed + 1, (2, n, c))
    y, (dw,) = run(lambda a: F.embedding(ids, a), w, dy=dy)
    close(y, w[ids])
    close(dw, embedding.embedding_backward_textbook(ids, dy, v))
