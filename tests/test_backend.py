"""Backend: array-module lookup, devices (CuPy only when asked for), the seeded RNG, dtypes."""
import os
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor, backend


def test_array_module_and_device_of_numpy():
    x = np.ones(2)
    assert backend.array_module(x) is np and backend.device_of(x) == "cpu"
    assert backend.xp_of("cpu") is np
    assert backend.array_module(3.0) is np


def test_unknown_device_is_refused():
    with pytest.raises(backend.DeviceError, match=r"unknown device 'tpu'; expected one of \('cpu', 'cuda'\)"):
        Tensor.zeros(2, device="tpu")
    with pytest.raises(backend.DeviceError, match="unknown device"):
        Tensor.zeros(2).to("gpu")


@pytest.mark.skipif(tl.cuda_available(), reason="CuPy and a GPU are present")
def test_cuda_without_cupy_says_what_to_install():
    assert tl.cuda_available() is False
    with pytest.raises(backend.DeviceError, match="device 'cuda'"):
        Tensor.zeros(2, device="cuda")


def test_package_imports_without_cupy_and_honours_the_device_variable():
    # a fresh interpreter where `import cupy` fails: the package and the CPU path still work
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import tinygrad_llm as tl\n"
            "from tinygrad_llm import Tensor\n"
            "x = Tensor([1.0, 2.0], requires_grad=True); (x * x).sum().backward()\n"
            "assert x.grad.tolist() == [2.0, 4.0] and not tl.cuda_available()\n"
            "assert 'cupy' not in sys.modules or sys.modules['cupy'] is None\n"
            "print(Tensor.zeros(1).device)\n")
    env = dict(os.environ, TINYGRAD_LLM_DEVICE="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cpu"
    env["TINYGRAD_LLM_DEVICE"] = "tpu"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "unknown device 'tpu'" in out.stderr


def test_default_device_follows_the_environment(monkeypatch):
    monkeypatch.setenv("TINYGRAD_LLM_DEVICE", "cpu")
    assert backend.default_device() == "cpu"
    monkeypatch.delenv("TINYGRAD_LLM_DEVICE")
    assert backend.default_device() == "cpu"


def test_manual_seed_and_rng_state_round_trip():
    tl.manual_seed(7)
    a = Tensor.randn(4).numpy()
    state = tl.get_rng_state()
    b = Tensor.rand(4).numpy()
    tl.set_rng_state(state)
    assert np.array_equal(Tensor.rand(4).numpy(), b)
    tl.manual_seed(7)
    assert np.array_equal(Tensor.randn(4).numpy(), a)
    tl.manual_seed(8)
    assert not np.array_equal(Tensor.randn(4).numpy(), a)


def test_dtypes():
    assert backend.resolve_dtype(None) == np.float32
    assert backend.resolve_dtype("float64") == np.float64
    assert backend.is_float(np.float32) and not backend.is_float(np.int64)


def test_ops_on_mixed_devices_are_refused(device):
    if device == "cpu":
        pytest.skip("needs a second device")
    a, b = Tensor.ones(2), Tensor.ones(2, device="cuda")
    with pytest.raises(backend.DeviceError, match="different devices"):
        a + b


def test_to_device_round_trip_carries_gradient(device):
    x = Tensor([1.0, 2.0], requires_grad=True)
    y = x.to(device)
    assert y.device == device
    (y * 2).sum().backward()
    assert x.grad.device == "cpu" and x.grad.tolist() == [2.0, 2.0]


def test_importing_the_package_leaves_malloc_alone():
    # mallopt is process-wide: a library must not set it on import, only when asked to
    import os
    import subprocess
    import sys
    spy = ("import ctypes\n"
           "real = ctypes.CDLL\n"
           "class Spy:\n"
           "    def __init__(self, name, *a, **k): self.lib = real(name, *a, **k)\n"
           "    def __getattr__(self, attr):\n"
           "        if attr == 'mallopt': print('MALLOPT', flush=True)\n"
           "        return getattr(self.lib, attr)\n"
           "ctypes.CDLL = Spy\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "TINYGRAD_LLM_KEEP"))}

    def run(code):
        return subprocess.run([sys.executable, "-c", spy + code], capture_output=True, text=True,
                              env=env, check=True).stdout

    assert "MALLOPT" not in run("import tinygrad_llm, tinygrad_llm.models, tinygrad_llm.train\n")
    asked = run("import tinygrad_llm.backend as b\nprint('tuned' if b.keep_freed_memory() else 'not glibc')\n")
    assert ("MALLOPT" in asked) == ("tuned" in asked)


def test_the_first_backward_tunes_malloc_unless_the_program_chose():
    # a loop of one's own (loss.backward(); opt.step()) gets the trainer's malloc setting
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "TINYGRAD_LLM_KEEP"))}
    probe = ("import ctypes, tinygrad_llm.backend as b\n"
             "calls = []\n"
             "real = ctypes.CDLL\n"
             "class Spy:\n"
             "    def __init__(self, name, *a, **k): self.lib = real(name, *a, **k)\n"
             "    def __getattr__(self, attr):\n"
             "        if attr == 'mallopt': return lambda *a: calls.append(a)\n"
             "        return getattr(self.lib, attr)\n"
             "ctypes.CDLL = Spy\n"
             "from tinygrad_llm import Tensor\n"
             "{before}\n"
             "x = Tensor([1.0, 2.0], requires_grad=True)\n"
             "print('before', calls)\n"
             "(x * x).sum().backward(); (x * x).sum().backward()\n"
             "print('after', calls)\n")

    def run(before="", **extra):
        return subprocess.run([sys.executable, "-c", probe.format(before=before)], capture_output=True,
                              text=True, env={**env, **extra}, check=True).stdout.splitlines()

    before, after = run()
    assert before == "before []"
    assert after == "after [(-3, 33554432), (-1, 1073741824), (-2, 67108864)]"  # once, not per backward
    assert run("b.keep_freed_memory(False)")[1] == "after []"
    undone = run("b.keep_freed_memory(); b.keep_freed_memory(False)")[1]
    assert undone.endswith("(-3, 131072), (-1, 131072), (-2, 131072)]")  # glibc's defaults back
    assert run(TINYGRAD_LLM_KEEP_MEMORY="0")[1] == "after []"
