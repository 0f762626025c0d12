"""Shared fixtures: the device list every op test runs over, and where the shared data lives."""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tinygrad_llm as tl

ROOT = Path(__file__).resolve().parents[1]
# The tiny Shakespeare text and GPT-2's tokenizer files sit beside the checkout (../shared/data).
DATA_DIR = Path(os.environ.get("TINYGRAD_LLM_SHARED_DATA", ROOT.parent / "shared" / "data"))

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# Tests compare float32 results with NumPy at float32 tolerances: full float32 matmuls on the GPU
# (TF32, the training default, rounds matmul inputs to 10 mantissa bits).
tl.backend.set_tf32(False)


def pytest_collection_modifyitems(config, items):
    if tl.cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device: CuPy is not installed or sees no GPU")
    for item in items:
        # the marker itself: item.keywords also holds the folder names above the test, so a
        # checkout in a folder named "gpu" would skip every test
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    """Run the test once per device: "cpu" always, "cuda" when a GPU is there."""
    return request.param


@pytest.fixture
def cp():
    """CuPy itself, for GPU tests that build device arrays directly."""
    if not tl.cuda_available():
        pytest.skip("no CUDA device: CuPy is not installed or sees no GPU")
    return tl.backend.cupy()


@pytest.fixture
def data_dir():
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data not found at {DATA_DIR} (set TINYGRAD_LLM_SHARED_DATA)")
    return DATA_DIR


@pytest.fixture(autouse=True)
def _seed():
    tl.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def emulator_lib(tmp_path_factory):
    """tests/kernel_emulator.cpp built once per run: the CUDA kernels on the host (see its header)."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: the host emulator of the kernels needs a C++20 compiler")
    so = tmp_path_factory.mktemp("emu") / "kernel_emulator.so"
    src = Path(__file__).with_name("kernel_emulator.cpp")
    run = subprocess.run([gxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
                          "-Wno-unknown-pragmas", str(src), "-o", str(so)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"g++ failed on the kernels:\n{run.stderr}"
    return ctypes.CDLL(str(so))
