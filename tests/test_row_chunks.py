"""The row-chunk runner behind the fused ops: chunks of rows on several threads give the same
result as one call, and every chunked op still passes its gradcheck when cut into tiny chunks."""
import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.ops import row_chunks


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n, row", [(1, 5), (7, 3), (64, 1), (10, 0)])
def test_by_row_chunks_matches_one_call(monkeypatch, threads, n, row):
    monkeypatch.setattr(row_chunks, "CHUNK_ELEMENTS", 4)
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, row) if row else (n,)).astype(np.float32)
    b = rng.standard_normal(a.shape)

    def fn(x, y):
        return x * 2, (x + y).sum(axis=-1) if x.ndim > 1 else x + y

    got = row_chunks.by_row_chunks(fn, a, b, threads=threads)
    want = fn(a, b)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_in_place_chunks_write_each_result_row_once(monkeypatch, threads, n):
    monkeypatch.setattr(row_chunks, "CHUNK_ELEMENTS", 6)
    a = np.random.default_rng(n).standard_normal((n, 3))
    seen = []

    def fn(x, out=None):
        seen.append(out is None)
        y, s = out if out is not None else (None, None)
        return np.multiply(x, 2, out=y), np.sum(x, axis=1, out=s)

    y, s = row_chunks.by_row_chunks(fn, a, threads=threads, inplace=True)
    np.testing.assert_array_equal(y, a * 2)
    np.testing.assert_array_equal(s, a.sum(axis=1))
    assert seen[0] and not any(seen[1:])  # only the first chunk allocates its own results


def test_errors_in_a_thread_reach_the_caller(monkeypatch):
    monkeypatch.setattr(row_chunks, "CHUNK_ELEMENTS", 1)

    def fn(x):
        if x[0] == 5:
            raise RuntimeError("chunk with 5")
        return x

    with pytest.raises(RuntimeError, match="chunk with 5"):
        row_chunks.by_row_chunks(fn, np.arange(8.0), threads=2)


OPS = {
    "cross_entropy": (lambda x: F.cross_entropy(x, np.array([0, 4, -100, 2, 2, 1])), 1),
    "cross_entropy_smooth": (lambda x: F.cross_entropy(x, np.array([0, 4, 3, 2, 2, 1]), reduction="none",
                                                       label_smoothing=0.1), 1),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b), 3),
    "rms_norm": (lambda x, w: F.rms_norm(x, w), 2),
    "gelu": (lambda x: F.gelu(x), 1),
    "gelu_exact": (lambda x: F.gelu(x, "none"), 1),
    "silu": (lambda x: F.silu(x), 1),
    "swiglu": (lambda x, u: F.swiglu(x, u), 2),
}


@pytest.mark.parametrize("name", list(OPS))
def test_ops_in_tiny_row_chunks(monkeypatch, name):
    monkeypatch.setattr(row_chunks, "CHUNK_ELEMENTS", 7)  # not a multiple of the row length
    fn, n_in = OPS[name]
    rng = np.random.default_rng(0)
    shapes = [(6, 5), (5,), (5,)] if name in ("layer_norm", "rms_norm") else [(6, 5)] * 2
    arrays = [rng.standard_normal(s) for s in shapes[:n_in]]
    ts = [Tensor(a, requires_grad=True) for a in arrays]
    assert tl.gradcheck(fn, ts)
    monkeypatch.setattr(row_chunks, "CHUNK_ELEMENTS", 1 << 30)
    whole = fn(*[Tensor(a) for a in arrays]).numpy()
    monkeypatch.setattr(row_chunks, "CHUNK_ELEMENTS", 7)
    np.testing.assert_allclose(fn(*[Tensor(a) for a in arrays]).numpy(), whole, rtol=1e-14, atol=1e-14)
