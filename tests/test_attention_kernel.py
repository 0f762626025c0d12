"""The fused attention kernels (kernels/attention.cu) through their glue (cuda/attention.py).

Without a GPU they run in the host emulator (tests/kernel_emulator.cpp: one OS thread per CUDA
thread, barriers, shared memory, and a scalar model of the bf16 mma.sync fragments), against a
float64 NumPy reference written from the definition (tests/attention_reference.py), with
segment ids, sliding windows and ALiBi slopes. Every output and gradient buffer is NaN before the
launch, so an element a kernel forgets to write fails the test. The emulator also counts the
shared-memory bank conflicts of the bf16 fragment loads, and runs single blocks of launches over
tensors of more than 2^31 elements. With a GPU the same tests run on the device as well.
"""
import ctypes
import mmap
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tinygrad_llm import backend
from tinygrad_llm.cuda import attention as fa
from tinygrad_llm.cuda import runtime
from attention_reference import alibi_slopes, reference
from emulated_kernel import emulated_attention

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64), "bfloat16": BF16}


# --- running the kernels: emulated, or on the GPU -------------------------------------------------
EMULATED_DEVICE = fa.Device(0, "emulated sm_90", 232448, 90)  # an H100's opt-in shared memory


def _emulated(lib, stage, dtype, D, BN):
    """The emulator's build of attention_<stage><E, D, BN>, standing in for the compiled kernel."""
    return emulated_attention(lib, fa.kernel_name(stage, fa.element_type(dtype), D, BN))


class Device:
    def __init__(self, xp, emulated, lib=None):
        self.xp, self.emulated, self.lib = xp, emulated, lib

    def put(self, a):
        return self.xp.asarray(a)

    @staticmethod
    def host(a):
        return a.get() if hasattr(a, "get") else np.asarray(a)


@pytest.fixture(params=["emulated", pytest.param("gpu", marks=pytest.mark.gpu)])
def dev(request, monkeypatch):
    def nan_empty(shape, dtype):  # poisoned outputs: an element never written stays NaN
        return xp.full(shape, np.nan, dtype=dtype)
    if request.param == "gpu":
        xp = backend.cupy()
        device = Device(xp, False)
    else:
        lib = request.getfixturevalue("emulator_lib")
        xp = np
        monkeypatch.setattr(backend, "_cupy", np)
        monkeypatch.setattr(backend, "cupy", lambda: np)
        monkeypatch.setattr(fa, "_kernel", lambda stage, dtype, D, BN: _emulated(lib, stage, dtype, D, BN))
        monkeypatch.setattr(fa, "_device", lambda: EMULATED_DEVICE)
        # the emulator has every head dim in double (on the GPU the double backward would spill)
        monkeypatch.setattr(fa, "GPU_DOUBLE_HEAD_DIMS", fa.HEAD_DIMS)
        device = Device(np, True, lib)
    monkeypatch.setattr(runtime, "empty", nan_empty)
    return device


def _inputs(B, H, Hkv, Tq, Tk, D, dtype, seed, with_seg):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Tk, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Tk, D)).astype(dtype)
    do = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    seg = None
    if with_seg:  # packed documents: a new one starts at random positions
        seg = np.cumsum(rng.random((B, Tk)) < 0.15, axis=1).astype(np.int32)
    return q, k, v, do, seg


def _compare(got, want, dtype, what):
    got = Device.host(got).astype(np.float64)
    assert not np.isnan(got).any(), f"{what}: NaN in the output (an element was not written)"
    if dtype == BF16:
        # bf16 storage, float32 accumulation: within 1e-2 of the tensor's largest value. The 1e-5
        # floor is for gradients that are exactly zero in float64 (one visible key: dq = 0) where
        # the kernel's two float32 dot products dO.V and dO.O differ in their last bits.
        err = np.abs(got - want).max(initial=0.0)
        assert err <= 1e-2 * np.abs(want).max(initial=0.0) + 1e-5, f"{what}: max error {err}"
    else:
        tol = dict(rtol=1e-10, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(got, want, err_msg=what, **tol)


def run_and_check(dev, B, H, Hkv, Tq, Tk, D, dtype, causal, with_seg, seed=0, window=None,
                  alibi=False):
    q, k, v, do, seg = _inputs(B, H, Hkv, Tq, Tk, D, dtype, seed, with_seg)
    scale = 1.0 / np.sqrt(D)
    slopes = alibi_slopes(H) if alibi else None
    want = reference(q, k, v, do, causal, scale, seg, window, slopes)
    args = [dev.put(a) for a in (q, k, v)]
    masks = dict(segment_ids=None if seg is None else dev.put(seg), window=window,
                 alibi_slopes=None if slopes is None else dev.put(slopes))
    o, lse = fa.flash_attention_forward(*args, causal, scale, **masks)
    assert o.dtype == dtype and lse.dtype == fa.accumulator_dtype(dtype)
    _compare(o, want[0], dtype, "o")
    lse_tol = dict(rtol=1e-10) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Device.host(lse), want[1], err_msg="lse", **lse_tol)
    grads = fa.flash_attention_backward(dev.put(do), *args, o, lse, causal, scale, **masks)
    for got, w, what in zip(grads, want[2:], ("dq", "dk", "dv")):
        assert got.shape == w.shape and got.dtype == dtype, what
        _compare(got, w, dtype, what)
    return o, lse, grads


# --- the emulated sweep (default suite: tiny B and H) ---------------------------------------------
def _shapes():
    return st.fixed_dictionaries(dict(
        B=st.integers(1, 2), Hkv=st.integers(1, 2), group=st.sampled_from([1, 2]),
        Tq=st.sampled_from([1, 7, 33, 65]), extra=st.sampled_from([0, 0, 3, 40]),
        D=st.sampled_from([32, 64, 128]), causal=st.booleans(), seg=st.booleans()))


SWEEP = settings(max_examples=6, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _sweep(dev, dtype, s):
    assume(s["D"] in fa.head_dims(fa.element_type(dtype)))
    run_and_check(dev, s["B"], s["Hkv"] * s["group"], s["Hkv"], s["Tq"], s["Tq"] + s["extra"],
                  s["D"], dtype, s["causal"], s["seg"])


def _case(B, Hkv, group, Tq, extra, D, causal, seg):
    return dict(B=B, Hkv=Hkv, group=group, Tq=Tq, extra=extra, D=D, causal=causal, seg=seg)


EXAMPLES = [
    _case(1, 1, 1, 1, 0, 32, True, False),    # T = 1
    _case(1, 1, 2, 7, 0, 64, True, True),     # T = 7, GQA, documents
    _case(1, 1, 1, 65, 0, 128, True, True),   # T = 65: a partial second tile, D = 128
    _case(1, 2, 2, 7, 40, 32, True, True),    # KV cache: Tq < Tk, causal offset, GQA
    _case(2, 1, 1, 33, 3, 64, False, False),  # non-causal
]


def _with_examples(test):
    for case in EXAMPLES:
        test = example(s=case)(test)
    return test


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@SWEEP
@given(s=_shapes())
@_with_examples
def test_flash_attention_matches_float64(dev, dtype, s):
    _sweep(dev, DTYPES[dtype], s)


# bf16 runs each mma through the emulator's fragment exchange (two warp barriers per mma): the
# fixed examples plus two drawn shapes by default, more in the slow sweep below
@settings(SWEEP, max_examples=2)
@given(s=_shapes())
@_with_examples
def test_flash_attention_bf16_matches_float64(dev, s):
    _sweep(dev, BF16, s)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(s=_shapes())
def test_flash_attention_matches_float64_wide_sweep(dev, dtype, s):
    _sweep(dev, DTYPES[dtype], s)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("T", [64, 129, 257])
def test_flash_attention_several_tiles(dev, dtype, T):
    """Several query and key tiles in both directions, GQA, documents, causal."""
    run_and_check(dev, 1, 4, 2, T, T, 64, DTYPES[dtype], True, True, seed=T)


def test_non_causal_with_more_queries_than_keys(dev):
    run_and_check(dev, 1, 2, 1, 65, 7, 32, np.dtype(np.float32), False, False)


def test_bf16_runs_on_the_tensor_core_fragments(dev):
    """The bf16 instantiation goes through mma.sync (the emulator counts the modelled mmas)."""
    if not dev.emulated:
        pytest.skip("the mma count is the emulator's")
    before = dev.lib.emu_mma_count()
    run_and_check(dev, 1, 1, 1, 7, 7, 32, BF16, True, False)
    assert dev.lib.emu_mma_count() > before


def test_backward_is_bit_identical_between_runs(dev):
    """No atomics: two runs of the backward give the same bits (GQA sums in a fixed order)."""
    q, k, v, do, seg = _inputs(1, 4, 1, 65, 65, 32, np.float32, 5, True)
    args = [dev.put(a) for a in (q, k, v)]
    seg_d = dev.put(seg)
    o, lse = fa.flash_attention_forward(*args, True, 0.2, segment_ids=seg_d)
    first = [Device.host(g).copy() for g in
             fa.flash_attention_backward(dev.put(do), *args, o, lse, True, 0.2, segment_ids=seg_d)]
    again = fa.flash_attention_backward(dev.put(do), *args, o, lse, True, 0.2, segment_ids=seg_d)
    for a, b in zip(first, again):
        assert np.array_equal(a.view(np.uint32), Device.host(b).view(np.uint32))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_attention_op_runs_this_kernel(dev, dtype, monkeypatch):
    """F.scaled_dot_product_attention on device arrays reaches the kernel through the op's
    dispatch (ops/attention.py), with GQA, a KV-cache offset and documents, and its values and
    gradients match the float64 reference."""
    import tinygrad_llm.functional as F
    from tinygrad_llm import Tensor
    launched = []
    kernel = fa._kernel
    monkeypatch.setattr(fa, "_kernel", lambda stage, dt, D, BN: launched.append(stage) or kernel(stage, dt, D, BN))
    dt = DTYPES[dtype]
    q, k, v, do, seg = _inputs(1, 4, 2, 9, 12, 32, dt, 7, True)
    want = reference(q, k, v, do, True, 0.25, seg)
    ts = [Tensor(dev.put(a), requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, causal=True, scale=0.25, segment_ids=dev.put(seg))
    (out * Tensor(dev.put(do))).sum().backward()
    assert {"forward", "backward_dq", "backward_dkdv"} <= set(launched)
    for got, w, what in zip([out] + [t.grad for t in ts], (want[0],) + want[2:],
                            ("o", "dq", "dk", "dv")):
        _compare(got.data, w, dt, what)


def test_the_gpu_benchmark_check_runs(dev):
    """benchmarks/attention_gpu.py --check, at one small size: its reference, its comparisons
    and its repeat-run test work (on the GPU it runs the full sweep)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "attention_gpu.py"
    spec = importlib.util.spec_from_file_location("attention_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows, ok = bench.check(dev.xp, dims=(32,), Ts=(7,))
    assert ok and len(rows) == 2 and all(r["bit_identical"] for r in rows)


# --- sliding windows and ALiBi --------------------------------------------------------------------
def _masked_shapes():
    return st.fixed_dictionaries(dict(
        B=st.integers(1, 2), Hkv=st.integers(1, 2), group=st.sampled_from([1, 2]),
        Tq=st.sampled_from([1, 7, 33, 65, 100]), extra=st.sampled_from([0, 3, 40]),
        D=st.sampled_from([32, 64, 128]), window=st.sampled_from([None, 0, 1, 5, 17, 40, 1000]),
        alibi=st.booleans(), seg=st.booleans()))


MASK_EXAMPLES = [
    dict(B=1, Hkv=1, group=2, Tq=100, extra=0, D=32, window=17, alibi=True, seg=False),  # GQA, 4 key tiles
    dict(B=1, Hkv=2, group=1, Tq=7, extra=40, D=64, window=5, alibi=True, seg=True),  # KV cache
    dict(B=2, Hkv=1, group=1, Tq=65, extra=3, D=128, window=1, alibi=False, seg=False),  # itself only
    dict(B=1, Hkv=1, group=1, Tq=33, extra=0, D=32, window=None, alibi=True, seg=True),  # ALiBi alone
]


def _masked_sweep(dev, dtype, s):
    assume(s["D"] in fa.head_dims(fa.element_type(dtype)))
    run_and_check(dev, s["B"], s["Hkv"] * s["group"], s["Hkv"], s["Tq"], s["Tq"] + s["extra"], s["D"],
                  dtype, True, s["seg"], seed=s["Tq"], window=s["window"], alibi=s["alibi"])


def _with_mask_examples(test):
    for case in MASK_EXAMPLES:
        test = example(s=case)(test)
    return test


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(SWEEP, max_examples=4)
@given(s=_masked_shapes())
@_with_mask_examples
def test_window_and_alibi_match_float64(dev, dtype, s):
    """A sliding window and per-head ALiBi slopes, with GQA, a KV-cache offset and documents:
    forward and backward against the float64 definition."""
    _masked_sweep(dev, DTYPES[dtype], s)


@settings(SWEEP, max_examples=1)
@given(s=_masked_shapes())
@_with_mask_examples
def test_window_and_alibi_in_bf16_match_float64(dev, s):
    _masked_sweep(dev, BF16, s)


def test_no_window_and_no_alibi_change_nothing(dev):
    """window=0 and zero slopes give the same bits as the plain call (the mask and the bias vanish)."""
    q, k, v, do, seg = _inputs(1, 2, 1, 40, 40, 32, np.float32, 11, True)
    args = [dev.put(a) for a in (q, k, v)]
    plain = fa.flash_attention_forward(*args, True, 0.3, segment_ids=dev.put(seg))
    same = fa.flash_attention_forward(*args, True, 0.3, segment_ids=dev.put(seg), window=0,
                                      alibi_slopes=dev.put(np.zeros(2, np.float32)))
    for a, b in zip(plain, same):
        assert np.array_equal(Device.host(a), Device.host(b))


def _expected_mmas(stage, B, H, Hkv, Tq, Tk, D, BN, window):
    """The bf16 mma count of one causal launch if it visits exactly the tiles the window and the
    causal mask allow: forward and dq from the first key tile the block's first query's window
    reaches to the block's last visible key; dkdv from the first query tile that sees the key
    block to the last query whose window holds its last key."""
    BM, warps, off = 64, 4, Tk - Tq
    qk = D // 16 * BN // 8  # mmas of one 16 x BN product over D
    pv = BN // 16 * D // 8  # mmas of one 16 x D product over BN
    tiles = 0
    if stage in ("forward", "backward_dq"):
        for q0 in range(0, Tq, BM):
            end = min(Tk, min(q0 + BM, Tq) + off)
            begin = max(0, q0 + off - window + 1) // BN * BN if window else 0
            tiles += len(range(begin, end, BN))
        per = qk + pv if stage == "forward" else 2 * qk + pv
        return B * H * warps * tiles * per
    for k0 in range(0, Tk, BM):
        begin = max(0, k0 - off) // BN * BN
        end = min(Tq, max(0, k0 + BM - 1 + window - off)) if window else Tq
        tiles += len(range(begin, end, BN))
    return B * H * warps * tiles * 2 * (qk + pv)


@pytest.mark.parametrize("window", [0, 8, 70])
def test_tiles_outside_the_window_are_skipped(dev, window, monkeypatch):
    """The bf16 kernels run exactly the mmas of the tiles the causal mask and the window leave
    (counted by the emulator): a window of 8 over 192 keys skips most key tiles."""
    if not dev.emulated:
        pytest.skip("the mma count is the emulator's")
    B, H, Hkv, Tq, Tk, D = 1, 2, 1, 130, 192, 32
    q, k, v, do, _ = _inputs(B, H, Hkv, Tq, Tk, D, BF16, 3, False)
    counts = {}
    kernel = fa._kernel

    def counted(stage, dt, d, bn):
        fn = kernel(stage, dt, d, bn)

        def run(*a, **kw):
            before = dev.lib.emu_mma_count()
            fn(*a, **kw)
            counts[stage] = dev.lib.emu_mma_count() - before
        return run
    monkeypatch.setattr(fa, "_kernel", counted)
    args = [dev.put(a) for a in (q, k, v)]
    o, lse = fa.flash_attention_forward(*args, True, 0.2, window=window)
    fa.flash_attention_backward(dev.put(do), *args, o, lse, True, 0.2, window=window)
    for stage in ("forward", "backward_dq", "backward_dkdv"):
        assert counts[stage] == _expected_mmas(stage, B, H, Hkv, Tq, Tk, D, 32, window), stage
    if window == 8:
        assert counts["forward"] < _expected_mmas("forward", B, H, Hkv, Tq, Tk, D, 32, 0) / 2


# --- bank conflicts of the bf16 fragment loads ---------------------------------------------------
@pytest.mark.parametrize("D, BN", [(32, 32), (64, 32), (128, 32), (64, 16)])
def test_bf16_fragment_loads_have_no_bank_conflicts(dev, D, BN, monkeypatch):
    """Every warp-wide fragment load of every product (Q K^T, P V, dO V^T, dS K, P^T dO, dS^T Q,
    with their transposed tiles) is one wavefront: 32 lanes, 32 banks (the emulator groups each
    warp's loads and counts the distinct 4-byte words in the busiest bank)."""
    if not dev.emulated:
        pytest.skip("the bank count is the emulator's")
    monkeypatch.setattr(fa, "TILE_ROWS", (BN,))
    stats = (ctypes.c_long * 2)()
    dev.lib.emu_fragment_bank_stats(stats)  # reset
    run_and_check(dev, 1, 1, 1, 40, 40, D, BF16, True, False, seed=D)
    dev.lib.emu_fragment_bank_stats(stats)
    requests, wavefronts = stats[0], stats[1]
    assert requests > 0
    assert wavefronts == requests, f"{wavefronts / requests:.2f} wavefronts per fragment load"


# --- tensors of more than 2^31 elements ----------------------------------------------------------
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)  # Python < 3.13


def _huge(shape, dtype, poison_tail=0):
    """A C-contiguous array of `shape` in reserved-but-untouched memory (pages appear only when
    written), its last poison_tail elements NaN."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    a = np.frombuffer(buf, dtype=dtype).reshape(shape)
    if poison_tail:
        a.reshape(-1)[-poison_tail:] = np.nan
    return a


def test_offsets_past_2_to_the_31_elements(dev, monkeypatch):
    """B H T D = 2^33 elements (32 GiB of float32 per tensor, never touched but for the last heads):
    only the blocks of the last (batch, kv head) run, and their outputs match the float64
    definition, so every offset they take (2^33 - a few thousand) is computed in 64 bits."""
    if not dev.emulated:
        pytest.skip("the block range is the emulator's")
    B, H, Hkv, T, D = 128, 32768, 16384, 64, 32
    assert B * H * T * D == 2**33
    try:
        probe = _huge((B, H, T, D), np.float32)
        del probe
    except (OSError, ValueError) as e:
        pytest.skip(f"cannot reserve 32 GiB of address space here: {e}")
    lib = dev.lib
    lib.emu_set_block_range.argtypes = [ctypes.c_longlong, ctypes.c_longlong]
    last_blocks = {"forward": 2, "backward_prep": 2 * T // 8, "backward_dq": 2, "backward_dkdv": 1}

    def last_only(stage, dt, d, bn):
        fn = _emulated(lib, stage, dt, d, bn)

        def run(grid, block, args, shared_mem=0):
            total = int(np.prod(grid))
            lib.emu_set_block_range(total - last_blocks[stage], total)
            try:
                fn(grid, block, args, shared_mem=shared_mem)
            finally:
                lib.emu_set_block_range(0, -1)
        return run
    monkeypatch.setattr(fa, "_kernel", last_only)
    monkeypatch.setattr(runtime, "empty", lambda shape, dtype: _huge(shape, dtype, poison_tail=4 * T * D))
    rng = np.random.default_rng(0)
    q, do = _huge((B, H, T, D), np.float32), _huge((B, H, T, D), np.float32)
    k, v = _huge((B, Hkv, T, D), np.float32), _huge((B, Hkv, T, D), np.float32)
    for a in (q, do):
        a[-1, -2:] = rng.standard_normal((2, T, D))  # the last kv group: heads H-2, H-1
    for a in (k, v):
        a[-1, -1] = rng.standard_normal((T, D))
    slopes = alibi_slopes(H).astype(np.float32)
    o, lse = fa.flash_attention_forward(q, k, v, True, 0.2, window=40, alibi_slopes=slopes)
    dq, dk, dv = fa.flash_attention_backward(do, q, k, v, o, lse, True, 0.2, window=40,
                                             alibi_slopes=slopes)
    want = reference(q[-1:, -2:], k[-1:, -1:], v[-1:, -1:], do[-1:, -2:], True, 0.2, None, 40,
                     slopes[-2:])
    got = (o[-1:, -2:], lse[-1:, -2:], dq[-1:, -2:], dk[-1:, -1:], dv[-1:, -1:])
    for g, w, what in zip(got, want, ("o", "lse", "dq", "dk", "dv")):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=2e-4, atol=2e-5, err_msg=what)


def test_bad_shapes_are_refused_with_the_shapes(dev):
    q = dev.put(np.zeros((1, 3, 4, 32), np.float32))
    k = dev.put(np.zeros((1, 2, 4, 32), np.float32))
    with pytest.raises(ValueError, match="3 query heads are not a multiple of 2"):
        fa.flash_attention_forward(q, k, k, True, 1.0)
    with pytest.raises(ValueError, match="head dim 48"):
        z = dev.put(np.zeros((1, 1, 4, 48), np.float32))
        fa.flash_attention_forward(z, z, z, True, 1.0)
    with pytest.raises(ValueError, match="5 queries but 4 keys"):
        fa.flash_attention_forward(dev.put(np.zeros((1, 2, 5, 32), np.float32)), k, k, True, 1.0)
    with pytest.raises(ValueError, match=r"segment_ids of shape \(1, 3\)"):
        fa.flash_attention_forward(dev.put(np.zeros((1, 2, 4, 32), np.float32)), k, k, True, 1.0,
                                   segment_ids=dev.put(np.zeros((1, 3), np.int32)))
    q2 = dev.put(np.zeros((1, 2, 4, 32), np.float32))
    with pytest.raises(ValueError, match="window=3 needs causal=True"):
        fa.flash_attention_forward(q2, k, k, False, 1.0, window=3)
    with pytest.raises(ValueError, match=r"alibi_slopes of shape \(3,\) must be \(H,\) = \(2,\)"):
        fa.flash_attention_backward(q2, q2, k, k, q2, dev.put(np.zeros((1, 2, 4), np.float32)), True,
                                    1.0, alibi_slopes=dev.put(np.ones(3, np.float32)))


def test_reference_agrees_with_the_cpu_attention():
    """The test's own float64 reference is the CPU op where both apply (no documents): values
    and gradients of F.scaled_dot_product_attention, GQA and the KV-cache offset included."""
    import tinygrad_llm.functional as F
    from tinygrad_llm import Tensor
    q, k, v, do, _ = _inputs(2, 4, 2, 6, 9, 8, np.float64, 3, False)
    o, _, dq, dk, dv = reference(q, k, v, do, True, 0.3, None)
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, causal=True, scale=0.3)
    (out * Tensor(do)).sum().backward()
    for got, want in zip([out] + [t.grad for t in ts], (o, dq, dk, dv)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


# --- the compile check: every instantiation builds for sm_90 without register spills -------------
def ptxas_report(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the compile check needs the CUDA toolkit")
    src = runtime.KERNEL_DIR / fa.FILE
    run = subprocess.run([nvcc, "-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v",
                          f"-I{runtime.KERNEL_DIR}", str(src), "-o", str(tmp_path / "attention.cubin")],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"nvcc failed:\n{run.stderr}"
    return run.stderr


def parse_ptxas(report):
    """{mangled kernel name: (registers, spill store bytes, spill load bytes)}"""
    out, name = {}, None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            out[name] = [None, int(m.group(1)), int(m.group(2))]
        m = re.search(r"Used (\d+) registers", line)
        if m and name in out:
            out[name][0] = int(m.group(1))
    return {k: tuple(v) for k, v in out.items()}


def test_every_instantiation_compiles_for_sm90_without_spills(tmp_path):
    kernels = parse_ptxas(ptxas_report(tmp_path))
    codes = {"float": "f", "double": "d", "tgl::bf16": "N3tgl4bf16E"}
    for ctype, code in codes.items():
        for name in fa.kernel_names(ctype):
            base, D, BN = re.fullmatch(r"(\w+)<[\w:]+, (\d+)(?:, (\d+))?>", name).groups()
            prefix = f"_Z{len(base)}{base}I{code}Li{D}E" + (f"Li{BN}E" if BN else "") + "E"
            found = [k for k in kernels if k.startswith(prefix)]
            assert found, f"{name}: not instantiated in {fa.FILE}"
            regs, stores, loads = kernels[found[0]]
            assert stores == 0 and loads == 0, f"{name}: spills ({stores} B stored, {loads} B loaded)"
