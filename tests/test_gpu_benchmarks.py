"""The GPU benchmarks' own logic, checked on the CPU with stand-ins for the device."""
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
