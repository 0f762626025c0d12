"""GPTConfig's MoE options: the default model unchanged, the first layers dense, bad sizes and NaN
routers refused by GPTConfig's own field names, the balancing loss in the training loss only,
the sharded step, DeepSeek's bias update in a training loop, checkpoints, and a stand-in GPU on
which nothing falls back to NumPy."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor, backend, cuda, nn, optim, parallel
from tinygrad_llm.cuda import syncs
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.models.hf import to_hf_state

V = 29


def tiny(dtype=None, seed=0, **kw):
    tl.manual_seed(seed)
    base = dict(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**base, **kw}), dtype=dtype)


def batch(B=3, T=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def test_the_default_model_is_gpt2_as_before():
    cfg = GPTConfig()
    assert cfg.moe_experts == 0 and cfg.attn == "mha"
    model = tiny()
    assert not nn.moe_layers(model) and not any(isinstance(m, nn.MLA) for m in model.modules())
    gpt2_block = {f"{m}.{p}" for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
                  for p in ("weight", "bias")}
    want = {f"transformer.h.{i}.{n}" for i in range(2) for n in gpt2_block}
    want |= {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
             "transformer.ln_f.bias", "lm_head.weight"}
    assert set(model.state_dict()) == want
    assert len(to_hf_state(model.state_dict())) == len(want) - 1  # lm_head is tied to wte
    assert model.config.num_parameters() == model.num_parameters() == model.config.num_parameters(active=True)


def test_first_layers_stay_dense_and_counts_match_the_built_model():
    model = tiny(n_layer=3, moe_experts=4, moe_top_k=2, moe_shared=1, moe_first_dense=1, mlp="swiglu")
    kinds = [type(b.mlp).__name__ for b in model.transformer.h]
    assert kinds == ["MLP", "MoE", "MoE"]
    cfg = model.config
    assert cfg.moe_hidden == cfg.mlp_hidden // 3  # active expert parameters match the dense MLP's
    assert cfg.num_parameters() == model.num_parameters()
    active = cfg.num_parameters(active=True)
    per_expert = 3 * cfg.moe_hidden * cfg.n_embd
    assert cfg.num_parameters() - active == 2 * (4 - 2) * per_expert  # two MoE layers, two idle experts each
    assert "transformer.h.1.mlp.experts.gate_up_proj" in model.state_dict()


@pytest.mark.parametrize("kwargs, message", [
    (dict(moe_experts=4, moe_top_k=5), r"GPTConfig: moe_top_k=5 is larger than the number of experts moe_experts=4"),
    (dict(moe_experts=6, moe_n_group=4), r"GPTConfig: moe_experts=6 is not divisible by moe_n_group=4"),
    (dict(moe_experts=8, moe_n_group=2, moe_topk_group=3), r"moe_topk_group=3 is larger than moe_n_group=2"),
    (dict(moe_experts=4, moe_first_dense=3), r"moe_first_dense=3 must be an integer in \[0, n_layer=2\]"),
    (dict(moe_experts=4, moe_bias_update_rate=0.1), r"only moe_router='sigmoid' has"),
    (dict(moe_experts=4, moe_aux_loss_coef=-1.0), r"moe_aux_loss_coef must be a finite number >= 0"),
    (dict(moe_experts=-2), r"moe_experts must be an integer >= 0, got -2"),
])
def test_bad_moe_configs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16, **kwargs)


def test_a_nan_router_at_run_time_is_named():
    model = tiny(moe_experts=4)
    model.transformer.h[1].mlp.gate.weight.data[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"MoE router: the scores of token 0 are 1 NaN, 0 inf \(of 4 experts"):
        model(*batch())


def test_balancing_loss_is_in_the_training_loss_only():
    x, y = batch()
    model = tiny(np.float64, moe_experts=4, moe_aux_loss_coef=0.5, moe_z_loss_coef=0.1)
    _, train_loss = model(x, y)
    with model.evaluating():
        _, ce = model(x, y)
    plain = tiny(np.float64, moe_experts=4, moe_aux_loss_coef=0.0)
    _, ce_plain = plain(x, y)
    assert ce.item() == pytest.approx(ce_plain.item(), rel=1e-12)  # the same weights: same seed
    terms = []
    model.hidden_states(x, losses=terms)  # each MoE layer's 0.5 aux + 0.1 z
    assert len(terms) == 2 and all(t.item() > 0 for t in terms)
    assert train_loss.item() == pytest.approx(ce.item() + sum(t.item() for t in terms) / 2, rel=1e-12)
    train_loss.backward()
    gate = model.transformer.h[0].mlp.gate.weight
    assert gate.grad is not None and np.abs(gate.grad.numpy()).sum() > 0


def test_sharded_step_equals_one_backward_without_the_balancing_loss():
    x, y = batch(B=4)
    grads = []
    for shards in (1, 2):
        model = tiny(np.float64, moe_experts=4, moe_top_k=2, moe_shared=1, moe_aux_loss_coef=0.0)
        loss = parallel.loss_backward(lambda a, b: model(a, b)[1], x, y, shards=shards)
        grads.append((loss, [p.grad.numpy() for p in model.parameters()]))
        stats = model.transformer.h[0].mlp.take_routing_stats()
        assert stats["tokens"] == x.size and sum(stats["load"]) == 2 * x.size  # every shard counted
    (l1, g1), (l2, g2) = grads
    assert l2 == pytest.approx(l1, rel=1e-12)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_bias_update_after_each_step_evens_the_load():
    model = tiny(n_layer=1, moe_experts=4, moe_top_k=1, moe_router="sigmoid", moe_bias_update_rate=0.02,
                 moe_aux_loss_coef=0.0)
    moe = model.transformer.h[0].mlp
    moe.gate.weight.data[...] = np.random.default_rng(0).standard_normal((4, 16)) * 0.3
    moe.gate.e_score_correction_bias.data[...] = [0, 0, 1.0, 0]  # expert 2 starts with every token
    opt = optim.SGD(model.parameters(), lr=0.0)  # the weights stay: only the rule moves the biases
    x, y = batch(B=8)
    loads = []
    for _ in range(40):
        model(x, y)[1].backward()
        opt.step()
        opt.zero_grad()
        loads.append(moe._bias_load.copy())
        assert nn.update_router_biases(model) == 1
    assert loads[0].tolist() == [0, 0, 64, 0]
    assert loads[-1].tolist() == [16, 16, 16, 16]


def test_checkpoint_keeps_the_choice_bias(tmp_path):
    from tinygrad_llm.checkpoint import load_checkpoint, save_checkpoint
    model = tiny(moe_experts=4, moe_router="sigmoid", moe_bias_update_rate=0.1)
    model.transformer.h[1].mlp.gate.e_score_correction_bias.data[...] = [0.1, -0.2, 0.3, 0.0]
    save_checkpoint(tmp_path / "ck.safetensors", model.state_dict(), None, step=1, config=model.config.to_dict())
    ck = load_checkpoint(tmp_path / "ck.safetensors")
    other = GPT(GPTConfig.from_dict(ck["config"]))
    other.load_state_dict(ck["model"])
    np.testing.assert_array_equal(other.transformer.h[1].mlp.gate.e_score_correction_bias.numpy(),
                                  np.float32([0.1, -0.2, 0.3, 0.0]))


def test_save_pretrained_refuses_what_gpt2_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match=r"cannot express moe_experts=4, attn='mha'"):
        tiny(moe_experts=4).save_pretrained(tmp_path)


# --- the same layers on a stand-in GPU ----------------------------------------------------------------
@pytest.fixture
def fake_gpu(monkeypatch):
    from fake_cupy import FakeArray, FakeCupy
    fake = FakeCupy()
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(backend, "cupy", lambda: fake)
    monkeypatch.setattr(backend, "_rng", dict(backend._rng))
    was = cuda.enabled()
    cuda.set_enabled(False)
    yield fake, FakeArray
    cuda.set_enabled(was)
    syncs._take()


def test_moe_and_mla_stay_on_the_device_with_one_sync_per_moe_layer(fake_gpu):
    fake, FakeArray = fake_gpu
    model = tiny(n_layer=3, moe_experts=4, moe_shared=1, moe_first_dense=1, pos="rope", attn="mla",
                 moe_router="sigmoid", moe_n_group=2, moe_bias_update_rate=0.01, moe_z_loss_coef=0.01)
    model.to("cuda")
    x, y = batch()
    with syncs.counting(fake) as count, syncs.deferred_checks():
        _, loss = model(Tensor(fake.asarray(x)), Tensor(fake.asarray(y)))
        loss.backward()
    # the GEMM sizes (tokens per expert) are read to the host once per MoE layer, nothing else
    assert count.total == 2, count.lines()
    assert isinstance(loss.data, FakeArray)
    for name, p in model.named_parameters():
        assert isinstance(p.grad.data, FakeArray), name
    assert nn.update_router_biases(model) == 2
    assert isinstance(model.transformer.h[1].mlp.gate.e_score_correction_bias.data, FakeArray)
    syncs.flush()
