"""The GPU benchmarks' own logic, checked on the CPU with stand-ins for the device."""
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_kernels  # noqa: E402
import train_gpu  # noqa: E402


def test_train_gpu_charges_each_runner_its_own_queued_work():
    """A step's queued GPU work must be waited for inside its own timing window."""
    events, clock = [], iter(range(1000))

    def runner(name):
        return lambda i: events.append(name)

    times = train_gpu.time_interleaved({"ours": runner("ours"), "torch": runner("torch")},
                                       steps=2, warmup=1, synchronize=lambda: events.append("sync"),
                                       clock=lambda: (events.append("clock"), next(clock))[1])
    # every run is followed by a sync before its timing window closes (warmup: no closing clock)
    warm = ["clock", "ours", "sync", "clock", "torch", "sync"]
    timed = ["clock", "ours", "sync", "clock", "clock", "torch", "sync", "clock"]
    assert events == warm + timed * 2
    assert {k: len(v) for k, v in times.items()} == {"ours": 2, "torch": 2}


def test_gpu_kernels_builds_only_the_families_asked_for(monkeypatch):
    """--only filters before any array is made (every case at once takes 15-20 GB)."""
    built = []

    def family(name, kernels):
        def build(cp, torch, dtype):
            built.append(name)
            for k in kernels:
                yield (k, (1,), 4, None, None, None)
        return build
    monkeypatch.setattr(gpu_kernels, "FAMILIES", {
        "softmax": family("softmax", ["softmax fwd", "softmax bwd"]),
        "layer_norm": family("layer_norm", ["layer_norm fwd", "layer_norm bwd"]),
        "adamw": family("adamw", ["adamw step"])})
    got = [c[0] for c in gpu_kernels.cases(None, None, np.float32, ["layer_norm bwd", "adam"])]
    assert got == ["layer_norm bwd", "adamw step"] and built == ["layer_norm", "adamw"]
    built.clear()
    assert len(list(gpu_kernels.cases(None, None, np.float32, None))) == 5
    assert built == ["softmax", "layer_norm", "adamw"]


class _FakeCuda:
    """cp.cuda's events and timer, on a clock that each fn advances by its own cost in ms."""

    def __init__(self):
        self.now = 0.0
        outer = self

        class Event:
            def record(self):
                self.t = outer.now

            def synchronize(self):
                pass

        self.Event = Event

    @staticmethod
    def get_elapsed_time(start, end):
        return end.t - start.t


def test_median_ms_interleaves_and_gives_slow_calls_fewer_reps():
    cp = type("cp", (), {})()
    cp.cuda = _FakeCuda()
    calls = []

    def costs(name, ms):
        def fn():
            calls.append(name)
            cp.cuda.now += ms
        return fn

    fns = {"slow": costs("slow", 3000.0), "fast": costs("fast", 1.0)}
    got = gpu_kernels.median_ms(cp, fns, reps=50, warmup=1)
    assert got == {"slow": 3000.0, "fast": 1.0}
    assert calls[2:6] == ["slow", "fast", "slow", "fast"] and len(calls) == 2 + 2 * 50
    calls.clear()
    gpu_kernels.median_ms(cp, fns, reps=50, warmup=1, budget_ms=8000)  # 8000 / 3000: 2 reps
    assert len(calls) == 2 + 2 * 2


def test_gpu_check_plans_every_measurement_and_survives_missing_pieces(tmp_path, monkeypatch):
    """The one-command check lists each thing the GPU issue measures, in priority order; a
    missing piece (here: no training text, and no CuPy on this machine) is reported in the
    summary and the run goes on."""
    import gpu_check
    import gpu_compile_time
    compile(gpu_compile_time.CHILD, "child", "exec")  # the child script parses
    plan = gpu_check.steps(sys.executable, tmp_path, 120, None)
    names = [p[0] for p in plan]
    assert names == ["env", "compiletime", "kernels", "gputests", "syncs", "nccl", "train", "bench",
                     "attention", "trainbench", "report"]
    train = dict((p[0], p[3]) for p in plan)["train"]
    assert isinstance(train, str) and "--data" in train  # said, not run
    cmds = {p[0]: " ".join(p[3]) for p in plan if not isinstance(p[3], str)}
    assert "--T 1024 4096 --dims 64 128" in cmds["attention"]
    assert "--config gpt2 --bf16" in cmds["trainbench"]
    assert "test_nccl_collectives_in_a_world_of_one" in cmds["nccl"]
    with_text = dict((p[0], p[3]) for p in gpu_check.steps(sys.executable, tmp_path, 120, "t.txt"))
    assert with_text["train"][-4:] == ["--max-seconds", "120", "--sample-tokens", "0"]
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)  # no nvidia-smi
    monkeypatch.setattr(gpu_check, "find_text", lambda given: None)  # and no training text
    assert gpu_check.main(["--out", str(tmp_path), "--only", "env", "train", "--budget", "60"]) == 0
    summary = (tmp_path / "summary.txt").read_text()
    assert re.search(r"^env +(ok|rc=1)", summary, re.M)
    assert re.search(r"^train +SKIPPED .*no tiny Shakespeare text", summary, re.M)
