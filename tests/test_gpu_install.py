"""Installing for the GPU: the extras, and one CuPy at a time (checked without a GPU)."""
import tomllib
from pathlib import Path

import pytest

from tinygrad_llm import backend

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_extras_bring_the_toolkit_for_cuda_12_and_13():
    """A bare cupy-cudaXXx wheel cannot compile the kernels without a local CUDA toolkit: every
    GPU extra asks for CuPy's [ctk] extra (NVRTC and headers from PyPI)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cuda12"][0] == "cupy-cuda12x[ctk]>=14.2"  # the first disk cache of name_expressions modules
    assert extras["cuda13"][0] == "cupy-cuda13x[ctk]>=14.2"
    from tinygrad_llm.cuda import runtime
    assert runtime.CACHED_NAME_EXPRESSIONS == (14, 2)
    assert extras["gpu"] == extras["cuda12"]
    readme = (ROOT / "README.md").read_text()
    for cmd in ('pip install ".[cuda12]"', 'pip install ".[cuda13]"', "`pip install . ml_dtypes`"):
        assert cmd in readme


class _Dist:
    def __init__(self, name):
        self.metadata = {"Name": name}


def test_two_cupy_packages_are_refused_by_name(monkeypatch):
    from importlib import metadata
    monkeypatch.setattr(metadata, "distributions",
                        lambda: [_Dist("numpy"), _Dist("cupy-cuda12x"), _Dist("cupy-cuda13x")])
    assert backend.cupy_distributions() == ["cupy-cuda12x", "cupy-cuda13x"]
    monkeypatch.setattr(backend, "_cupy", None)
    with pytest.raises(backend.DeviceError, match="cupy-cuda12x, cupy-cuda13x"):
        backend.cupy()


def test_one_installed_cupy_is_used_as_it_is(monkeypatch):
    from importlib import metadata
    monkeypatch.setattr(metadata, "distributions", lambda: [_Dist("numpy"), _Dist("cupy-cuda13x")])
    assert backend.cupy_distributions() == ["cupy-cuda13x"]
    try:
        import cupy  # noqa: F401
    except ImportError:  # no CuPy here: the import is tried (not refused for a duplicate)
        monkeypatch.setattr(backend, "_cupy", None)
        with pytest.raises(backend.DeviceError, match="needs CuPy"):
            backend.cupy()
