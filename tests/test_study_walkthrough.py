"""The backward walkthrough runs end to end, and its gradient check catches a wrong backward."""
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from tinygrad_llm.gradcheck import GradcheckError

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("backward_walkthrough",
                                                  ROOT / "examples" / "backward_walkthrough.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_walkthrough_runs_and_checks_every_parameter(tmp_path, capsys):
    walk = _load()
    t0 = time.perf_counter()
    assert walk.main(["--out-dir", str(tmp_path)]) == 0
    seconds = time.perf_counter() - t0
    out = capsys.readouterr().out
    model, _, _ = walk.build()
    for name, _ in model.named_parameters():
        assert f"ok  {name}" in out
    for op in ("CrossEntropy", "LayerNorm", "QKVAttention", "Linear", "Embedding"):
        assert op in out
    assert "dx = dy @ W" in out  # the formula lines come from the op docstrings
    assert (tmp_path / "graph.dot").read_text().startswith("digraph")
    assert seconds < 30


def test_walkthrough_gradient_check_catches_a_wrong_backward(monkeypatch, capsys):
    walk = _load()
    from tinygrad_llm.ops import activation
    gelu = activation.GELU.backward

    def wrong(ctx, dy):
        return gelu(ctx, dy) * 1.01  # 1% off: finite differences must notice

    monkeypatch.setattr(activation.GELU, "backward", staticmethod(wrong))
    model, idx, targets = walk.build()
    with pytest.raises(GradcheckError):
        walk.check_every_parameter(model, idx, targets)
    assert np.isfinite(model(idx, targets)[1].item())
