"""Registers, spills and stack of every registered kernel, from nvcc's ptxas report (no GPU needed).

    python -m tinygrad_llm.cuda.report                 # sm_90, a table on stdout
    python -m tinygrad_llm.cuda.report --arch sm_80 --out report.txt

Each .cu file is compiled with `nvcc -arch=<arch> -std=c++17 -Xptxas -v -c`; every entry function
(each float / double / bf16 instantiation) gets one row: registers per thread, spill stores and
loads, stack frame and static shared memory. A spill or a stack frame is a kernel keeping values in
local memory, which costs memory traffic on the GPU.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import KERNEL_FILES
from .runtime import KERNEL_DIR

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def _demangle(names):
    tool = shutil.which("c++filt")
    if tool is None:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    # "void softmax_forward<float>(float const*, ...)" -> "softmax_forward<float>"
    short = [re.sub(r"^void ", "", d.split("(")[0]) for d in out[:len(names)]]
    return dict(zip(names, short))


def parse_ptxas(text):
    """One dict per entry function in a `-Xptxas -v` log."""
    rows, cur = [], None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            cur = dict(entry=m.group(1), arch=m.group(2), registers=None, stack=0, spill_stores=0,
                       spill_loads=0, smem=0)
            rows.append(cur)
        elif cur is not None and (m := _FRAME.search(line)):
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        elif cur is not None and (m := _REGS.search(line)):
            cur["registers"] = int(m.group(1))
            cur["smem"] = int(m.group(2) or 0)
    return rows


def compile_file(filename, arch="sm_90", nvcc="nvcc"):
    """(rows, error text or None) for one kernel file."""
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run([nvcc, f"-arch={arch}", "-std=c++17", "-Xptxas", "-v", "-c",
                              str(KERNEL_DIR / filename), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True)
    if run.returncode != 0:
        return [], run.stderr[-4000:]
    rows = parse_ptxas(run.stderr + run.stdout)
    for r in rows:
        r["file"] = filename
    return rows, None


def report(arch="sm_90", nvcc="nvcc", files=None, workers=None):
    """(rows for every kernel of every file, {file: error}) ; files default to the registry's."""
    files = list(files or KERNEL_FILES)
    with ThreadPoolExecutor(workers or min(len(files), os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda f: compile_file(f, arch, nvcc), files))
    rows = [r for rs, _ in results for r in rs]
    names = _demangle([r["entry"] for r in rows])
    for r in rows:
        r["kernel"] = names[r["entry"]]
    return rows, {f: err for f, (_, err) in zip(files, results) if err}


def format_table(rows):
    head = f"{'file':18s} {'kernel':52s} {'regs':>5s} {'spill st':>8s} {'spill ld':>8s} {'stack':>6s} {'smem':>6s}"
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["file"], r["kernel"])):
        lines.append(f"{r['file']:18s} {r['kernel'][:52]:52s} {r['registers']:5d} {r['spill_stores']:8d} "
                     f"{r['spill_loads']:8d} {r['stack']:6d} {r['smem']:6d}")
    spilled = [r["kernel"] for r in rows if r["spill_stores"] or r["spill_loads"] or r["stack"]]
    lines.append(f"{len(rows)} kernels; " + (f"local memory in {len(spilled)}: {', '.join(spilled)}"
                                             if spilled else "no spills, no stack frames"))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--nvcc", default=shutil.which("nvcc") or "nvcc")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    if shutil.which(args.nvcc) is None and not Path(args.nvcc).exists():
        sys.exit("report: nvcc not found (the CUDA toolkit is needed to compile the kernels)")
    version = subprocess.run([args.nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    rows, errors = report(args.arch, args.nvcc)
    text = f"nvcc -arch={args.arch} -std=c++17 -Xptxas -v ({version})\n" + format_table(rows)
    for f, err in errors.items():
        text += f"\nFAILED to compile {f}:\n{err}"
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
