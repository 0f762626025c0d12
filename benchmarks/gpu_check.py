"""The whole GPU path checked in one command, in under 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py                      # from the repository root
    python benchmarks/gpu_check.py --only gputests      # again, one step (see the names below)
    python benchmarks/gpu_check.py --budget 465 --out gpu_check_out --data path/to/tinyshakespeare.txt

Steps, in priority order (each gets a time limit cut to what is left of the budget; a step that
cannot get 20 s is skipped and the summary says so, so a second run with --only finishes it):
  env          nvidia-smi, CuPy and its CUDA/NVRTC versions, the installed CuPy packages (one,
               not two), and which optional pieces are there (ml_dtypes, torch with CUDA, mpi4py)
  compiletime  benchmarks/gpu_compile_time.py: first-call compile of every kernel module a training
               step uses, in a fresh process with an empty CuPy cache and again with the cache warm
               (CuPy >= 14.2 should serve the second from disk)
  kernels      pytest tests/test_cuda_kernels.py tests/test_attention_kernel.py -m "gpu and not slow"
               (every kernel, fused attention with windows and ALiBi, against NumPy on the GPU)
  gputests     pytest tests -m "gpu and not slow", the other files (every op on device="cuda")
  syncs        python -m tinygrad_llm bench --device cuda: ms/step and the host syncs of a step
               that does not log and of one that does (target 0 and 1), by file:line
  nccl         the NCCL tests: a world of one (and two ranks over mpirun where there are 2 GPUs)
  train        examples/train_shakespeare.py --device cuda for --train-seconds (default 120; the
               target is <= 2.12 bits per byte within 180 s): bits per byte and wall time
  bench        benchmarks/gpu_kernels.py --only softmax layer_norm: GB/s against the copy
               bandwidth (target >= 70%) and time against PyTorch (target: no slower)
  attention    benchmarks/attention_gpu.py at T = 1024, 4096 and D = 64, 128: bf16 against
               PyTorch's SDPA (target >= 0.5x), float32 against the unfused path (target >= 3x)
  trainbench   benchmarks/train_gpu.py --config gpt2 --bf16: GPT-2 124M steps against PyTorch
               eager, TF32 and fp32 (target >= 0.9x) and bf16 autocast (target >= 0.8x)
  report       python -m tinygrad_llm.cuda.report: nvcc's registers, spills and stack per kernel
               (needs nvcc; already recorded on the CPU, so last)
A piece that is missing (no torch, no mpi4py, no nvcc, no training text) shows as a skipped test,
a note in the step's log or a failed step in the summary; it never stops the run. Writes
<out>/summary.txt (each step's status, time and key lines) and one log per step; the summary is
also copied to benchmarks/results/gpu_check_<date>_<gpu>.txt, and the benchmarks save their JSON
in benchmarks/results/ as well.
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

ENV_PROBE = r"""
import importlib, tinygrad_llm as tl
from tinygrad_llm import backend
from tinygrad_llm.cuda import runtime
import cupy
cupy.show_config()
print("cupy packages:", backend.cupy_distributions())
print("tl.cuda_available():", tl.cuda_available())
if runtime.cupy_version(cupy) < runtime.CACHED_NAME_EXPRESSIONS:
    print(f"note: CuPy {cupy.__version__} recompiles the kernels in every process (14.2 caches them)")
for name in ("ml_dtypes", "torch", "mpi4py", "hypothesis"):
    try:
        mod = importlib.import_module(name)
        extra = f", CUDA {mod.version.cuda}, GPU {mod.cuda.is_available()}" if name == "torch" else ""
        print(f"optional {name}: {getattr(mod, '__version__', '?')}{extra}")
    except ImportError:
        print(f"optional {name}: MISSING")
"""
NCCL_TESTS = ["tests/test_distributed.py::test_nccl_collectives_in_a_world_of_one",
              "tests/test_distributed.py::test_two_gpus_over_nccl", "tests/test_nccl_id.py"]
FIRST_TESTS = ["tests/test_cuda_kernels.py", "tests/test_attention_kernel.py"]


def find_text(given):
    """The tiny Shakespeare text: --data, $TINYGRAD_LLM_DATA, or a shared/data folder beside or
    inside the checkout; None (the train step is skipped, there is no network to fetch it)."""
    candidates = [given, os.environ.get("TINYGRAD_LLM_DATA")] + [
        str(base / "shared" / "data" / "tinyshakespeare.txt") for base in (ROOT, ROOT.parent)]
    return next((c for c in candidates if c and Path(c).is_file()), None)


# (name, log, max seconds, command or a reason it cannot run, patterns of the lines that go in the summary)
def steps(py, out, train_seconds, text):
    pytest = [py, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
    train = ([py, "examples/train_shakespeare.py", "--device", "cuda", "--data", text, "--out-dir",
              str(out / "shakespeare"), "--max-seconds", str(train_seconds), "--sample-tokens", "0"]
             if text else "no tiny Shakespeare text here (pass --data PATH)")
    return [
        ("env", "env.log", 30, [py, "-c", ENV_PROBE],
         r"CuPy Version|CUDA Runtime|NVRTC|cupy packages|cuda_available|note:|optional"),
        ("compiletime", "compile.log", 90, [py, "benchmarks/gpu_compile_time.py", "--json",
                                            str(out / "compile_time.json")],
         r"CuPy|first-call|NOT served|local memory"),
        ("kernels", "pytest.log", 100, pytest + ["-m", "gpu and not slow", *FIRST_TESTS], r"passed|failed|error"),
        ("gputests", "pytest.log", 90, pytest + ["-m", "gpu and not slow", "tests",
                                                 *[f"--ignore={t}" for t in FIRST_TESTS],
                                                 "--deselect", NCCL_TESTS[0], "--deselect", NCCL_TESTS[1]],
         r"passed|failed|error"),
        ("syncs", "syncs.log", 45, [py, "-m", "tinygrad_llm", "bench", "--device", "cuda", "--n-layer", "6",
                                    "--n-head", "6", "--n-embd", "384", "--block-size", "256",
                                    "--batch-size", "64", "--steps", "10"],
         r"ms/step|host syncs|not logged|logged"),
        ("nccl", "nccl.log", 40, pytest + NCCL_TESTS, r"passed|failed|error|SKIPPED"),
        ("train", "train.log", train_seconds + 40, train, r"bits/byte|bits per byte|ms/step|elapsed|wall"),
        ("bench", "bench.log", 45, [py, "benchmarks/gpu_kernels.py", "--only", "softmax", "layer_norm",
                                    "--reps", "10"], r"copy|softmax|layer_norm"),
        ("attention", "bench.log", 60, [py, "benchmarks/attention_gpu.py", "--T", "1024", "4096",
                                        "--dims", "64", "128", "--reps", "3"],
         r"T=|ratio|x |saved"),
        ("trainbench", "bench.log", 80, [py, "benchmarks/train_gpu.py", "--config", "gpt2", "--bf16",
                                         "--steps", "5", "--warmup", "2"], r"ratio|tok/s"),
        ("report", "compile.log", 120, [py, "-m", "tinygrad_llm.cuda.report", "--out", str(out / "ptxas.txt")],
         r"kernels;|FAILED|nvcc"),
    ]


def run_step(name, log, limit, cmd, keep, out):
    """(summary lines, rc) of one step; its output is appended to out/log."""
    if isinstance(cmd, str):  # a piece this machine lacks: said, not run
        return [f"{name:11s} {'SKIPPED':10s}     -    ({cmd})"], None
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
    return [f"{name:11s} {status:10s} {time.perf_counter() - t0:6.1f} s  ({log})"] + [f"    {ln.strip()}" for ln in lines], rc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=465, help="seconds for the whole check")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    parser.add_argument("--train-seconds", type=int, default=120,
                        help="the Shakespeare run's --max-seconds (the target: <= 2.12 bits/byte in 180)")
    parser.add_argument("--data", help="tiny Shakespeare text (default: $TINYGRAD_LLM_DATA or shared/data)")
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
    plan = steps(sys.executable, out, args.train_seconds, find_text(args.data))
    unknown = set(args.only or ()) - {p[0] for p in plan}
    if unknown:
        parser.error(f"no step named {', '.join(sorted(unknown))}; the steps: {', '.join(p[0] for p in plan)}")
    for name, log, most, cmd, keep in plan:
        if args.only and name not in args.only:
            continue
        left = args.budget - (time.perf_counter() - start) - 5
        limit = min(most, left)
        if limit < 20:
            summary.append(f"{name:11s} SKIPPED    (budget: {left:.0f} s left; run it with --only {name})")
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
