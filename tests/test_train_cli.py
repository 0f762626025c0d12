"""`python -m tinygrad_llm train | sample` end to end on a small text (the Shakespeare pipeline)."""
import argparse
import json
import subprocess
import sys

import pytest

from tinygrad_llm.cli import sample as sample_cli
from tinygrad_llm.cli import train as train_cli

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


def parse(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.parametrize("tok", ["bpe", "char"])
def test_train_then_sample_then_resume(tmp_path, capsys, tok):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "run"
    common = ["--data", str(text), "--out-dir", str(out), "--tokenizer", tok,
              *(["--vocab-size", "300"] if tok == "bpe" else []), "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
              "--eval-every", "5", "--eval-iters", "2", "--log-every", "5", "--warmup-iters", "2",
              "--sample-tokens", "20"]
    assert train_cli.main(parse(train_cli, common + ["--max-iters", "10"])) == 0
    printed = capsys.readouterr().out
    assert "bits/byte" in printed and "---- sample ----" in printed
    assert (out / "ckpt.safetensors").exists() and (out / "tokenizer.json").exists()
    recs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert recs[-1]["step"] == 10 and recs[-1]["val_bpb"] > 0
    assert sample_cli.main(parse(sample_cli, ["--out-dir", str(out), "--prompt", "First",
                                              "--max-new-tokens", "8", "--temperature", "0"])) == 0
    assert capsys.readouterr().out.startswith("First")
    assert train_cli.main(parse(train_cli, common + ["--max-iters", "12", "--resume"])) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")][-1] == 12


def test_data_lookup_order(tmp_path, monkeypatch):
    f = tmp_path / "x.txt"
    f.write_text("hi")
    assert train_cli.find_text(str(f)) == f
    with pytest.raises(FileNotFoundError, match="no such file"):
        train_cli.find_text(str(tmp_path / "nope.txt"))
    monkeypatch.setenv("TINYGRAD_LLM_DATA", str(f))
    assert train_cli.find_text() == f
    monkeypatch.delenv("TINYGRAD_LLM_DATA")
    monkeypatch.setattr(train_cli, "CACHE_DIR", tmp_path)
    (tmp_path / "tinyshakespeare.txt").write_text("cached")
    assert train_cli.find_text() == tmp_path / "tinyshakespeare.txt"


def test_cuda_preset_is_nanogpts_gpu_recipe():
    args = parse(train_cli, ["--device", "cuda"])
    cfg, kind, _ = train_cli.build_config(args)
    assert kind == "char" and cfg.batch_size == 64 and cfg.max_iters == 5000 and cfg.lr == 1e-3
    assert cfg.model == dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2)


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "tinygrad_llm", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--max-iters" in r.stdout and "--resume" in r.stdout


@pytest.mark.parametrize("shards", ["0", "1"])
def test_bench_times_the_training_step(capsys, shards):
    from tinygrad_llm.cli import bench as bench_cli
    bench_cli.main(parse(bench_cli, ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "8",
                                     "--batch-size", "4", "--steps", "2", "--warmup", "1", "--shards", shards]))
    out = capsys.readouterr().out
    assert "GPT 1x16" in out and "ms/step" in out and "tokens/s" in out


def test_cpu_preset_trains_with_muon():
    cfg, kind, _ = train_cli.build_config(parse(train_cli, []))
    assert kind == "bpe" and cfg.optimizer == "muon" and cfg.max_seconds == 78.0
    cfg, _, _ = train_cli.build_config(parse(train_cli, ["--optimizer", "adamw"]))
    assert cfg.optimizer == "adamw"
