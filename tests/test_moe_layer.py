"""nn.MoE: parity with transformers' Mixtral, Qwen3-MoE and DeepSeek-V3 routers and blocks on random
inputs, the balancing loss against transformers' load_balancing_loss_func, bad sizes and NaN
routers refused by name, the bias update rule, and the routing statistics."""
import math

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor
from tinygrad_llm.nn.moe import MoE, update_router_biases

C, I, E = 16, 6, 8


def _torch():
    pytest.importorskip("transformers", reason="parity with transformers' MoE blocks needs it")
    import torch
    torch.manual_seed(0)
    return torch


def _copy_from_hf(moe, block, shared=False):
    """HF's stacked expert tensors copy straight into ours: the names are the same."""
    moe.gate.weight.data[...] = block.gate.weight.detach().double().numpy()
    moe.experts.gate_up_proj.data[...] = block.experts.gate_up_proj.detach().double().numpy()
    moe.experts.down_proj.data[...] = block.experts.down_proj.detach().double().numpy()
    if hasattr(block.gate, "e_score_correction_bias"):
        moe.gate.e_score_correction_bias.data[...] = block.gate.e_score_correction_bias.double().numpy()
    if shared:
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(moe.shared_experts, name).weight.data[...] = \
                getattr(block.shared_experts, name).weight.detach().double().numpy()


def _compare(torch, block, moe, x, shared=False):
    block = block.double().eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    _copy_from_hf(moe, block, shared)
    hx = torch.tensor(x)
    _, w_hf, idx_hf = block.gate(hx.reshape(-1, C))
    logits, idx, w = moe.gate(Tensor(x.reshape(-1, C)))
    # the same experts (HF leaves DeepSeek's unsorted: compare as sets, weights with them)
    order_hf, order = np.argsort(idx_hf.numpy(), axis=-1), np.argsort(idx, axis=-1)
    np.testing.assert_array_equal(np.take_along_axis(idx_hf.numpy(), order_hf, -1), np.take_along_axis(idx, order, -1))
    # transformers' routers compute their scores in float32 even in a float64 model
    np.testing.assert_allclose(np.take_along_axis(w.numpy(), order, -1),
                               np.take_along_axis(w_hf.detach().numpy(), order_hf, -1), rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        want = block(hx).numpy()
    np.testing.assert_allclose(moe(Tensor(x)).numpy(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.reference
def test_mixtral_block_parity():
    torch = _torch()
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    cfg = MixtralConfig(hidden_size=C, intermediate_size=I, num_local_experts=E, num_experts_per_tok=2)
    moe = MoE(C, E, 2, I, router="softmax", norm_topk_prob=True, dtype=np.float64)
    _compare(torch, MixtralSparseMoeBlock(cfg), moe, np.random.default_rng(0).standard_normal((2, 5, C)))


@pytest.mark.reference
@pytest.mark.parametrize("norm", [True, False])
def test_qwen3_moe_block_parity(norm):
    torch = _torch()
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
    cfg = Qwen3MoeConfig(hidden_size=C, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=3,
                         norm_topk_prob=norm)
    moe = MoE(C, E, 3, I, router="softmax", norm_topk_prob=norm, dtype=np.float64)
    _compare(torch, Qwen3MoeSparseMoeBlock(cfg), moe, np.random.default_rng(1).standard_normal((3, 4, C)))


@pytest.mark.reference
@pytest.mark.parametrize("n_group, topk_group, norm", [(4, 2, True), (1, 1, True), (2, 1, False)])
def test_deepseek_v3_block_parity(n_group, topk_group, norm):
    torch = _torch()
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    cfg = DeepseekV3Config(hidden_size=C, moe_intermediate_size=I, n_routed_experts=E, num_experts_per_tok=2,
                           n_group=n_group, topk_group=topk_group, routed_scaling_factor=2.5,
                           n_shared_experts=2, norm_topk_prob=norm)
    block = DeepseekV3MoE(cfg)
    block.gate.e_score_correction_bias.normal_(std=0.1)  # the bias moves the choice, not the weights
    moe = MoE(C, E, 2, I, n_shared=2, router="sigmoid", norm_topk_prob=norm, n_group=n_group,
              topk_group=topk_group, routed_scaling_factor=2.5, dtype=np.float64)
    _compare(torch, block, moe, np.random.default_rng(2).standard_normal((2, 6, C)), shared=True)


@pytest.mark.reference
def test_load_balance_loss_matches_transformers_on_one_layer():
    torch = _torch()
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    moe = MoE(C, E, 2, I, aux_loss_coef=1.0, dtype=np.float64)
    x = np.random.default_rng(3).standard_normal((4, 7, C))
    losses = []
    moe(Tensor(x), losses)
    logits = x.reshape(-1, C) @ moe.gate.weight.numpy().T
    want = load_balancing_loss_func((torch.tensor(logits),), E, 2).item()
    assert losses[0].item() == pytest.approx(want, rel=1e-10)


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(n_experts=4, top_k=5), r"top_k=5 is larger than the number of experts n_experts=4"),
    (dict(n_experts=6, top_k=2, n_group=4), r"n_experts=6 is not divisible by n_group=4"),
    (dict(n_experts=8, top_k=2, n_group=2, topk_group=3), r"topk_group=3 is larger than n_group=2"),
    (dict(n_experts=8, top_k=5, n_group=4, topk_group=2), r"top_k=5 is larger than the 4 experts"),
    (dict(n_experts=8, top_k=2, n_group=8), r"n_group=8 leaves 1 expert per group"),
    (dict(n_experts=0, top_k=1), r"n_experts must be a positive integer, got 0"),
    (dict(n_experts=4, top_k=2, router="relu"), r"router='relu'"),
    (dict(n_experts=4, top_k=2, bias_update_rate=0.1), r"only router='sigmoid' has"),
    (dict(n_experts=4, top_k=2, aux_loss_coef=float("nan")), r"aux_loss_coef must be a finite number"),
])
def test_bad_sizes_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoE(C, hidden=I, **kwargs)


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_a_nan_router_is_an_error_naming_the_token(router):
    moe = MoE(C, 4, 2, I, router=router)
    x = np.random.default_rng(0).standard_normal((5, C)).astype(np.float32)
    x[3] = np.nan
    with pytest.raises(ValueError, match=r"scores of token 3 are all NaN \(of 4 experts; 1 of 5 tokens"):
        moe(Tensor(x))


# --- balancing outside the gradient: DeepSeek's bias update ----------------------------------------
def test_bias_update_moves_overloaded_experts_down_and_steers_the_choice():
    tl.manual_seed(0)
    moe = MoE(C, 4, 1, I, router="sigmoid", bias_update_rate=0.05)
    moe.gate.weight.data[...] = 0
    moe.gate.weight.data[0] = 1.0  # expert 0 wins every token whose features sum above 0
    x = np.abs(np.random.default_rng(0).standard_normal((32, C))).astype(np.float32)
    moe(Tensor(x))
    load = moe._bias_load.copy()
    assert load[0] == 32 and load[1:].sum() == 0
    step = update_router_biases(moe)
    assert step == 1
    bias = moe.gate.e_score_correction_bias.numpy()
    np.testing.assert_allclose(bias, [-0.05, 0.05, 0.05, 0.05])
    w_before = moe.gate(Tensor(x))[2].numpy()
    # the bias never enters the gate weights: with one expert chosen and renormalised, w = 1
    np.testing.assert_allclose(w_before, 1.0)
    for _ in range(60):  # until the others' biases overtake expert 0's score margin
        moe(Tensor(x))
        moe.update_bias()
    assert moe._bias_load.sum() == 0
    moe(Tensor(x))
    assert moe._bias_load[0] < 32  # the load has spread


def test_bias_update_sums_the_load_over_ranks_first():
    moe = MoE(C, 4, 1, I, router="sigmoid", bias_update_rate=0.1)
    moe._bias_load[:] = [3, 0, 0, 1]
    seen = []

    def all_reduce(buf):  # another rank's load [0, 4, 0, 0] added in place
        seen.append(buf.dtype)
        buf += np.array([0, 4, 0, 0])
    update_router_biases(moe, all_reduce=all_reduce)
    assert seen == [np.float64]
    np.testing.assert_allclose(moe.gate.e_score_correction_bias.numpy(), [-0.1, -0.1, 0.1, 0.1])


def test_routing_stats_count_every_choice_and_bound_the_entropy():
    moe = MoE(C, E, 2, I, n_shared=1)
    x = Tensor(np.random.default_rng(0).standard_normal((3, 10, C)).astype(np.float32))
    moe(x)
    moe(x)
    with tl.no_grad():
        moe(x)  # not a training forward: not counted
    moe.eval()
    moe(x)
    stats = moe.take_routing_stats()
    assert stats["tokens"] == 60 and sum(stats["load"]) == 60 * 2
    assert sum(stats["load_share"]) == pytest.approx(1.0)
    assert 0 < stats["entropy"] <= math.log(E) + 1e-6 and stats["max_entropy"] == pytest.approx(math.log(E))
    assert moe.take_routing_stats() is None  # taken


def test_balancing_losses_go_into_the_list_only_when_training():
    moe = MoE(C, 4, 2, I, aux_loss_coef=0.01, z_loss_coef=0.001)
    x = Tensor(np.random.default_rng(0).standard_normal((6, C)).astype(np.float32))
    losses = []
    moe(x, losses)
    assert len(losses) == 1 and losses[0].requires_grad and losses[0].item() > 0
    moe.eval()
    moe(x, losses)
    assert len(losses) == 1
    assert MoE(C, 4, 2, I)(x, losses) is not None and len(losses) == 1  # coefficients 0: nothing added


def test_hf_names_and_stacked_shapes():
    moe = MoE(C, E, 2, I, n_shared=1, router="sigmoid")
    shapes = {k: v.shape for k, v in moe.state_dict().items()}
    assert shapes == {"gate.weight": (E, C), "gate.e_score_correction_bias": (E,),
                      "experts.down_proj": (E, C, I), "experts.gate_up_proj": (E, 2 * I, C),
                      "shared_experts.gate_proj.weight": (I, C), "shared_experts.up_proj.weight": (I, C),
                      "shared_experts.down_proj.weight": (C, I)}
    assert "gate.e_score_correction_bias" not in dict(moe.named_parameters())  # a buffer, not trained
