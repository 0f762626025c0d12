"""The flash kernel serves ALiBi as the CPU op computes it: kernels/attention.cu under the host
emulator (or on a GPU), against ops/attention.py's query-block loop with the paper's slopes, and
the op's dispatch handing the kernel its slopes and window (nothing dropped on the way)."""
import numpy as np
import pytest
from test_attention_kernel import Device, dev  # noqa: F401  (the emulated / GPU device fixture)

import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.cuda import attention as fa
from tinygrad_llm.ops import attention
from tinygrad_llm.ops.alibi import alibi_slopes


def _problem(B, H, Hkv, Tq, Tk, D, seed, with_seg, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q, do = (rng.standard_normal((B, H, Tq, D)).astype(dtype) for _ in range(2))
    k, v = (rng.standard_normal((B, Hkv, Tk, D)).astype(dtype) for _ in range(2))
    seg = np.cumsum(rng.random((B, Tk)) < 0.15, axis=1).astype(np.int32) if with_seg else None
    return q, k, v, do, seg


@pytest.mark.parametrize("s", [
    dict(B=1, H=6, Hkv=3, Tq=33, Tk=33, window=None, seg=True),   # 6 heads: the interleaved slopes
    dict(B=2, H=4, Hkv=1, Tq=5, Tk=40, window=None, seg=False),   # a KV-cache offset, GQA 4:1
    dict(B=1, H=2, Hkv=2, Tq=20, Tk=20, window=7, seg=True),      # with a sliding window
])
def test_kernel_matches_the_cpu_op_with_alibi(dev, s):  # noqa: F811
    D, scale = 32, 1 / np.sqrt(32)
    q, k, v, do, seg = _problem(s["B"], s["H"], s["Hkv"], s["Tq"], s["Tk"], D, 0, s["seg"])
    slopes = alibi_slopes(s["H"])
    o, qs, Es, inv, lse = attention.attention_forward_cpu(q, k, v, True, scale, seg, window=s["window"],
                                                          alibi=slopes)
    want = attention.attention_backward_cpu(do, o, qs, k, v, scale, True, seg, Es=Es, inv_rowsum=inv,
                                            lse=lse, window=s["window"], alibi=slopes)
    masks = dict(segment_ids=None if seg is None else dev.put(seg), window=s["window"],
                 alibi_slopes=dev.put(slopes))
    args = [dev.put(a) for a in (q, k, v)]
    ko, klse = fa.flash_attention_forward(*args, True, scale, **masks)
    np.testing.assert_allclose(Device.host(ko), o, rtol=1e-10, atol=1e-11, err_msg="o")
    np.testing.assert_allclose(Device.host(klse), lse.reshape(klse.shape), rtol=1e-10, err_msg="lse")
    grads = fa.flash_attention_backward(dev.put(do), *args, ko, klse, True, scale, **masks)
    for got, w, what in zip(grads, want, ("dq", "dk", "dv")):
        np.testing.assert_allclose(Device.host(got), w.reshape(got.shape), rtol=1e-9, atol=1e-10, err_msg=what)


def test_the_op_hands_the_kernel_its_slopes_and_window(dev, monkeypatch):  # noqa: F811
    """Through F.scaled_dot_product_attention with the kernel standing in for the GPU path (float32,
    D = 32): the same output and gradients as the CPU loop, so slopes and window reached it."""
    if not dev.emulated:
        pytest.skip("the dispatch is checked with the emulated kernel on NumPy arrays")
    q, k, v, do, seg = _problem(1, 4, 2, 9, 9, 32, 1, True, np.float32)
    kw = dict(segment_ids=seg, window=5, alibi_slopes=alibi_slopes(4))
    results = []
    for glue in (fa, None):
        monkeypatch.setattr(attention, "flash_kernels", lambda q, k, v, glue=glue: glue)
        ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(*ts, **kw)
        out.backward(Tensor(do))
        results.append([np.asarray(out.data)] + [np.asarray(t.grad.data) for t in ts])
    for got, want, what in zip(*results, ("o", "dq", "dk", "dv")):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=what)
    plain = np.asarray(F.scaled_dot_product_attention(*(Tensor(a) for a in (q, k, v)), segment_ids=seg).data)
    assert np.abs(plain - results[0][0]).max() > 1e-2  # the slopes and window changed the answer
