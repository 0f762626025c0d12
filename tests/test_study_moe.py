"""The study tools on mixture-of-experts and latent-attention models: the tracer names their nodes,
the health records carry each MoE layer's load and router entropy (through the training loop),
the plot draws them, and the walkthrough gradchecks a 1-layer MoE GPT."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import optim
from tinygrad_llm.gradcheck import GradcheckError
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.study import gradient_health, scope_blocks
from tinygrad_llm.train import TrainConfig, Trainer
from train_helpers import make_data

ROOT = Path(__file__).resolve().parents[1]
MOE = dict(moe_experts=4, moe_top_k=2, moe_shared=1, moe_first_dense=1)


def tiny(**kw):
    tl.manual_seed(0)
    return GPT(GPTConfig(vocab_size=29, block_size=8, n_layer=2, n_head=2, n_embd=16, **kw))


def batch():
    rng = np.random.default_rng(0)
    return rng.integers(0, 29, (3, 8)), rng.integers(0, 29, (3, 8))


def test_the_tracer_names_the_router_experts_and_latent_projections():
    model = tiny(pos="rope", attn="mla", **MOE)
    scope_blocks(model)
    _, loss = model(*batch())
    with tl.trace_backward() as t:
        loss.backward()
    seen = {(r["op"], r["scope"]) for r in t.records}
    for op, scope in [("TopKGate", "h.1.mlp.gate"), ("Linear", "h.1.mlp.gate"), ("Dispatch", "h.1.mlp.experts"),
                      ("ExpertLinear", "h.1.mlp.experts"), ("Combine", "h.1.mlp.experts"),
                      ("LoadBalanceLoss", "h.1.mlp"), ("Linear", "h.1.mlp.shared_experts"),
                      ("Linear", "h.0.attn.kv_b_proj"), ("RMSNorm", "h.0.attn.kv_a_layernorm"),
                      ("ScaledDotProductAttention", "h.0.attn"), ("Expand", "h.0.attn")]:
        assert (op, scope) in seen, (op, scope)
    combine = next(r for r in t.records if r["op"] == "Combine")
    assert combine["formula"].startswith("dw[t, j] = dy[t] . ys[inv[t k + j]]")


def test_health_reports_each_moe_layers_load_and_entropy():
    model = tiny(**MOE)
    x, y = batch()
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        model(x, y)[1].backward()
        opt.step()
    health = gradient_health(model, opt)
    routing = health["routing"]
    assert set(routing) == {"h.1.mlp"}  # layer 0 is dense
    r = routing["h.1.mlp"]
    assert r["tokens"] == 2 * x.size and sum(r["load"]) == 2 * 2 * x.size
    assert 0 < r["entropy"] <= r["max_entropy"] == pytest.approx(math.log(4))
    json.dumps(health)  # JSON-ready
    assert "routing" not in gradient_health(model, opt)  # nothing routed since the last call


def test_training_writes_routing_records_and_the_plot_draws_them(tmp_path, shards=2):
    # two shards: the forward runs on two threads at once, both counting into the same layer
    cfg = TrainConfig(out_dir=str(tmp_path), model=dict(block_size=8, n_layer=2, n_head=2, n_embd=16, **MOE,
                                                        moe_router="sigmoid", moe_bias_update_rate=0.01),
                      batch_size=4, max_iters=4, warmup_iters=1, eval_every=0, log_every=1, seed=3,
                      health_every=2, shards=shards)
    Trainer(cfg, data=make_data(), log=lambda m: None).run()
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    routed = [r["health"]["routing"]["h.1.mlp"] for r in recs if "routing" in r.get("health", {})]
    assert len(routed) == 2
    assert routed[-1]["tokens"] == 2 * 4 * 8  # two steps of 4 x 8 tokens since the previous record
    pytest.importorskip("matplotlib")
    from tinygrad_llm.__main__ import main as cli
    assert cli(["plot", str(tmp_path), "--dpi", "40"]) == 0
    height = int.from_bytes((tmp_path / "metrics.png").read_bytes()[20:24], "big")
    assert height > 0.9 * 12.5 * 40  # the third row: load per expert, imbalance, entropy


def _walkthrough():
    spec = importlib.util.spec_from_file_location("backward_walkthrough", ROOT / "examples" / "backward_walkthrough.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_the_walkthrough_gradchecks_a_moe_and_mla_gpt(tmp_path, capsys):
    walk = _walkthrough()
    assert walk.main(["--moe", "--mla", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    model, _, _ = walk.build(moe=True, mla=True)
    for name, _ in model.named_parameters():
        assert f"ok  {name}" in out
    for op in ("TopKGate", "Dispatch", "ExpertLinear", "Combine", "LoadBalanceLoss", "RouterZLoss"):
        assert op in out
    assert "docs/backward.md#combine" in out


@pytest.mark.parametrize("op", ["Combine", "Dispatch", "TopKGate", "LoadBalanceLoss"])
def test_the_walkthrough_check_catches_a_wrong_moe_backward(monkeypatch, op):
    walk = _walkthrough()
    from tinygrad_llm.ops import moe
    cls = getattr(moe, op)
    right = cls.backward

    def wrong(ctx, dy):
        grads = right(ctx, dy)
        return tuple(None if g is None else g * 1.01 for g in grads) if isinstance(grads, tuple) else grads * 1.01

    monkeypatch.setattr(cls, "backward", staticmethod(wrong))
    model, idx, targets = walk.build(moe=True)
    with pytest.raises(GradcheckError):
        walk.check_every_parameter(model, idx, targets)


def test_the_moe_benchmark_runs(capsys):
    spec = importlib.util.spec_from_file_location("moe_cpu", ROOT / "benchmarks" / "moe_cpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--repeat", "1", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "target: MoE 8e top2 / dense <= 1.5 -> plain" in out and "sharded" in out
    assert "backward  ExpertLinear" in out
