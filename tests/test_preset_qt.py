"""`train --preset qt-tiny`: the "qt" recipe (GQA, ALiBi, RMSNorm, GELU, WSD with warmup and
cooldown, AdamW beta2 0.95, gradient accumulation to 4,096 tokens a step) scaled to a CPU; flags
still override it, and a shrunk copy of it trains, samples past its block size and resumes."""
import argparse
import json

from tinygrad_llm.cli import sample as sample_cli
from tinygrad_llm.cli import train as train_cli
from tinygrad_llm.models import GPTConfig
from tinygrad_llm.train import lr_schedule


def parse(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def test_the_recipe():
    cfg, kind, vocab = train_cli.build_config(parse(train_cli, ["--preset", "qt-tiny"]))
    model = GPTConfig(vocab_size=vocab, **cfg.model)
    assert (kind, vocab) == ("bpe", 1024)
    assert model.n_kv_head < model.n_head and model.layer_pos == ("alibi",) * model.n_layer
    assert (model.norm, model.mlp, model.bias) == ("rmsnorm", "gelu", False)
    assert (cfg.optimizer, cfg.beta1, cfg.beta2, cfg.grad_clip) == ("adamw", 0.9, 0.95, 1.0)
    assert cfg.schedule == "wsd" and cfg.warmup_iters == 100 and cfg.decay_frac == 0.2
    assert cfg.batch_size * cfg.grad_accum * model.block_size == 4096  # tokens per optimizer step
    lr = lr_schedule(cfg)
    steps = [lr(s) for s in range(cfg.max_iters)]
    assert steps[0] < steps[50] < steps[100] == steps[1199] == 1.0  # warmup, then stable
    assert steps[1201] < 1.0 and steps[-1] < 0.11  # a cooldown over the last 300 steps to 0.1
    cfg, _, _ = train_cli.build_config(parse(train_cli, ["--preset", "qt-tiny", "--pos", "none", "--n-layer", "2"]))
    assert cfg.model["pos"] == "none" and cfg.model["n_layer"] == 2  # flags win


def test_a_shrunk_copy_trains_and_samples_past_its_block(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 60)
    out = tmp_path / "run"
    args = ["--preset", "qt-tiny", "--data", str(text), "--out-dir", str(out), "--tokenizer", "char",
            "--n-layer", "2", "--n-embd", "24", "--n-head", "6", "--block-size", "16", "--batch-size", "2",
            "--grad-accum", "2", "--max-iters", "6", "--warmup-iters", "2", "--eval-every", "0",
            "--eval-iters", "1", "--log-every", "3", "--sample-tokens", "0"]
    assert train_cli.main(parse(train_cli, args)) == 0
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6
    assert sample_cli.main(parse(sample_cli, ["--out-dir", str(out), "--prompt", "First", "--max-new-tokens",
                                              "40", "--temperature", "0", "--block-size", "64"])) == 0
    assert capsys.readouterr().out.count("\n") >= 2
