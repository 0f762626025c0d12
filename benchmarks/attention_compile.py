"""Registers, spills and shared memory of every GPU instantiation of kernels/attention.cu.

    python benchmarks/attention_compile.py      # needs nvcc; about a minute

Compiles the file with `nvcc -arch=sm_90 -std=c++17 -cubin -Xptxas -v` and writes the ptxas
figures, the dynamic shared memory the glue asks for (cuda/attention.py smem_bytes) and the
resident blocks per SM those two allow, to benchmarks/results/attention_compile_<date>.txt.
"""
import datetime
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinygrad_llm.cuda import attention as fa  # noqa: E402
from tinygrad_llm.cuda import runtime  # noqa: E402

CMD = ["-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v"]
TYPES = {"f": "float", "N3tgl4bf16E": "bf16", "d": "double"}
SM_REGS, SM_SMEM, SM_THREADS = 65536, 228 * 1024, 2048  # H100 (sm_90) per SM


def ptxas(nvcc):
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run([nvcc, *CMD, f"-I{runtime.KERNEL_DIR}", str(runtime.KERNEL_DIR / fa.FILE),
                              "-o", str(Path(tmp) / "attention.cubin")],
                             capture_output=True, text=True, timeout=1800)
    if run.returncode:
        sys.exit(f"nvcc failed:\n{run.stderr}")
    rows, name = {}, None
    for line in run.stderr.splitlines():
        m = re.search(r"Compiling entry function '_Z\d+attention_(\w+?)I(f|d|N3tgl4bf16E)Li(\d+)E(?:Li(\d+)E)?E",
                      line)
        if m:
            name = (m.group(1), TYPES[m.group(2)], int(m.group(3)), int(m.group(4) or 0))
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            rows[name] = [0, int(m.group(1)), int(m.group(2))]
        m = re.search(r"Used (\d+) registers", line)
        if m and name in rows:
            rows[name][0] = int(m.group(1))
    return rows


def main():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        sys.exit("nvcc not found")
    import ml_dtypes
    dtypes = {"float": np.float32, "bf16": ml_dtypes.bfloat16, "double": np.float64}
    rows = ptxas(nvcc)
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    version = re.search(r"release ([\d.]+)", version).group(1)
    out = [f"# nvcc {' '.join(CMD)} tinygrad_llm/kernels/attention.cu   (CUDA {version})",
           "# made by: python benchmarks/attention_compile.py",
           "# regs: registers per thread (ptxas); smem: the dynamic shared bytes per block the glue",
           "# asks for; blocks/SM: the fewest of 65536 / (threads x regs), 228 KiB / smem and",
           "# 2048 / threads (H100). Threads per block: 128 (256 for backward_prep).",
           "# BN: rows of the streamed tile (16 where a GPU's opt-in shared memory is below what 32 needs;",
           "# backward_prep has none).",
           "",
           f"{'kernel':26s} {'type':7s} {'D':>4s} {'BN':>3s} {'regs':>5s} {'spill st':>9s} {'spill ld':>9s} "
           f"{'smem B':>8s} {'blocks/SM':>9s}"]
    order = {"float": 0, "bf16": 1, "double": 2}
    for (stage, ty, D, BN), (regs, st, ld) in sorted(rows.items(), key=lambda kv: (
            order[kv[0][1]], kv[0][2], -kv[0][3], fa.STAGES.index(kv[0][0]))):
        smem = fa.smem_bytes(stage, np.dtype(dtypes[ty]), D, BN or 32)
        threads = 256 if stage == "backward_prep" else 128
        blocks = min(SM_REGS // (threads * (-(-regs // 8) * 8)), SM_THREADS // threads,
                     SM_SMEM // (smem + 1024) if smem else SM_THREADS // threads)
        out.append(f"attention_{stage:16s} {ty:7s} {D:4d} {BN or '-':>3} {regs:5d} {st:9d} {ld:9d} {smem:8d} "
                   f"{blocks:9d}")
    path = ROOT / "benchmarks" / "results" / f"attention_compile_{datetime.date.today()}.txt"
    path.write_text("\n".join(out) + "\n")
    print("\n".join(out))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
