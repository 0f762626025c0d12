"""What a first call compiles: NVRTC builds only the instantiations the glue names.

Each .cu file keeps an explicit instantiation list for nvcc (the compile check and report), behind
`#ifndef __CUDACC_RTC__`; NVRTC defines that macro, so CuPy's compile of one name expression
builds that one kernel, not the whole list. Checked with the preprocessor everywhere, and with
NVRTC itself (tests/nvrtc.py) where its library is installed."""
import re
import shutil
import subprocess
import time

import pytest

from tinygrad_llm import cuda
from tinygrad_llm.cuda import attention as fa
from tinygrad_llm.cuda import runtime
import nvrtc

EXPLICIT = re.compile(r"template\s+__global__")
OPTIONS = ["-std=c++17", f"-I{runtime.KERNEL_DIR}", "-arch=compute_90"]  # what CuPy passes, PTX only


@pytest.mark.parametrize("filename", cuda.KERNEL_FILES)
def test_the_explicit_instantiations_are_for_nvcc_only(filename):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found")
    source = runtime.kernel_source(filename)
    assert EXPLICIT.search(source), f"{filename}: no explicit instantiations for nvcc's check"
    run = subprocess.run([gxx, "-E", "-P", "-x", "c++", "-D__CUDACC_RTC__", f"-I{runtime.KERNEL_DIR}", "-"],
                         input=source, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert not EXPLICIT.search(run.stdout), f"{filename}: NVRTC would build every instantiation"


@pytest.fixture(scope="module")
def lib():
    found = nvrtc.find_nvrtc()
    if found is None:
        pytest.skip("no NVRTC library (pip install nvidia-cuda-nvrtc, or a CUDA toolkit with it)")
    return found


@pytest.mark.parametrize("pass_, ctype, D", [("forward", "float", 64), ("backward", "tgl::bf16", 128),
                                            ("backward", "double", 32)])
def test_nvrtc_builds_only_the_attention_kernels_asked_for(lib, pass_, ctype, D):
    names = fa.pass_names(pass_, ctype, D, 32)
    t0 = time.perf_counter()
    ptx, lowered = nvrtc.compile_program(lib, runtime.compile_source(fa.FILE), OPTIONS, names, fa.FILE)
    print(f"{pass_} {ctype} D={D}: {len(names)} kernels, PTX in {time.perf_counter() - t0:.1f} s")
    assert sorted(nvrtc.entries(ptx)) == sorted(lowered.values())


def test_nvrtc_builds_one_dtype_of_a_kernel_file(lib):
    names = [runtime.expr(k, "float") for k in runtime.KERNELS["softmax.cu"]]
    ptx, lowered = nvrtc.compile_program(lib, runtime.compile_source("softmax.cu"), OPTIONS, names,
                                         "softmax.cu")
    assert sorted(nvrtc.entries(ptx)) == sorted(lowered.values())
    assert all("IfL" in n or "IfE" in n for n in lowered.values())  # float only, no double
