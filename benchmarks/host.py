"""What a CPU figure depends on: the CPU model, its wide-vector flags and NumPy's BLAS.

Hosts here differ (AMD EPYC without AVX-512, Intel Xeon with AVX-512 and AMX), and PyTorch's
lead differs between them, so every CPU benchmark prints `describe()` above its figures.
"""
import os
import platform
from pathlib import Path


def machine():
    """{cpu, cores, avx512_amx_flags, numpy, numpy_blas} of this host."""
    import numpy as np
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy: no dict mode
        blas = "unknown"
    wide = sorted(f for f in flags if f.startswith(("avx512", "amx")))
    return {"cpu": name or platform.processor() or "unknown", "cores": os.cpu_count(),
            "avx512_amx_flags": wide or ["none"], "numpy": np.__version__, "numpy_blas": blas}


def describe():
    """One line: 'CPU (N cores; AVX-512/AMX: flags) | NumPy x on BLAS y'."""
    m = machine()
    return (f"{m['cpu']} ({m['cores']} cores; AVX-512/AMX: {' '.join(m['avx512_amx_flags'])}) | "
            f"NumPy {m['numpy']} on {m['numpy_blas']}")
