"""The kernel runtime (tinygrad_llm/cuda/runtime.py) without a GPU: a fake CuPy module records what
would be compiled and looked up, so the cache keys and the function cache are checked on the CPU."""
import shutil

import numpy as np
import pytest

from tinygrad_llm import backend, cuda
from tinygrad_llm.cuda import runtime


class FakeRawModule:
    made = []

    def __init__(self, code, options, name_expressions):
        self.code, self.options, self.names = code, options, list(name_expressions)
        self.lookups = []
        FakeRawModule.made.append(self)

    def get_function(self, name):
        assert name in self.names, f"{name} was not named in name_expressions"
        self.lookups.append(name)
        return lambda grid, block, args, shared_mem=0: None


class FakeCupy:
    RawModule = FakeRawModule


@pytest.fixture
def fake_cupy(monkeypatch):
    FakeRawModule.made = []
    monkeypatch.setattr(backend, "cupy", lambda: FakeCupy)
    monkeypatch.setattr(runtime, "_modules", {})
    monkeypatch.setattr(runtime, "_functions", {})
    return FakeRawModule.made


@pytest.fixture
def kernel_copy(tmp_path, monkeypatch):
    """The kernels folder copied to a temporary one the runtime reads instead."""
    copy = tmp_path / "kernels"
    shutil.copytree(runtime.KERNEL_DIR, copy)
    monkeypatch.setattr(runtime, "KERNEL_DIR", copy)
    return copy


def test_registry_lists_every_file_once():
    assert cuda.KERNEL_FILES == runtime.kernel_files()
    assert len(set(cuda.KERNEL_FILES)) == len(cuda.KERNEL_FILES)
    assert set(runtime.FLOAT_ONLY) <= set(runtime.KERNELS)
    with pytest.raises(ValueError, match="registered twice"):
        runtime.register("softmax.cu", ("something_else",))


@pytest.mark.parametrize("filename", cuda.KERNEL_FILES)
def test_cache_key_changes_when_an_included_header_changes(fake_cupy, kernel_copy, filename):
    """CuPy keys its disk cache by (source, options): an edit to common.cuh must change what it
    is handed, or a stale cubin would be served."""
    runtime.module(filename, np.float32)
    before = fake_cupy[-1].code
    with open(kernel_copy / "common.cuh", "a") as f:
        f.write("\n// an edit\n")
    runtime._modules.clear()
    runtime.module(filename, np.float32)
    after = fake_cupy[-1].code
    assert after != before
    assert runtime.kernel_source(filename) in after  # the kernel text itself goes in unchanged


def test_cache_key_follows_nested_includes(kernel_copy, monkeypatch):
    (kernel_copy / "outer.cuh").write_text('#pragma once\n#include "inner.cuh"\n')
    (kernel_copy / "inner.cuh").write_text("#pragma once\n// v1\n")
    (kernel_copy / "k.cu").write_text('#include "outer.cuh"\n#include "common.cuh"\n')
    assert runtime.included_files("k.cu") == ["outer.cuh", "common.cuh", "inner.cuh"]
    before = runtime.compile_source("k.cu")
    (kernel_copy / "inner.cuh").write_text("#pragma once\n// v2\n")
    assert runtime.compile_source("k.cu") != before


def test_each_function_is_looked_up_once_per_kernel_and_dtype(fake_cupy, monkeypatch):
    """get_function builds a new RawKernel per call: a launch must reuse the first one."""
    x32 = np.zeros((4, 8), np.float32)
    for _ in range(3):
        runtime.launch("softmax.cu", "softmax_forward_warp<{T}, 1>", np.float32, (1,), (32, 8),
                       x32, x32, 4, 8)
        runtime.launch("softmax.cu", "softmax_forward", np.float32, (4,), (32,), x32, x32, 4, 8)
        runtime.launch("softmax.cu", "softmax_forward", np.float64, (4,), (32,), x32, x32, 4, 8)
    assert len(fake_cupy) == 2  # one module per (file, dtype)
    lookups = sorted(n for m in fake_cupy for n in m.lookups)
    assert lookups == ["softmax_forward<double>", "softmax_forward<float>",
                       "softmax_forward_warp<float, 1>"]
