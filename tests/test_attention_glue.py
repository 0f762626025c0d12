"""The fused attention glue (cuda/attention.py) on a stand-in CuPy with fake GPUs (tests/fake_cupy.py)
whose compiled functions run the host emulator: what each first call compiles, the tile size each
device's shared memory allows, two GPUs in one process, the unfused fallback on a 64 KB GPU, and
the note about CuPy releases whose disk cache skips these modules."""
import warnings

import numpy as np
import pytest

from tinygrad_llm import backend
from tinygrad_llm.cuda import attention as fa
from tinygrad_llm.cuda import runtime
from attention_reference import alibi_slopes, reference
from emulated_kernel import emulated_attention
from fake_cupy import H100, FakeCupy

L4 = dict(name=b"NVIDIA L4", major=8, minor=9, sharedMemPerBlockOptin=101376)  # 99 KB, like L40S, RTX
T4 = dict(name=b"Tesla T4", major=7, minor=5, sharedMemPerBlockOptin=65536)


@pytest.fixture
def gpus(monkeypatch, emulator_lib):
    """make(devices, version) -> a FakeCupy in use by the package, its kernels the emulator's."""
    def make(devices=(H100,), version="14.2.0"):
        fake = FakeCupy(devices=list(devices), kernels=lambda name: emulated_attention(emulator_lib, name),
                        version=version)
        monkeypatch.setattr(backend, "_cupy", fake)
        monkeypatch.setattr(backend, "cupy", lambda: fake)
        monkeypatch.setattr(runtime, "empty", lambda shape, dtype: fake.full(shape, np.nan, dtype=dtype))
        for cache in ("_modules", "_functions", "_devices"):
            monkeypatch.setattr(fa, cache, {})
        monkeypatch.setattr(fa, "_noted", set())
        monkeypatch.setattr(runtime, "_cache_noted", False)
        return fake
    return make


def _inputs(B, H, Hkv, Tq, Tk, D, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    q, do = (rng.standard_normal((B, H, Tq, D)).astype(dtype) for _ in range(2))
    k, v = (rng.standard_normal((B, Hkv, Tk, D)).astype(dtype) for _ in range(2))
    seg = np.cumsum(rng.random((B, Tk)) < 0.15, axis=1).astype(np.int32)
    return q, k, v, do, seg


def run(fake, q, k, v, do, seg, window=None, slopes=None, scale=0.2):
    """Forward and backward through the glue on fake's current device, checked against float64."""
    put = fake.asarray
    args = [put(a) for a in (q, k, v)]
    masks = dict(segment_ids=put(seg), window=window, alibi_slopes=None if slopes is None else put(slopes))
    o, lse = fa.flash_attention_forward(*args, True, scale, **masks)
    grads = fa.flash_attention_backward(put(do), *args, o, lse, True, scale, **masks)
    want = reference(q, k, v, do, True, scale, seg, window, slopes)
    for got, w, what in zip((o, lse, *grads), want[:1] + want[1:], ("o", "lse", "dq", "dk", "dv")):
        np.testing.assert_allclose(np.asarray(got, np.float64), w, rtol=2e-4, atol=2e-5, err_msg=what)


def test_a_first_call_compiles_only_the_kernels_it_launches(gpus):
    fake = gpus()
    q, k, v, do, seg = _inputs(1, 2, 1, 9, 12, 64)
    run(fake, q, k, v, do, seg)
    assert fake.modules == [("attention_forward<float, 64, 32>",),
                            ("attention_backward_prep<float, 64>", "attention_backward_dq<float, 64, 32>",
                             "attention_backward_dkdv<float, 64, 32>")]
    run(fake, q, k, v, do, seg)  # served from the glue's caches
    assert len(fake.modules) == 2
    o, _ = fa.flash_attention_forward(*(fake.asarray(a.astype(np.float64)[..., :32]) for a in (q, k, v)),
                                      True, 0.2)
    assert fake.modules[-1] == ("attention_forward<double, 32, 32>",)


def test_the_tile_size_follows_the_devices_shared_memory():
    f32 = np.dtype(np.float32)
    assert fa.pass_smem_bytes("backward", f32, 128, 32) == 107904  # above 99 KB
    assert fa.pass_smem_bytes("forward", f32, 128, 32) == 75008  # above 64 KB
    limits = {"H100": 232448, "L4": 101376, "T4": 65536}
    assert {n: fa.tile_rows("forward", f32, 128, lim) for n, lim in limits.items()} == \
        {"H100": 32, "L4": 32, "T4": 16}
    assert {n: fa.tile_rows("backward", f32, 128, lim) for n, lim in limits.items()} == \
        {"H100": 32, "L4": 16, "T4": None}
    assert fa.tile_rows("backward", np.dtype(np.float64), 32, limits["T4"]) == 16
    import ml_dtypes
    bf16 = np.dtype(ml_dtypes.bfloat16)
    # every bf16 tile set fits the 99 KB of the smallest GPU with bf16 tensor cores (sm_86/89)
    assert all(fa.tile_rows(p, bf16, d, limits["L4"]) == 32 for p in fa.PASSES for d in fa.HEAD_DIMS)


def test_two_gpus_in_one_process(gpus):
    """An H100 and an L4 driven by one process: each gets its own tile size, and each function
    is opted in to its shared memory on the device it runs on (the stand-in driver refuses a launch
    past the current device's opt-in)."""
    fake = gpus([H100, L4])
    q, k, v, do, seg = _inputs(1, 2, 2, 20, 20, 128, seed=1)
    for device in (0, 1, 0):
        with fake.cuda.Device(device):
            run(fake, q, k, v, do, seg, window=6, slopes=alibi_slopes(2))
    backward = [m for m in fake.modules if "prep" in m[0]]
    assert {m[1] for m in backward} == {"attention_backward_dq<float, 128, 32>",
                                        "attention_backward_dq<float, 128, 16>"}


def test_a_64_kb_gpu_takes_the_unfused_backward_with_one_note(gpus):
    fake = gpus([T4])
    q, k, v, do, seg = _inputs(1, 4, 2, 10, 13, 128, seed=2)
    with pytest.warns(RuntimeWarning, match=r"backward: float32 at head dim 128 needs 87104 bytes .* "
                                            r"Tesla T4 allows 65536: the unfused path"):
        run(fake, q, k, v, do, seg, window=4, slopes=alibi_slopes(4))
    assert fake.modules == [("attention_forward<float, 128, 16>",)]  # the forward still fits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one note per device and shape of problem, not per call
        run(fake, q, k, v, do, seg)
    import ml_dtypes
    with pytest.raises(ValueError, match="bf16 tensor cores of sm_80.*Tesla T4 is sm_75"):
        fa.flash_attention_forward(*(fake.asarray(a.astype(ml_dtypes.bfloat16)) for a in (q, k, v)),
                                   True, 0.2)


def test_the_unfused_path_matches_the_definition(gpus, monkeypatch):
    """The fallback itself, in blocks of query rows (forced small), every mask at once."""
    fake = gpus([dict(T4, sharedMemPerBlockOptin=16384)])  # nothing fits: both passes unfused
    monkeypatch.setattr(fa, "_UNFUSED_BLOCK_BYTES", 8 * 2 * 4 * 17 * 3)  # 3 query rows per block
    q, k, v, do, seg = _inputs(2, 4, 2, 11, 17, 32, seed=3)
    with pytest.warns(RuntimeWarning):
        run(fake, q, k, v, do, seg, window=5, slopes=alibi_slopes(4))
    assert fake.modules == []


@pytest.mark.parametrize("version, noted", [("14.0.1", True), ("14.1.1", True), ("14.2.0", False),
                                            ("15.0.0", False)])
def test_a_cupy_without_the_name_expressions_cache_is_noted_once(gpus, version, noted):
    fake = gpus(version=version)
    q, k, v, do, seg = _inputs(1, 1, 1, 5, 5, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(fake, q, k, v, do, seg)
    notes = [w for w in caught if "disk cache" in str(w.message)]
    assert len(notes) == (1 if noted else 0)
    if noted:
        assert f"CuPy {version} does not serve kernels built with name_expressions" in str(notes[0].message)
