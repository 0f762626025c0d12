"""`python -m tinygrad_llm plot`: a PNG from a metrics file, clear messages when it cannot."""
import json
import sys

import numpy as np
import pytest

from tinygrad_llm.__main__ import main as cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(path, steps=60, health_every=5):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for s in range(1, steps + 1):
            rec = {"step": s, "train_loss": 4.0 * np.exp(-s / 30) + 1.5 + 0.05 * rng.standard_normal(),
                   "val_loss": None, "val_bpb": None, "lr": 1e-3 * min(1.0, s / 10), "tokens_per_s": 1e4,
                   "ms_per_step": 10.0, "elapsed_s": s * 0.01}
            if s % 20 == 0:
                rec["val_loss"] = 4.0 * np.exp(-s / 30) + 1.6
                rec["val_bpb"] = rec["val_loss"] / np.log(2) / 3.5
            if s % health_every == 0:
                rec["health"] = {"grad_norm": 1.0 / s, "groups": {
                    "transformer.h.*.attn.c_attn": {"grad_norm": 0.5 / s, "weight_norm": 3.0,
                                                    "update_ratio": 1e-3 * (1 + 1 / s)},
                    "transformer.wte": {"grad_norm": 0.2 / s, "weight_norm": 5.0}},
                    "activations": {"h.0": {"mean": 0.0, "std": 1.0, "absmax": 3.0},
                                    "h.0.attn": {"mean": 0.0, "std": 0.1, "absmax": 1.0}}}
            f.write(json.dumps(rec) + "\n")
        f.write('{"step": 61, "train_lo')  # a run killed mid-line


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    _write_metrics(tmp_path / "metrics.jsonl")
    assert cli(["plot", str(tmp_path)]) == 0
    png = tmp_path / "metrics.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000
    assert "wrote" in capsys.readouterr().out


def _png_height(path):
    return int.from_bytes(path.read_bytes()[20:24], "big")  # IHDR: width, then height


def test_plot_without_health_records_and_to_a_chosen_file(tmp_path):
    pytest.importorskip("matplotlib")
    _write_metrics(tmp_path / "m.jsonl", health_every=10 ** 6)
    out = tmp_path / "pic.png"
    assert cli(["plot", str(tmp_path / "m.jsonl"), "--out", str(out), "--smooth", "5", "--dpi", "50"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    # one row of three panels: no empty health panels below them
    assert _png_height(out) < 0.6 * 8.5 * 50
    _write_metrics(tmp_path / "h.jsonl", health_every=5)
    assert cli(["plot", str(tmp_path / "h.jsonl"), "--out", str(out), "--dpi", "50"]) == 0
    assert _png_height(out) > 0.9 * 8.5 * 50


def test_plot_draws_each_optimizers_learning_rate(tmp_path):
    from tinygrad_llm.cli.plot import _lr_series
    recs = [{"step": s, "lr": 1e-3 * s, "lrs": {"Muon": 0.02 * s, "AdamW": 1e-3 * s}} for s in (1, 2)]
    assert _lr_series(recs) == {"Muon": ([1, 2], [0.02, 0.04]), "AdamW": ([1, 2], [1e-3, 2e-3])}
    assert _lr_series([{"step": 1, "lr": 0.5}]) == {"lr": ([1], [0.5])}  # files from before "lrs"
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert cli(["plot", str(tmp_path)]) == 0


def test_plot_counts_a_step_logged_twice_once(tmp_path):
    from tinygrad_llm.cli.plot import read_metrics
    steps = [1, 2, 3, 4, 3, 4, 5]  # killed after logging 4, resumed from the checkpoint at 2
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": float(i)}) + "\n"
                                              for i, s in enumerate(steps)))
    recs = read_metrics(tmp_path / "m.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and recs[2]["train_loss"] == 4.0


def test_plot_explains_a_missing_file(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert cli(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no metrics file") and err.count("\n") == 1


def test_plot_explains_missing_matplotlib(tmp_path, monkeypatch, capsys):
    _write_metrics(tmp_path / "metrics.jsonl")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert cli(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install" in err
    assert not (tmp_path / "metrics.png").exists()


@pytest.mark.slow
def test_plot_of_a_real_training_run(tmp_path, data_dir):
    pytest.importorskip("matplotlib")
    text = (data_dir / "tinyshakespeare.txt").read_text()[:200_000]
    (tmp_path / "input.txt").write_text(text)
    out = tmp_path / "run"
    assert cli(["train", "--data", str(tmp_path / "input.txt"), "--out-dir", str(out), "--tokenizer",
                "char", "--max-iters", "40", "--batch-size", "4", "--block-size", "32", "--n-layer", "2",
                "--n-head", "2", "--n-embd", "32", "--eval-every", "20", "--eval-iters", "2",
                "--health-every", "5", "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("health" in r and r["health"].get("activations") for r in records)
    assert cli(["plot", str(out)]) == 0
    assert (out / "metrics.png").read_bytes()[:8] == PNG_MAGIC
