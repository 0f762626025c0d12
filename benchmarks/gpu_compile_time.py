"""First-call compile time of the kernels on the GPU: cold, and again from CuPy's disk cache.

    python benchmarks/gpu_compile_time.py          # needs a GPU; about 10-40 s

Runs one child process twice with CUPY_CACHE_DIR pointing at a new, empty folder. Each child
asks the glue for every kernel module a GPT training step uses (softmax, layer norm,
cross-entropy, GELU, AdamW, embedding, random, in float32; fused attention forward and backward
at D = 64 in float32 and bfloat16) and times each first request: NVRTC compile (or the disk
cache's load) plus the module load. The first child compiles; the second should find every
module on disk, which CuPy does from 14.2 on for modules built with name_expressions (all of
ours). Prints one line per module, the two totals and any kernel NVRTC gave local memory
(a spill); --json writes them to a file as well.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import cupy
import tinygrad_llm as tl
from tinygrad_llm import cuda
from tinygrad_llm.cuda import attention as fa
from tinygrad_llm.cuda import runtime as rt
assert tl.cuda_available(), "no GPU through CuPy"
times, local = {}, {}
for f in cuda.KERNEL_FILES:
    if f == fa.FILE:
        continue
    t0 = time.perf_counter()
    fn = rt.kernel(f, rt.KERNELS[f][0], np.float32)  # compiles (or loads) the file's float32 module
    times[f"{f} float32"] = time.perf_counter() - t0
    local[rt.expr(rt.KERNELS[f][0], "float")] = fn.attributes["local_size_bytes"]
dtypes = {"float32": np.float32}
try:
    import ml_dtypes
    dtypes["bfloat16"] = ml_dtypes.bfloat16
except ImportError:
    print("ml_dtypes missing: no bfloat16 attention modules", file=sys.stderr)
for name, dt in dtypes.items():
    for stage in ("forward", "backward_dq"):  # one module per pass
        t0 = time.perf_counter()
        bn = fa.tile_rows("forward" if stage == "forward" else "backward", np.dtype(dt), 64,
                          fa._device().smem_optin)
        for s in ((stage,) if stage == "forward" else ("backward_dq", "backward_dkdv")):
            local[fa.kernel_name(s, fa.element_type(dt), 64, bn)] = \
                fa._kernel(s, np.dtype(dt), 64, bn).attributes["local_size_bytes"]
        times[f"attention {'forward' if stage == 'forward' else 'backward'} {name} D=64"] = time.perf_counter() - t0
print(json.dumps({"cupy": cupy.__version__, "times": times, "local": local}))
'''


def child(cache_dir):
    env = dict(os.environ, CUPY_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], env=env, capture_output=True, text=True,
                         timeout=600)
    if run.returncode:
        sys.exit(f"the compile child failed:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cupy_cache_") as cache:
        cold, warm = child(cache), child(cache)
    print(f"CuPy {cold['cupy']}; cache folder fresh for the first process, reused by the second")
    for name, s in cold["times"].items():
        print(f"  {name:40s} cold {s:6.2f} s   warm {warm['times'][name]:6.2f} s")
    total_cold, total_warm = sum(cold["times"].values()), sum(warm["times"].values())
    print(f"first-call compile, cold cache: {total_cold:.1f} s ({len(cold['times'])} modules; process "
          f"{cold['process_s']:.1f} s)")
    print(f"first-call compile, warm cache: {total_warm:.1f} s (process {warm['process_s']:.1f} s)")
    spilled = {k: v for k, v in cold["local"].items() if v}
    print(f"NVRTC local memory: {spilled if spilled else 'none'} ({len(cold['local'])} kernels looked at)")
    if total_warm > 0.25 * total_cold:
        print("warm cache: NOT served from CuPy's disk cache (CuPy >= 14.2 keeps name_expressions modules)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cold": cold, "warm": warm}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
