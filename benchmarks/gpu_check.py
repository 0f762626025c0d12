"""The whole GPU path checked in one command, in under 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py                      # from the repository root
    python benchmarks/gpu_check.py --budget 420 --out gpu_check_out

Steps, in priority order (each gets a time limit cut to what is left of the budget; a step that
cannot get 20 s is skipped and the summary says so):
  env        nvidia-smi, CuPy and its CUDA versions, the installed CuPy packages (one, not two)
  compile    nvcc -Xptxas -v over every registered kernel file (registers, spills, stack), and
             NVRTC through the glue (CuPy's RawModule, both dtypes): registers and local memory
             of every kernel function as CuPy loads it
  kernels    pytest tests/test_cuda_kernels.py -m "gpu and not slow" (kernels vs NumPy on the GPU)
  syncs      python -m tinygrad_llm bench --device cuda: ms/step and the host syncs of a step
             that does not log and of one that does (target 0 and 1), by file:line
  train      examples/train_shakespeare.py --device cuda, a short run (--max-seconds)
  bench      benchmarks/gpu_kernels.py --reps 5 (bandwidth, and ratios vs CuPy and PyTorch)
  trainbench benchmarks/train_gpu.py --steps 5 --warmup 2 (tokens/s vs PyTorch eager)
  gputests   pytest tests -m "gpu and not slow", the other files (every op on device="cuda")
Writes <out>/summary.txt (the table of steps and the key lines of each) and one log per step;
the summary is also copied to benchmarks/results/gpu_check_<date>_<gpu>.txt.
"""
import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

NVRTC_PROBE = r'''
import numpy as np, tinygrad_llm as tl
from tinygrad_llm import cuda
from tinygrad_llm.cuda import runtime as rt
assert tl.cuda_available(), "no GPU through CuPy"
bad = []
for f in cuda.KERNEL_FILES:
    for dt in (np.float32, np.float64):
        ctype = rt._CTYPE[np.dtype(dt)]
        names = rt.KERNELS[f] + rt.FLOAT_ONLY.get(f, ()) * (ctype == "float")
        if f == "attention.cu":
            continue  # its own glue picks the instantiations (benchmarks/attention_gpu.py --check)
        for n in names:
            a = rt.kernel(f, n, dt).attributes
            print(f"{rt.expr(n, ctype):44s} regs {a['num_regs']:3d} local {a['local_size_bytes']:4d} B "
                  f"max threads {a['max_threads_per_block']}")
            if a["local_size_bytes"]:
                bad.append(rt.expr(n, ctype))
print("NVRTC: every kernel compiled;", f"local memory in {bad}" if bad else "no local memory")
'''

# (name, log, max seconds, command, patterns of the lines that go in the summary)
def steps(py, out, train_seconds):
    data = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
    data_args = ["--data", str(data)] if data.exists() else []
    return [
        ("env", "env.log", 60, [py, "-c", "import cupy, tinygrad_llm as tl; from tinygrad_llm import backend; "
                                "cupy.show_config(); print('cupy packages:', backend.cupy_distributions()); "
                                "print('tl.cuda_available():', tl.cuda_available())"],
         r"CuPy Version|CUDA Runtime|NVRTC|cupy packages|cuda_available"),
        ("compile", "compile.log", 150, [py, "-m", "tinygrad_llm.cuda.report", "--out", str(out / "ptxas.txt")],
         r"kernels;|FAILED"),
        ("nvrtc", "compile.log", 150, [py, "-c", NVRTC_PROBE], r"NVRTC:|Error"),
        ("kernels", "pytest.log", 150, [py, "-m", "pytest", "tests/test_cuda_kernels.py", "-m", "gpu and not slow",
                                        "-q", "-rfE", "-p", "no:cacheprovider"], r"passed|failed|error"),
        ("syncs", "syncs.log", 90, [py, "-m", "tinygrad_llm", "bench", "--device", "cuda", "--n-layer", "6",
                                    "--n-head", "6", "--n-embd", "384", "--block-size", "256",
                                    "--batch-size", "64", "--steps", "10"],
         r"ms/step|host syncs|not logged|logged"),
        ("train", "train.log", train_seconds + 60, [py, "examples/train_shakespeare.py", "--device", "cuda",
                                                    *data_args, "--out-dir", str(out / "shakespeare"),
                                                    "--max-seconds", str(train_seconds), "--eval-every", "250",
                                                    "--sample-tokens", "0"],
         r"bits/byte|bits per byte|ms/step"),
        ("bench", "bench.log", 110, [py, "benchmarks/gpu_kernels.py", "--reps", "5"], r"copy|softmax|layer_norm"),
        ("trainbench", "bench.log", 130, [py, "benchmarks/train_gpu.py", "--steps", "5", "--warmup", "2"],
         r"ratio|tok/s"),
        ("gputests", "pytest.log", 150, [py, "-m", "pytest", "tests", "-m", "gpu and not slow", "-q", "-rfE",
                                         "-p", "no:cacheprovider", "--ignore=tests/test_cuda_kernels.py"],
         r"passed|failed|error"),
    ]


def run_step(name, log, limit, cmd, keep, out):
    """(summary lines, rc) of one step; its output is appended to out/log."""
    t0 = time.perf_counter()
    with open(out / log, "a") as f:
        f.write(f"===== {name}: {' '.join(cmd)} (limit {limit:.0f} s) =====\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    text = (out / log).read_text().split(f"===== {name}:")[-1]
    lines = [ln for ln in text.splitlines()[1:] if re.search(keep, ln)][-12:]
    status = "ok" if rc == 0 else f"rc={rc}"
    return [f"{name:10s} {status:10s} {time.perf_counter() - t0:6.1f} s  ({log})"] + [f"    {ln.strip()}" for ln in lines], rc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=450, help="seconds for the whole check")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    parser.add_argument("--train-seconds", type=int, default=60)
    parser.add_argument("--only", nargs="*", help="step names to run (default: all)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = [f"gpu_check {datetime.datetime.now().isoformat(timespec='seconds')}, budget {args.budget:.0f} s"]
    smi = shutil.which("nvidia-smi")
    gpu = "unknown GPU"
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True).stdout.strip()
        gpu = q.split(",")[0].strip() or gpu
        summary.append(f"gpu: {q}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for name, log, most, cmd, keep in steps(sys.executable, out, args.train_seconds):
        if args.only and name not in args.only:
            continue
        left = args.budget - (time.perf_counter() - start) - 5
        limit = min(most, left)
        if limit < 20:
            summary.append(f"{name:10s} SKIPPED    (budget: {left:.0f} s left)")
            continue
        lines, _ = run_step(name, log, limit, cmd, keep, out)
        summary += lines
        print("\n".join(lines), flush=True)
    summary.append(f"total {time.perf_counter() - start:.0f} s")
    text = "\n".join(summary) + "\n"
    (out / "summary.txt").write_text(text)
    if smi:  # a result of the GPU named in it
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.date.today().isoformat()
        (RESULTS / f"gpu_check_{stamp}_{re.sub(r'[^A-Za-z0-9]+', '_', gpu)}.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
