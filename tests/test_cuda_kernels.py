"""The hand-written CUDA kernels: compile check (CI, no GPU needed) and, on a GPU, each kernel
against the NumPy reference function of its op.

GPU tests draw fresh random inputs (never zeros), use sizes that are not multiples of the block
or pack size (1 row, 1 column, V = 50,304, odd widths, buffers misaligned by one element), and
poison every kernel output with NaN before the launch so an element the kernel forgot to write
cannot pass. They also gradient-check the ops in float64 on device="cuda" with the kernels on.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor, backend, cuda
from tinygrad_llm.cuda import runtime
from emulated_kernel import EmulatedKernel

gpu = pytest.mark.gpu
DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-12)}
# (rows, C): one row, one column, odd widths, pack-aligned widths, GPT-2's padded vocabulary
ROW_SHAPES = [(1, 1), (1, 7), (3, 1), (5, 33), (37, 1000), (2, 768), (3, 1024), (2, 1025),
              (1, 50304), (3, 50304), (4, 3, 129)]


# --- runs everywhere (CI): the sources compile and define what the glue launches ---------------
def test_every_kernel_compiles_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the kernel compile check needs the CUDA toolkit")
    files = [str(cuda.KERNEL_DIR / f) for f in cuda.KERNEL_FILES]
    # one nvcc call for every file: PTX only (no device link), which is what catches syntax,
    # template and type errors in a few seconds
    run = subprocess.run([nvcc, "-arch=sm_90", "-std=c++17", "--ptx", "-odir", str(tmp_path), *files],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"nvcc failed:\n{run.stderr}"
    for f in cuda.KERNEL_FILES:
        ptx = (tmp_path / (Path(f).stem + ".ptx")).read_text()
        wanted = [(n, "fd") for n in cuda.KERNELS[f]] + [(n, "f") for n in cuda.FLOAT_ONLY.get(f, ())]
        for name, codes in wanted:
            base, ints = re.fullmatch(r"(\w+)(?:<\{T\}((?:, \d+)+)>)?", name).groups()
            for code in codes:  # the float and double instantiations name_expressions asks for
                mangled = rf"_Z{len(base)}{base}I{code}" + "".join(
                    rf"Li{j}E" for j in re.findall(r"\d+", ints or "")) + "E"
                assert re.search(rf"\.entry {mangled}", ptx), (
                    f"{f} defines no {runtime.expr(name, 'float' if code == 'f' else 'double')}")


def test_kernel_files_are_listed_and_documented():
    on_disk = sorted(p.name for p in cuda.KERNEL_DIR.glob("*.cu"))
    assert on_disk == sorted(cuda.KERNEL_FILES)
    for f in cuda.KERNEL_FILES:
        head = cuda.kernel_source(f).split("#include")[0]
        assert "Work split" in head and "Must match" in head, f"{f}: header comment incomplete"


def test_every_collected_test_asks_only_for_fixtures_that_exist(request):
    """A GPU test skipped on the CPU never sets up its fixtures, so a missing one (the tf32 test
    once asked for a `cp` nobody defined) would only show on a GPU: check every test's names here."""
    missing = {item.nodeid: [n for n in item.fixturenames if n != "request"
                             and n not in item._fixtureinfo.name2fixturedefs]
               for item in request.session.items}
    assert not {k: v for k, v in missing.items() if v}


def test_serves_only_gpu_arrays_and_obeys_the_switch():
    x = np.ones((2, 3), np.float32)
    assert not cuda.serves(x)
    assert not cuda.serves(None)
    cuda.set_enabled(False)
    try:
        assert not cuda.enabled() and not cuda.serves(x)
    finally:
        cuda.set_enabled(True)


# --- the kernel runner: the host emulator everywhere, the GPU when there is one ----------------
def _emulated(lib, name, dtype):
    """The emulator's build of kernel `name` (as the glue names it, "{T}" for the element type)."""
    ctype = {"float32": "float", "float64": "double", "bfloat16": "bf16"}[np.dtype(dtype).name]
    base, j = re.fullmatch(r"(\w+)(?:<\{T\}, (\d+)>)?", name).groups()
    return EmulatedKernel(getattr(lib, f"emu_{base}_{ctype}" + (f"_{j}" if j else "")), name)


class Runner:
    """What a kernel test needs: the array module the glue sees, and a way back to NumPy."""

    def __init__(self, xp, emulated):
        self.xp, self.emulated = xp, emulated
        self.launched = []  # kernel names, in launch order

    def asarray(self, a):
        return self.xp.asarray(a)

    @staticmethod
    def host(a):
        return None if a is None else (a.get() if hasattr(a, "get") else np.asarray(a))


@pytest.fixture(params=["emulated", pytest.param("gpu", marks=gpu)])
def kx(request, monkeypatch):
    """Run the glue + kernels on the GPU, or on the host emulator (CuPy swapped for NumPy)."""
    made = []

    def nan_empty(shape, dtype):  # poisoned outputs: an element never written stays NaN
        a = kx_xp.full(shape, np.nan, dtype=dtype)
        made.append(a)
        return a
    if request.param == "gpu":
        kx_xp = backend.cupy()
        make = runtime.kernel
    else:
        lib = request.getfixturevalue("emulator_lib")
        kx_xp = np
        # every NumPy array now counts as a "cuda" array: Tensors, ops and the glue all take
        # their GPU branches, and the kernels run in the emulator
        monkeypatch.setattr(backend, "_cupy", np)
        monkeypatch.setattr(backend, "cupy", lambda: np)
        original = backend.to_numpy
        for mod in [m for name, m in sys.modules.items() if name.startswith("tinygrad_llm")]:
            if getattr(mod, "to_numpy", None) is original:  # also `from .backend import`
                monkeypatch.setattr(mod, "to_numpy", np.asarray)
        monkeypatch.setattr(runtime, "sm_count", lambda: 2)
        monkeypatch.setattr(cuda.adamw, "_ptr", lambda a: a.ctypes.data)
        monkeypatch.setattr(cuda.adamw, "_chunk_tables", {})

        def make(f, name, dtype):
            return _emulated(lib, name, dtype)
    runner = Runner(kx_xp, request.param == "emulated")

    def recording_kernel(f, name, dtype):
        runner.launched.append(name.split("<")[0])
        return make(f, name, dtype)
    monkeypatch.setattr(runtime, "kernel", recording_kernel)
    monkeypatch.setattr(runtime, "empty", nan_empty)
    return runner


def _rand(kx, shape, dtype, seed, misalign=False, scale=1.0):
    """Fresh normal values on the device; misalign=True starts the buffer one element past a
    16-byte boundary (still C-contiguous), which sends the kernels down their scalar loops."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    host = (rng.standard_normal(n + 1) * scale).astype(dtype)
    dev = kx.asarray(host)
    if misalign:
        dev = dev[1:]
        if kx.emulated:  # NumPy's own buffer may start anywhere: force the odd offset
            buf = np.empty(n + 4, dtype)
            off = next(i for i in range(4) if (buf[i:].ctypes.data % 16) == np.dtype(dtype).itemsize)
            buf[off:off + n] = dev
            dev = buf[off:off + n]
    else:
        dev = dev[:n].copy()
    return dev.reshape(shape)


def _close(got, want, dtype, what):
    got = Runner.host(got)
    assert not np.isnan(got).any(), f"{what}: NaN in the output (an element was not written)"
    np.testing.assert_allclose(got, want, err_msg=what, **TOL[dtype])


def _too_big_to_emulate(kx, n, blocks=1):
    """Skip under the emulator past 60k elements or 12 row-blocks (cost: threads x barriers)."""
    if kx.emulated and (n > 60_000 or blocks > 12):
        pytest.skip("large case: checked on the GPU (the host emulator runs one OS thread per "
                    "CUDA thread)")


# --- kernel vs reference --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("misalign", [False, True])
def test_softmax_kernel(kx, dtype, shape, misalign):
    from tinygrad_llm.ops.softmax import softmax_backward_cpu, softmax_forward_cpu
    _too_big_to_emulate(kx, int(np.prod(shape)), blocks=int(np.prod(shape[:-1])))
    x = _rand(kx, shape, dtype, 1, misalign, scale=3.0)
    dy = _rand(kx, shape, dtype, 2, misalign)
    y = cuda.softmax_forward(x)
    want = softmax_forward_cpu(kx.host(x))
    _close(y, want, dtype, "softmax forward")
    dx = cuda.softmax_backward(y, dy)
    _close(dx, softmax_backward_cpu(want, kx.host(dy)), dtype, "softmax backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_kernel_extreme_rows(kx, dtype):
    """Rows with -inf (masked attention) and huge values: the online max must not overflow."""
    from tinygrad_llm.ops.softmax import softmax_forward_cpu
    x = np.random.default_rng(3).standard_normal((4, 300)).astype(dtype) * 50
    x[0, 5:] = -np.inf  # a causal-mask row
    x[1, 0] = 1e4 if dtype == np.float32 else 1e300
    y = cuda.softmax_forward(kx.asarray(x))
    _close(y, softmax_forward_cpu(x), dtype, "softmax forward, extreme rows")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [300, 1100, 1101])  # the warp kernel; the block kernel, packed and scalar
def test_softmax_kernel_nan_in_nan_out(kx, dtype, C):
    """A NaN anywhere in a row makes the whole row NaN, as in NumPy, on every kernel path."""
    from tinygrad_llm.ops.softmax import softmax_forward_cpu
    x = np.random.default_rng(31).standard_normal((3, C)).astype(dtype)
    x[1, C // 2] = np.nan
    y = kx.host(cuda.softmax_forward(kx.asarray(x)))
    want = softmax_forward_cpu(x)
    assert np.isnan(want[1]).all() and np.isnan(y[1]).all()
    np.testing.assert_allclose(y[[0, 2]], want[[0, 2]], **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1100, 1101])  # packed and scalar loads
def test_cross_entropy_kernel_nan_in_nan_out(kx, dtype, V):
    """A NaN logit gives a NaN loss and NaN gradients for its row (not a finite loss that skips
    it); the other rows are untouched."""
    from tinygrad_llm.ops.cross_entropy import cross_entropy_forward_cpu
    x = np.random.default_rng(32).standard_normal((3, V)).astype(dtype)
    x[1, 5] = np.nan
    t = np.array([0, 3, 7])
    loss, lse = cuda.cross_entropy_forward(kx.asarray(x), kx.asarray(t))
    loss_r = cross_entropy_forward_cpu(x, t, t != -100)[0]
    loss, lse = kx.host(loss), kx.host(lse)
    assert np.isnan(loss_r[1]) and np.isnan(loss[1]) and np.isnan(lse[1])
    np.testing.assert_allclose(loss[[0, 2]], loss_r[[0, 2]], **TOL[dtype])
    dx = kx.host(cuda.cross_entropy_backward(kx.asarray(x), kx.asarray(t), kx.asarray(lse),
                                             kx.asarray(np.ones(3, dtype))))
    assert np.isnan(dx[1]).all() and np.isfinite(dx[[0, 2]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("affine", ["wb", "w", "b", ""])
def test_layer_norm_kernel(kx, dtype, shape, affine):
    from tinygrad_llm.ops.norm import _param_grads, layer_norm_backward_cpu, layer_norm_forward_cpu
    _too_big_to_emulate(kx, int(np.prod(shape)))
    if kx.emulated and affine in ("w", "b") and shape[-1] > 64:
        pytest.skip("one-sided affine: emulated on the narrow shapes only (time)")
    C = shape[-1]
    x = _rand(kx, shape, dtype, 4, scale=2.0).reshape(-1, C) + 0.5
    w = _rand(kx, (C,), dtype, 5) if "w" in affine else None
    b = _rand(kx, (C,), dtype, 6) if "b" in affine else None
    dy = _rand(kx, x.shape, dtype, 7)
    host = kx.host
    y, xhat, rstd = cuda.layer_norm_forward(x, w, b, eps=1e-5)
    y_r, xhat_r, rstd_r = layer_norm_forward_cpu(host(x), host(w), host(b), 1e-5)
    for got, want, what in ((y, y_r, "y"), (xhat, xhat_r, "xhat"), (rstd, rstd_r, "rstd")):
        _close(got, want, dtype, f"layer norm forward {what}")
    dx, dw, db = cuda.layer_norm_backward(dy, xhat, rstd, w, need_db=b is not None)
    _close(dx, layer_norm_backward_cpu(host(dy), xhat_r, rstd_r, host(w)), dtype, "layer norm dx")
    dw_r, db_r = _param_grads(host(dy), xhat_r, w is not None, b is not None)
    # dw/db sum over the rows: the kernel adds in another order than NumPy's pairwise sum
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else TOL[dtype]
    for got, want, what in ((dw, dw_r, "dw"), (db, db_r, "db")):
        assert (got is None) == (want is None), what
        if got is not None:
            assert not np.isnan(host(got)).any(), what
            np.testing.assert_allclose(host(got), want, err_msg=f"layer norm {what}", **tol)


@pytest.mark.parametrize("C", [48, 768, 1500])  # fused one-pass kernel, and the two-kernel path
def test_layer_norm_kernel_param_grads_only(kx, C):
    from tinygrad_llm.ops.norm import _param_grads
    dy = _rand(kx, (6, C), np.float64, 14)
    xhat = _rand(kx, (6, C), np.float64, 15)
    rstd = kx.xp.abs(_rand(kx, (6,), np.float64, 16)) + 0.5
    w = _rand(kx, (C,), np.float64, 17)
    dx, dw, db = cuda.layer_norm_backward(dy, xhat, rstd, w, need_dx=False)
    dw_r, db_r = _param_grads(kx.host(dy), kx.host(xhat), True, True)
    assert dx is None
    _close(dw, dw_r, np.float64, "dw")
    _close(db, db_r, np.float64, "db")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, V", [(1, 1), (1, 5), (1, 50304), (7, 50304), (33, 1000), (5, 50257),
                                  (64, 129)])
@pytest.mark.parametrize("misalign", [False, True])
def test_cross_entropy_kernel(kx, dtype, N, V, misalign):
    from tinygrad_llm.ops.cross_entropy import cross_entropy_backward_cpu, cross_entropy_forward_cpu
    _too_big_to_emulate(kx, N * V, blocks=N)
    rng = np.random.default_rng(8)
    x = _rand(kx, (N, V), dtype, 9, misalign, scale=4.0)
    t = rng.integers(0, V, N)
    if N > 2:
        t[::3] = -100  # ignored rows
    valid = t != -100
    loss, lse = cuda.cross_entropy_forward(x, kx.asarray(t), ignore_index=-100)
    loss_r, e, r = cross_entropy_forward_cpu(kx.host(x), t, valid)
    _close(loss, loss_r, dtype, "cross-entropy loss")
    _close(lse, -np.log(r), dtype, "cross-entropy lse")
    g = rng.standard_normal(N).astype(dtype)
    for dloss, g_rows in ((kx.asarray(g), g), (kx.asarray(g[0]), np.full(N, g[0], dtype))):
        dx = cuda.cross_entropy_backward(x, kx.asarray(t), lse, dloss, ignore_index=-100)
        _close(dx, cross_entropy_backward_cpu(e, r, t, valid, g_rows), dtype, "dlogits")


def test_cross_entropy_kernel_bad_target_poisons_the_loss(kx):
    x = _rand(kx, (2, 10), np.float32, 10)
    loss, _ = cuda.cross_entropy_forward(x, kx.asarray([3, 10]), ignore_index=-100)
    loss = kx.host(loss)
    assert np.isfinite(loss[0]) and np.isnan(loss[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, V, C", [(1, 1, 1), (12, 5, 33), (9, 1000, 300)])
def test_embedding_backward_kernel_is_the_cpu_sum_bit_for_bit(kx, dtype, N, V, C):
    """No float atomics: every run adds each id's rows in position order, as the CPU does, so the
    result is the CPU's to the last bit and the same every time."""
    from tinygrad_llm.ops.embedding import embedding_backward_cpu
    rng = np.random.default_rng(33)
    ids = rng.integers(0, V, N)
    ids[: N // 2] = ids[0]  # one long run of a single id
    dy = _rand(kx, (N, C), dtype, 34, scale=3.0)
    want = embedding_backward_cpu(ids, kx.host(dy), V)
    first = kx.host(cuda.embedding_backward(kx.asarray(ids), dy, V))
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(kx.host(cuda.embedding_backward(kx.asarray(ids), dy, V)), first)
    assert "embedding_backward" in kx.launched


def test_gradcheck_embedding_through_the_kernel(kx):
    ids = Tensor(kx.asarray(np.array([[3, 0, 3], [1, 3, 4]])))
    w = _dev64(kx, (5, 6), 35)
    assert tl.gradcheck(lambda ww: F.embedding(ids, ww), [w], **_gc(kx))
    assert "embedding_backward" in kx.launched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 4, 1001, 3 * 768 * 4 + 1, 1 << 20])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("misalign", [False, True])
def test_gelu_kernel(kx, dtype, n, approximate, misalign):
    from tinygrad_llm.ops import activation as A
    _too_big_to_emulate(kx, n)
    fwd, bwd = ((A.gelu_tanh_forward_cpu, A.gelu_tanh_backward_cpu) if approximate == "tanh" else
                (A.gelu_exact_forward_cpu, A.gelu_exact_backward_cpu))
    x = _rand(kx, (n,), dtype, 11, misalign, scale=3.0)
    dy = _rand(kx, (n,), dtype, 12, misalign)
    # the reference evaluated in float64: in float32 its 1 + tanh(u) cancels for x < -4, where
    # the kernel's 1 / (1 + exp(-2u)) stays accurate, so the float32 reference is the less exact
    x64, dy64 = kx.host(x).astype(np.float64), kx.host(dy).astype(np.float64)
    y_r, h = fwd(x64)
    _close(cuda.gelu_forward(x, approximate), y_r, dtype, "gelu forward")
    _close(cuda.gelu_backward(x, dy, approximate), bwd(dy64, x64, h), dtype, "gelu backward")


@pytest.mark.parametrize("n", [1, 7, 8, 1001, 3 * 768 * 4 + 1])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("misalign", [False, True])
def test_gelu_kernel_bf16(kx, n, approximate, misalign):
    """bfloat16 in and out (autocast's MLP activations), float math inside: within one bf16
    rounding (2^-8 relative) of the float64 reference on the same bf16 inputs; 8-element packs,
    tails and the misaligned scalar loop."""
    bf16 = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    from tinygrad_llm.ops import activation as A
    fwd, bwd = ((A.gelu_tanh_forward_cpu, A.gelu_tanh_backward_cpu) if approximate == "tanh" else
                (A.gelu_exact_forward_cpu, A.gelu_exact_backward_cpu))
    x = _rand(kx, (n,), bf16, 11, misalign, scale=3.0)
    dy = _rand(kx, (n,), bf16, 12, misalign)
    assert cuda.serves(x, bf16=True) and not cuda.serves(x)  # only files built for bf16 take it
    x64, dy64 = kx.host(x).astype(np.float64), kx.host(dy).astype(np.float64)
    y_r, h = fwd(x64)
    for got, want, what in ((cuda.gelu_forward(x, approximate), y_r, "gelu forward"),
                            (cuda.gelu_backward(x, dy, approximate), bwd(dy64, x64, h), "gelu backward")):
        got = kx.host(got)
        assert got.dtype == bf16 and not np.isnan(got.astype(np.float32)).any(), what
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=2 ** -8, atol=1e-6, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled", [True, False])
def test_adamw_kernel_matches_the_optimizer(kx, dtype, decoupled):
    """Several tensors of odd sizes (one crosses chunk boundaries) in one launch, three steps,
    against tl.optim.AdamW / Adam on the CPU."""
    from tinygrad_llm import nn, optim
    rng = np.random.default_rng(13)
    sizes = [(1,), (7,), (3, 5), (65537,), (300, 701)]
    hp = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    with pytest.MonkeyPatch.context() as mp:  # the CPU optimizer must see the real NumPy world
        mp.setattr(backend, "_cupy", None)
        params = [nn.Parameter(Tensor(rng.standard_normal(s).astype(dtype))) for s in sizes]
        opt = (optim.AdamW if decoupled else optim.Adam)(params, **hp)
    p_dev = [kx.asarray(p.data).copy() for p in params]
    m_dev = [kx.xp.zeros_like(p) for p in p_dev]
    v_dev = [kx.xp.zeros_like(p) for p in p_dev]
    for step in (1, 2, 3):
        grads = [rng.standard_normal(s).astype(dtype) for s in sizes]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(backend, "_cupy", None)
            for p, g in zip(params, grads):
                p.grad = Tensor(g.copy())
            opt.step()
        cuda.adamw_step(p_dev, [kx.asarray(g).copy() for g in grads], m_dev, v_dev, hp["lr"],
                        hp["betas"][0], hp["betas"][1], hp["eps"], hp["weight_decay"], step,
                        decoupled=decoupled)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else TOL[dtype]
    for p, d in zip(params, p_dev):
        np.testing.assert_allclose(kx.host(d), p.data, **tol)


# --- the ops on the GPU path, kernels on (emulated everywhere, real on a GPU) ---------------------
def _gc(kx):
    """gradcheck tolerances; under the emulator (a few ms per launch) inputs past 8 elements are
    checked along 8 random directions instead of element by element."""
    return dict(atol=1e-6, rtol=1e-4, **({"max_full": 8} if kx.emulated else {}))


def _dev64(kx, shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    return Tensor(kx.asarray(x), requires_grad=True)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 33)])
def test_gradcheck_softmax_through_the_kernel(kx, shape):
    x = _dev64(kx, shape, 20)
    assert tl.gradcheck(lambda a: F.softmax(a, axis=-1), [x], **_gc(kx))
    assert {"softmax_forward_warp", "softmax_backward_warp"} <= set(kx.launched)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 33)])
def test_gradcheck_layer_norm_through_the_kernel(kx, shape):
    C = shape[-1]
    x, w, b = _dev64(kx, shape, 21), _dev64(kx, (C,), 22), _dev64(kx, (C,), 23)
    assert tl.gradcheck(lambda a, ww, bb: F.layer_norm(a, ww, bb, eps=1e-5), [x, w, b], **_gc(kx))
    assert {"layernorm_forward", "layernorm_backward_warp", "column_sum"} <= set(kx.launched)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_cross_entropy_through_the_kernel(kx, reduction):
    logits = _dev64(kx, (6, 11), 24)
    t = Tensor(kx.asarray(np.array([0, 10, -100, 3, 3, 7])))
    assert tl.gradcheck(lambda a: F.cross_entropy(a, t, ignore_index=-100, reduction=reduction),
                        [logits], **_gc(kx))
    assert {"cross_entropy_forward", "cross_entropy_backward"} <= set(kx.launched)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gradcheck_gelu_through_the_kernel(kx, approximate):
    x = _dev64(kx, (3, 17), 25)
    assert tl.gradcheck(lambda a: F.gelu(a, approximate=approximate), [x], **_gc(kx))
    assert {"gelu_forward", "gelu_backward"} <= set(kx.launched)


def test_adamw_optimizer_step_through_the_kernel(kx):
    """optim.AdamW on GPU parameters takes the fused kernel and matches the CPU optimizer."""
    from tinygrad_llm import nn, optim
    rng = np.random.default_rng(29)
    shapes = [(5, 3), (7,)]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(3)]
    dev = [nn.Parameter(Tensor(kx.asarray(a.copy()))) for a in init]
    opt_dev = optim.AdamW(dev, lr=1e-2, weight_decay=0.1)
    for g in grads:
        for p, gi in zip(dev, g):
            p.grad = Tensor(kx.asarray(gi.copy()))
        opt_dev.step()
    assert "adamw_step" in kx.launched
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "_cupy", None)
        cpu = [nn.Parameter(Tensor(a.copy())) for a in init]
        opt_cpu = optim.AdamW(cpu, lr=1e-2, weight_decay=0.1)
        for g in grads:
            for p, gi in zip(cpu, g):
                p.grad = Tensor(gi.copy())
            opt_cpu.step()
    for p, q in zip(dev, cpu):
        np.testing.assert_allclose(kx.host(p.data), q.data, rtol=1e-12, atol=1e-14)


def test_gpt_training_steps_with_kernels_match_the_plain_path(kx):
    """A small GPT in float64, two AdamW steps on the GPU path with the kernels on and off:
    losses and parameters agree (layer norm, GELU, cross-entropy and AdamW all run as kernels)."""
    from tinygrad_llm import optim
    from tinygrad_llm.models import GPT, GPTConfig
    rng = np.random.default_rng(30)
    cfg = GPTConfig(vocab_size=37, block_size=8, n_layer=1, n_head=2, n_embd=16)
    batches = [(kx.asarray(rng.integers(0, 37, (2, 8))), kx.asarray(rng.integers(0, 37, (2, 8))))
               for _ in range(2)]
    runs = {}
    for on in (True, False):
        tl.manual_seed(0)
        model = GPT(cfg, dtype=np.float64).to("cuda")
        opt = optim.AdamW(model.parameters(), lr=1e-2)
        cuda.set_enabled(on)
        try:
            losses = []
            for x, y in batches:
                _, loss = model(Tensor(x), Tensor(y))
                loss.backward()
                opt.step()
                opt.zero_grad()
                losses.append(loss.item())
        finally:
            cuda.set_enabled(True)
        runs[on] = losses, [kx.host(p.data).copy() for p in model.parameters()]
    assert {"layernorm_forward", "layernorm_backward_warp", "gelu_forward", "gelu_backward",
            "cross_entropy_forward", "cross_entropy_backward", "adamw_step"} <= set(kx.launched)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-10)
    # Adam divides by sqrt(v): summation-order differences in a near-zero gradient move a
    # parameter by up to lr times a relative error, hence the looser bound than the losses
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


@gpu
def test_kernels_switch_off_gives_the_same_answer():
    x = Tensor(np.random.default_rng(26).standard_normal((5, 300)).astype(np.float32), device="cuda")
    on = F.softmax(x, axis=-1).numpy()
    cuda.set_enabled(False)
    try:
        off = F.softmax(x, axis=-1).numpy()
    finally:
        cuda.set_enabled(True)
    np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-7)


# --- GPU: devices ---------------------------------------------------------------------------------
@gpu
def test_mixing_devices_names_both():
    a = Tensor(np.ones((2, 3), np.float32))
    b = Tensor(np.ones((2, 3), np.float32), device="cuda")
    with pytest.raises(backend.DeviceError, match=r"cpu \(2, 3\).*cuda \(2, 3\)"):
        a + b


@gpu
def test_to_cuda_and_back_carries_values_and_gradients():
    x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    y = x.to("cuda")
    assert y.device == "cuda" and isinstance(y.numpy(), np.ndarray)
    (y * y).sum().backward()
    assert x.grad.device == "cpu"
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())


@gpu
def test_module_and_optimizer_state_live_on_the_gpu():
    from tinygrad_llm import nn, optim
    model = nn.Linear(4, 3).to("cuda")
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    x = Tensor(np.random.default_rng(27).standard_normal((5, 4)).astype(np.float32), device="cuda")
    model(x).sum().backward()
    opt.step()
    assert all(p.device == "cuda" for p in model.parameters())
    buckets = [b for group in opt._buckets for b in group]
    assert buckets and all(b.device == "cuda" for b in buckets)
    assert all(backend.device_of(s) == "cuda" for b in buckets for s in b.state.values())


@gpu
def test_tf32_switch(cp):
    a = cp.asarray(np.random.default_rng(28).standard_normal((256, 256)).astype(np.float32))
    exact = (a.astype(cp.float64) @ a.astype(cp.float64)).get()
    before = backend.tf32_enabled()
    try:
        backend.set_tf32(False)
        err_fp32 = np.abs((a @ a).get() - exact).max()
        backend.set_tf32(True)
        err_tf32 = np.abs((a @ a).get() - exact).max()
    finally:
        backend.set_tf32(before)
    assert err_fp32 < 1e-3  # float32 products: ~1e-5 relative on values of size ~16
    if int(cp.cuda.Device().compute_capability) >= 80:
        assert err_tf32 > 10 * err_fp32  # 10-bit mantissa products are visibly coarser


# --- random numbers (kernels/random.cu) -----------------------------------------------------------
def test_philox_reference_matches_the_published_answer():
    """Random123's known-answer vector for Philox4x32-10: key 0, counter 0."""
    from tinygrad_llm.cuda.random import philox_ref
    words = philox_ref(np, np.array([0], np.uint64), 0, 0)
    assert [int(w[0]) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_philox_kernels_match_the_reference(kx, dtype, n):
    from tinygrad_llm.cuda.random import DeviceGenerator, normal_ref, uniform_ref
    gen = DeviceGenerator(seed=(5 << 32) + 123)
    gen.counter = (1 << 32) - 3  # the 64-bit counter carries into its high word mid-draw
    k0, k1, c = *gen.keys, gen.counter
    u = kx.host(gen.random((n,), dtype))
    np.testing.assert_array_equal(u, uniform_ref(np, n, dtype, k0, k1, c))
    z = kx.host(gen.standard_normal((n,), dtype))
    np.testing.assert_allclose(z, normal_ref(np, n, dtype, k0, k1, c + n), **TOL[dtype])
    assert gen.counter == c + 2 * n
    assert {"philox_uniform", "philox_normal"} <= set(kx.launched)
    assert 0 <= u.min() and u.max() < 1 and np.isfinite(z).all()


def test_device_generator_state_restores_the_stream_exactly():
    from tinygrad_llm.cuda.random import DeviceGenerator
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "cupy", lambda: np)
        cuda.set_enabled(False)  # the array-operation path: the kernels' reference
        try:
            gen = DeviceGenerator(seed=7)
            gen.random((3, 4), np.float32)
            state = gen.get_state()
            want = gen.random((5,), np.float32), gen.standard_normal((2, 2), np.float64)
            other = DeviceGenerator(seed=99)
            other.set_state(state)
            got = other.random((5,), np.float32), other.standard_normal((2, 2), np.float64)
            sample = DeviceGenerator(seed=1).random((200_000,), np.float64)
        finally:
            cuda.set_enabled(True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert abs(sample.mean() - 0.5) < 0.005 and abs(sample.var() - 1 / 12) < 0.002


def test_the_emulated_launch_refuses_arguments_the_kernel_would_misread(emulator_lib):
    """softmax_forward(const T* x, T* y, int n_rows, int C): what a RawKernel launch would
    corrupt on a GPU fails here, with the argument at fault named."""
    kernel = _emulated(emulator_lib, "softmax_forward", np.float32)
    x, y = np.ones((2, 3), np.float32), np.empty((2, 3), np.float32)
    kernel((2,), (32,), (x, y, np.int32(2), np.int32(3)))
    np.testing.assert_allclose(y, 1 / 3, rtol=1e-6)
    with pytest.raises(AssertionError, match="of type int"):  # CuPy packs a bare int as 8 bytes
        kernel((2,), (32,), (x, y, 2, np.int32(3)))
    with pytest.raises(AssertionError, match="argument 2's size"):
        kernel((2,), (32,), (x, y, np.int64(2), np.int32(3)))
    with pytest.raises(AssertionError, match="parameter count"):
        kernel((2,), (32,), (x, y, np.int32(2)))
