"""The training loop: exact resume, Ctrl-C, non-finite loss, metrics.jsonl, schedules, the health hook."""
import json
import math

import numpy as np
import pytest

from tinygrad_llm import optim
from tinygrad_llm.checkpoint import load_checkpoint
from tinygrad_llm.runs import RunError
from tinygrad_llm.train import TrainConfig, Trainer, lr_factor
from train_helpers import interrupt_during_step, make_data

MODEL = dict(block_size=8, n_layer=1, n_head=2, n_embd=16)


def cfg(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), model=MODEL, batch_size=4, max_iters=8, warmup_iters=2,
                eval_every=4, eval_iters=2, log_every=1, seed=3, final_eval="sample")
    base.update(kw)
    return TrainConfig(**base)


def losses(out_dir):
    return {r["step"]: r["train_loss"] for r in map(json.loads, open(f"{out_dir}/metrics.jsonl"))}


@pytest.mark.parametrize("opt", ["adamw", "muon"])
def test_resume_is_bit_identical(tmp_path, opt):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    full = Trainer(cfg(a_dir, optimizer=opt, model={**MODEL, "dropout": 0.1}), data=make_data(), log=lambda m: None)
    assert full.run()["status"] == "done"
    first = Trainer(cfg(b_dir, optimizer=opt, model={**MODEL, "dropout": 0.1}), data=make_data(), log=lambda m: None)
    interrupt_during_step(first, 5)  # Ctrl-C in the middle of step 6: it finishes, then the run stops
    assert first.run()["status"] == "interrupted"
    assert load_checkpoint(b_dir / "ckpt.safetensors")["step"] == 6
    resumed = Trainer(cfg(b_dir, optimizer=opt, model={**MODEL, "dropout": 0.1}), data=make_data(sampler_seed=9),  # state comes from the checkpoint
                      log=lambda m: None)
    summary = resumed.run(resume=True)
    assert summary["status"] == "done" and summary["step"] == 8
    la, lb = losses(a_dir), losses(b_dir)
    assert sorted(lb) == list(range(1, 9))  # the metrics file continues where it stopped
    for s in range(7, 9):
        assert la[s] == lb[s], (s, la[s], lb[s])  # bit-identical, not merely close
    np.testing.assert_array_equal(full.model.state_dict()["transformer.h.0.mlp.c_fc.weight"],
                                  resumed.model.state_dict()["transformer.h.0.mlp.c_fc.weight"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    t = Trainer(cfg(tmp_path, eval_every=0, checkpoint_every=2), data=make_data())
    step = t.train_step

    def poison():
        if t.step == 3:
            t.model.transformer.ln_f.weight.data[...] = np.nan
        return step()
    t.train_step = poison
    summary = t.run()
    assert summary["status"] == "diverged" and summary["step"] == 3
    assert "diverged" in capsys.readouterr().out
    ck = load_checkpoint(tmp_path / "ckpt.safetensors")
    assert ck["step"] == 2 and all(np.isfinite(v).all() for v in ck["model"].values())


def test_metrics_lines_and_bits_per_byte(tmp_path):
    t = Trainer(cfg(tmp_path, max_iters=4, eval_every=2, log_every=2), data=make_data(), log=lambda m: None)
    summary = t.run()
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in recs] == [2, 4]
    for r in recs:
        for key in ("step", "train_loss", "val_loss", "val_bpb", "lr", "tokens_per_s", "elapsed_s"):
            assert key in r
        # 3000 ids from 6000 bytes: 2 bytes per token
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / (2 * math.log(2)))
    assert summary["val_bpb"] == recs[-1]["val_bpb"]


def test_full_final_eval_counts_exact_bytes(tmp_path):
    t = Trainer(cfg(tmp_path, max_iters=2, final_eval="full"), data=make_data(),
                decode_bytes=lambda ids: b"xyz" * len(ids), log=lambda m: None)
    s = t.run()
    assert s["val_bpb"] == pytest.approx(s["val_loss"] / (3 * math.log(2)))


@pytest.mark.parametrize("shards", [1, 2])
def test_health_hook_merges_into_metrics(tmp_path, shards):
    # with 2 shards the forward runs on two threads at once, each entering the block scopes
    pytest.importorskip("tinygrad_llm.study.health")
    t = Trainer(cfg(tmp_path, max_iters=6, health_every=1, log_every=1, eval_every=0, shards=shards),
                data=make_data(), log=lambda m: None)
    t.run()
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    with_health = [r["health"] for r in recs if "health" in r]
    assert len(with_health) >= 5 and not any("error" in h for h in with_health)
    for h in with_health[1:]:  # from the second on, each reports the forward after the last call
        assert set(h["activations"]) == {"h.0", "h.0.attn", "h.0.mlp", "h.0.ln_1", "h.0.ln_2"}
        assert all(math.isfinite(a["std"]) and a["std"] > 0 for a in h["activations"].values())


def test_grad_accum_matches_one_big_batch(tmp_path):
    # two micro-batches of 4 == one batch of 8 drawn from the same sampler stream
    a = Trainer(cfg(tmp_path / "a", batch_size=4, grad_accum=2, max_iters=1, eval_every=0), data=make_data(),
                log=lambda m: None)
    b = Trainer(cfg(tmp_path / "b", batch_size=8, grad_accum=1, max_iters=1, eval_every=0), data=make_data(),
                log=lambda m: None)
    xs = [a.data.get_batch("train", 4, 8) for _ in range(2)]
    b_x = (np.concatenate([x for x, _ in xs]), np.concatenate([y for _, y in xs]))
    a.data.get_batch = lambda split, B, T, rng=None, _it=iter(xs): next(_it)
    b.data.get_batch = lambda split, B, T, rng=None: b_x
    la, _ = a.train_step()
    lb, _ = b.train_step()
    assert la == pytest.approx(lb, rel=1e-6)
    wa = a.model.state_dict()["transformer.h.0.attn.c_attn.weight"]
    wb = b.model.state_dict()["transformer.h.0.attn.c_attn.weight"]
    np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-6)


def test_schedules():
    # the trainer's schedules are optim/schedules.py's: warmup (s + 1) / (w + 1) as nanoGPT
    c = TrainConfig(max_iters=100, warmup_iters=10, min_lr_ratio=0.1)
    cosine = optim.warmup_cosine(10, 100, floor=0.1)
    assert [lr_factor(s, c) for s in range(0, 120, 7)] == [cosine(s) for s in range(0, 120, 7)]
    assert lr_factor(0, c) == pytest.approx(1 / 11) and lr_factor(9, c) == pytest.approx(10 / 11)
    assert lr_factor(10, c) == pytest.approx(1.0) and lr_factor(100, c) == pytest.approx(0.1)
    assert lr_factor(55, c) == pytest.approx(0.55)  # cosine midpoint
    w = TrainConfig(max_iters=100, warmup_iters=10, schedule="wsd", decay_frac=0.2, min_lr_ratio=0.0)
    assert lr_factor(79, w) == 1.0 and lr_factor(100, w) == 0.0 and lr_factor(90, w) == pytest.approx(0.5)
    k = TrainConfig(max_iters=100, warmup_iters=10, schedule="constant")
    assert lr_factor(4, k) == pytest.approx(5 / 11) and lr_factor(10, k) == lr_factor(99, k) == 1.0
    short = TrainConfig(max_iters=5, warmup_iters=10, schedule="wsd")  # shorter than its warmup
    assert [lr_factor(s, short) for s in range(5)] == pytest.approx([(s + 1) / 11 for s in range(5)])
    with pytest.raises(ValueError, match="optimizer='sgdx'"):
        Trainer(TrainConfig(optimizer="sgdx"), data=make_data())


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(RunError, match="no checkpoint"):
        Trainer(cfg(tmp_path), data=make_data(), log=lambda m: None).run(resume=True)


def test_time_budget_stops_the_run_and_anneals(tmp_path):
    t = Trainer(cfg(tmp_path, max_iters=10 ** 6, max_seconds=0.6, warmup_iters=1, log_every=1, eval_every=0),
                data=make_data(), log=lambda m: None)
    s = t.run()
    assert s["status"] == "done" and 1 < s["step"] < 10 ** 6 and s["val_bpb"] is not None
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert recs[-1]["lr"] < 0.2 * t.cfg.lr  # the schedule reached (nearly) its minimum by the end
    assert recs[len(recs) // 4]["lr"] > 0.5 * t.cfg.lr
    c = TrainConfig(max_iters=100, warmup_iters=10, min_lr_ratio=0.1, max_seconds=10)
    assert lr_factor(20, c, time_frac=1.0) == pytest.approx(0.1)
    assert lr_factor(20, c, time_frac=0.0) == lr_factor(20, c)
