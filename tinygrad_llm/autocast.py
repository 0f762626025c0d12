"""Mixed precision: `with tl.autocast("bf16"):` runs the GPU's matmuls, attention and the
activations between them in bfloat16, and everything else in float32.

    model = GPT(config).to("cuda")              # float32 master weights
    with tl.autocast("bf16"):
        logits, loss = model(idx, targets)     # bf16 matmuls and attention, float32 loss
    loss.backward()                            # float32 gradients for the float32 weights

What runs in bfloat16 (float32 accumulation inside the GEMMs and kernels): linear layers (input,
weight and bias are cast on the way in, so the output is bfloat16), attention, and elementwise
activations between them (GELU, SwiGLU) which simply keep their input's dtype. What stays
float32: the weights themselves and the optimizer state (a cast is an op: its backward hands
the weight a float32 gradient), the residual stream (bfloat16 + float32 promotes to float32),
the norms and their statistics, softmax and log-sum-exp, the loss, and every gradient reduction
of the optimizer and clipping.

A region is the calling thread's own (as PyTorch's autocast state): other threads compute as
they would without it, except the sharded step's workers, which parallel.py hands the caller's
regions (`open_regions()` / `within(regions)`).

The CPU stays float32: NumPy has no bfloat16 GEMM worth the name, so autocast leaves NumPy arrays
alone. `autocast("bf16", cpu_emulation=True)` casts them anyway (ml_dtypes' bfloat16, slow, each
bf16 op computing in float32 and rounding its result): for tests of which op runs in which dtype
on a machine without a GPU.

bfloat16 arrays come from ml_dtypes (NumPy's dtype; CuPy carries the same one). It is an extra
(`pip install tinygrad-llm[gpu]`), imported only when bfloat16 is asked for.
"""
import contextlib
import threading

import numpy as np

from . import backend


class _Regions(threading.local):
    """The open autocast regions of the calling thread, innermost last (per thread, as PyTorch's
    autocast state is: one thread's region does not change what another computes in)."""

    def __init__(self):
        self.stack = []


_regions = _Regions()


def bfloat16():
    """NumPy's bfloat16 dtype (ml_dtypes), or an ImportError that says how to get it."""
    try:
        import ml_dtypes
    except ImportError as e:
        raise ImportError("bfloat16 needs the ml_dtypes package: pip install ml_dtypes "
                          "(it comes with the gpu extra, pip install tinygrad-llm[gpu])") from e
    return np.dtype(ml_dtypes.bfloat16)


def is_low_precision(dtype):
    """True for bfloat16 (a float of 2 bytes that NumPy's own kinds do not name)."""
    return np.dtype(dtype).name == "bfloat16"


DTYPES = {"bf16": bfloat16, "bfloat16": bfloat16}


class autocast:
    """Context manager: inside it, linear layers and attention on float32 GPU arrays compute in
    dtype ("bf16"). Nested regions stack; `autocast(None)` turns it off inside one."""

    def __init__(self, dtype="bf16", cpu_emulation=False):
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"autocast: dtype {dtype!r} is not one of {sorted(DTYPES)} (or None)")
        self.dtype = None if dtype is None else DTYPES[dtype]()
        self.cpu_emulation = bool(cpu_emulation)

    def __enter__(self):
        _regions.stack.append(self)
        return self

    def __exit__(self, *exc):
        _regions.stack.remove(self)

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self:
                return fn(*args, **kwargs)
        return wrapper


def active_dtype():
    """The dtype of the calling thread's innermost open autocast region, or None."""
    stack = _regions.stack
    return stack[-1].dtype if stack else None


def open_regions():
    """The calling thread's open regions (outermost first), to hand to a worker thread that runs
    part of its work (parallel.py) with `within(regions)`."""
    return tuple(_regions.stack)


@contextlib.contextmanager
def within(regions):
    """Inside, the calling thread computes as if the regions (from open_regions()) were open."""
    before, _regions.stack = _regions.stack, list(regions)
    try:
        yield
    finally:
        _regions.stack = before


def compute_dtype(array):
    """The dtype a matmul or attention on `array` should run in: the autocast dtype when a region
    is open and array is a float32 (or already autocast-dtype) GPU array, or any such NumPy array
    under cpu_emulation; else None, meaning "as it is"."""
    stack = _regions.stack
    region = stack[-1] if stack else None
    if region is None or region.dtype is None or array.dtype not in (np.float32, region.dtype):
        return None
    if region.cpu_emulation or backend.device_of(array) == "cuda":
        return region.dtype
    return None


TRAINING_DTYPES = ("fp32", "bf16")


def check_training_dtype(dtype, device):
    """Raise ValueError unless dtype ("fp32" or "bf16") can train on device: bf16 is GPU-only."""
    if dtype not in TRAINING_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {TRAINING_DTYPES}")
    if dtype == "bf16" and device != "cuda":
        raise ValueError(f"dtype bf16 trains on the GPU only (device 'cuda'), not on {device!r}: the "
                         "CPU stays float32 (NumPy has no bfloat16 GEMM worth using); use fp32 there")


def training_precision(dtype, device):
    """What a training step runs its forward in: autocast("bf16") for "bf16" on the GPU, nothing
    for "fp32"."""
    check_training_dtype(dtype, device)
    return autocast("bf16") if dtype == "bf16" else contextlib.nullcontext()
