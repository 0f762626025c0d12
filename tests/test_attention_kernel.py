"""The fused attention kernels (kernels/attention.cu) through their glue (cuda/attention.py).

Without a GPU they run in the host emulator (tests/kernel_emulator.cpp: one OS thread per CUDA
thread, barriers, shared memory, and a scalar model of the bf16 mma.sync fragments), against a
float64 NumPy reference written here from the definition, with segment ids. Every output and
gradient buffer is NaN before the launch, so an element a kernel forgets to write fails the test.
With a GPU the same tests run on the device as well.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tinygrad_llm import backend
from tinygrad_llm.cuda import attention as fa
from tinygrad_llm.cuda import runtime
from emulated_kernel import EmulatedKernel

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64), "bfloat16": BF16}


# --- the float64 reference ------------------------------------------------------------------------
def visible(B, Tq, Tk, causal, seg):
    """(B, 1, Tq, Tk) bool: query i sees key j (causal: j <= i + Tk - Tq; same document)."""
    i = np.arange(Tq)[:, None] + (Tk - Tq)
    j = np.arange(Tk)[None, :]
    mask = np.broadcast_to(j <= i if causal else np.ones((Tq, Tk), bool), (B, Tq, Tk))
    if seg is not None:
        mask = mask & (seg[:, Tk - Tq:, None] == seg[:, None, :])
    return mask[:, None]


def reference(q, k, v, do, causal, scale, seg):
    """(o, lse, dq, dk, dv) in float64, straight from the definition (T x T matrices)."""
    q, k, v, do = (a.astype(np.float64) for a in (q, k, v, do))
    B, H, Tq, D = q.shape
    G = H // k.shape[1]
    kk, vv = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)  # (B, H, Tk, D)
    mask = visible(B, Tq, k.shape[2], causal, seg)
    s = np.where(mask, scale * q @ kk.transpose(0, 1, 3, 2), -np.inf)  # (B, H, Tq, Tk)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m)
    total = e.sum(-1, keepdims=True)
    p = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    with np.errstate(divide="ignore"):
        lse = np.where(total[..., 0] > 0, m[..., 0] + np.log(total[..., 0]), -np.inf)
    o = p @ vv
    dp = do @ vv.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = scale * ds @ kk
    dk = scale * ds.transpose(0, 1, 3, 2) @ q
    dv = p.transpose(0, 1, 3, 2) @ do

    def group_sum(a):  # (B, H, Tk, D) -> (B, Hkv, Tk, D): the heads sharing a kv head add up
        return a.reshape(B, -1, G, *a.shape[2:]).sum(2)
    return o, lse, dq, group_sum(dk), group_sum(dv)


# --- running the kernels: emulated, or on the GPU -------------------------------------------------
def _emulated(lib, stage, dtype, D):
    """The emulator's build of attention_<stage><E, D>, standing in for the compiled kernel."""
    tname = {"float": "float", "double": "double", "tgl::bf16": "bf16"}[fa.element_type(dtype)]
    return EmulatedKernel(getattr(lib, f"emu_attention_{stage}_{tname}_{D}"),
                          f"attention_{stage}<{tname}, {D}>")


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
        monkeypatch.setattr(fa, "_kernel", lambda stage, dtype, D: _emulated(lib, stage, dtype, D))
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


def run_and_check(dev, B, H, Hkv, Tq, Tk, D, dtype, causal, with_seg, seed=0):
    q, k, v, do, seg = _inputs(B, H, Hkv, Tq, Tk, D, dtype, seed, with_seg)
    scale = 1.0 / np.sqrt(D)
    want = reference(q, k, v, do, causal, scale, seg)
    args = [dev.put(a) for a in (q, k, v)]
    seg_d = None if seg is None else dev.put(seg)
    o, lse = fa.flash_attention_forward(*args, causal, scale, segment_ids=seg_d)
    assert o.dtype == dtype and lse.dtype == fa.accumulator_dtype(dtype)
    _compare(o, want[0], dtype, "o")
    lse_tol = dict(rtol=1e-10) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Device.host(lse), want[1], err_msg="lse", **lse_tol)
    grads = fa.flash_attention_backward(dev.put(do), *args, o, lse, causal, scale,
                                        segment_ids=seg_d)
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
    monkeypatch.setattr(fa, "_kernel", lambda stage, dt, D: launched.append(stage) or kernel(stage, dt, D))
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
            base, D = re.fullmatch(r"(\w+)<[\w:]+, (\d+)>", name).groups()
            prefix = f"_Z{len(base)}{base}I{code}Li{D}EE"
            found = [k for k in kernels if k.startswith(prefix)]
            assert found, f"{name}: not instantiated in {fa.FILE}"
            regs, stores, loads = kernels[found[0]]
            assert stores == 0 and loads == 0, f"{name}: spills ({stores} B stored, {loads} B loaded)"
