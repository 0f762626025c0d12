"""The README's own training loop runs as printed (a few steps) and learns."""
import numpy as np
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_loop_runs_and_lowers_the_loss(tmp_path, monkeypatch):
    block = README.read_text().split("## The Python API")[1].split("```python")[1].split("```")[0]
    assert "loss.backward()" in block and "opt.step()" in block
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcab "), 5000))  # a text a model learns fast
    (tmp_path / "input.txt").write_text(text)
    monkeypatch.chdir(tmp_path)
    losses = []
    code = block.replace("range(200)", "range(30)").replace("    opt.zero_grad()", "    opt.zero_grad(); losses.append(loss.item())")
    np.random.seed(0)
    exec(compile(code, "README.md", "exec"), {"losses": losses})
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses
