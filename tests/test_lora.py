"""LoRA: the op gradchecked in float64 on hypothesis shapes, apply_lora on a tiny GPT (output
unchanged at step 0, gradients only in A and B, optimizer state only for them), merge/unmerge,
and adapters saved and loaded on their own."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from opcheck import SETTINGS, check, seeds, values

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor, nn, optim
from tinygrad_llm.finetune.adapters import load_adapters, save_adapters
from tinygrad_llm.models import GPT, GPTConfig


def lora_ref(x, w, a, b, bias=None, s=1.0):
    y = x @ w.T + s * (x @ a.T) @ b.T
    return y if bias is None else y + bias


@SETTINGS
@given(lead=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), n_in=st.integers(1, 4),
       n_out=st.integers(1, 4), rank=st.integers(1, 3), bias=st.booleans(), seed=seeds,
       scale=st.sampled_from([0.5, 2.0]),
       grad=st.sampled_from([(True, True, True, True), (True, False, True, True), (False, False, True, True),
                             (False, False, False, True), (True, True, False, False)]))
def test_lora_linear_gradcheck(device, lead, n_in, n_out, rank, bias, seed, scale, grad):
    x, w = values(lead + (n_in,), seed), values((n_out, n_in), seed + 1)
    a, b, bb = values((rank, n_in), seed + 2), values((n_out, rank), seed + 3), values((n_out,), seed + 4)
    if bias:
        check(lambda x, w, a, b, bb: F.lora_linear(x, w, a, b, scale, bb),
              lambda x, w, a, b, bb: lora_ref(x, w, a, b, bb, scale), [x, w, a, b, bb], device,
              grad=list(grad) + [True])
    else:
        check(lambda x, w, a, b: F.lora_linear(x, w, a, b, scale),
              lambda x, w, a, b: lora_ref(x, w, a, b, None, scale), [x, w, a, b], device, grad=list(grad))


def test_lora_linear_shape_errors():
    x, w = Tensor.zeros(2, 3), Tensor.zeros(4, 3)
    with pytest.raises(ValueError, match=r"lora_linear: .*A \(2, 5\)"):
        F.lora_linear(x, w, Tensor.zeros(2, 5), Tensor.zeros(4, 2), 1.0)
    with pytest.raises(ValueError, match=r"lora_linear: bias of shape \(3,\)"):
        F.lora_linear(x, w, Tensor.zeros(2, 3), Tensor.zeros(4, 2), 1.0, Tensor.zeros(3))


def tiny_gpt(seed=0, **kw):
    tl.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=29, block_size=12, n_layer=2, n_head=2, n_embd=16, **kw))


def batch(seed=1, B=3, T=10):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 29, (B, T)), rng.integers(0, 29, (B, T))


def test_step_zero_unchanged_and_only_adapters_get_gradients():
    model = tiny_gpt()
    idx, tgt = batch()
    before, _ = model(idx)
    replaced = nn.apply_lora(model, rank=4, alpha=8, targets=("c_attn", "c_proj", "c_fc"))
    assert len(replaced) == 2 * 4  # per block: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    after, loss = model(idx, tgt)
    np.testing.assert_array_equal(after.numpy(), before.numpy())  # B = 0: exactly the same
    loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    lora = {n for n, _ in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert got == lora and len(lora) == 16
    # B = 0 makes dA = s (dy B)^T x zero at step 0; dB = s dy^T (x A^T) is not
    for n, p in model.named_parameters():
        if n.endswith("lora_B"):
            assert np.abs(p.grad.numpy()).max() > 0
        if n.endswith("lora_A"):
            np.testing.assert_array_equal(p.grad.numpy(), 0.0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_only_b_gets_a_gradient_on_the_first_step_but_weight_decay_moves_a(weight_decay):
    """docs/backward.md#loralinear: at step 0 dA = 0, so A moves only through decoupled decay."""
    model = tiny_gpt()
    nn.apply_lora(model, rank=2, alpha=4, targets=("c_attn",))
    layers = [layer for _, layer in nn.lora_layers(model)]
    A0 = [layer.lora_A.numpy().copy() for layer in layers]
    opt = optim.AdamW(nn.trainable_parameters(model), lr=1e-2, weight_decay=weight_decay)
    idx, tgt = batch()
    model(idx, tgt)[1].backward()
    opt.step()
    for layer, a0 in zip(layers, A0):
        np.testing.assert_array_equal(layer.lora_A.grad.numpy(), 0.0)
        np.testing.assert_allclose(layer.lora_A.numpy(), a0 * np.float32(1 - 1e-2 * weight_decay), rtol=1e-6)
        assert np.abs(layer.lora_B.numpy()).max() > 0  # B left zero


def test_optimizer_state_only_for_adapters_and_training_moves_only_them():
    model = tiny_gpt()
    nn.apply_lora(model, rank=2, alpha=4)
    frozen = {n: p.numpy().copy() for n, p in model.named_parameters() if not p.requires_grad}
    params = nn.trainable_parameters(model)
    opt = optim.AdamW(params, lr=1e-2)
    idx, tgt = batch()
    losses = []
    for _ in range(15):
        opt.zero_grad()
        _, loss = model(idx, tgt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    n_lora = sum(p.size for p in params)
    # r (in + out) per adapter: attn.c_attn 16 -> 48, attn.c_proj 16 -> 16, mlp.c_proj 64 -> 16; 2 blocks
    assert n_lora == 2 * 2 * ((16 + 48) + (16 + 16) + (64 + 16))
    state = opt.state_dict()["state"]
    assert sum(v["exp_avg"].size + v["exp_avg_sq"].size for v in state.values()) == 2 * n_lora
    for n, p in model.named_parameters():
        if n in frozen:
            np.testing.assert_array_equal(p.numpy(), frozen[n])


def trained_lora(seed=0):
    model = tiny_gpt(seed)
    nn.apply_lora(model, rank=3, alpha=6, targets=("c_attn", "mlp.c_proj"))
    rng = np.random.default_rng(seed + 5)
    for _, layer in nn.lora_layers(model):  # as if trained: B away from zero
        layer.lora_B.data[...] = rng.standard_normal(layer.lora_B.shape).astype(np.float32) * 0.1
    return model


def test_merge_gives_the_same_outputs_and_unmerge_restores_the_weights():
    model = trained_lora()
    idx, _ = batch()
    base = {n: p.numpy().copy() for n, p in model.named_parameters()}
    with_adapters, _ = model(idx)
    nn.merge_lora(model)
    assert all(layer.merged for _, layer in nn.lora_layers(model))
    merged, _ = model(idx)
    np.testing.assert_allclose(merged.numpy(), with_adapters.numpy(), rtol=1e-5, atol=1e-5)
    changed = [n for n, p in model.named_parameters() if not np.array_equal(p.numpy(), base[n])]
    assert sorted(changed) == sorted(f"transformer.h.{i}.{m}.weight" for i in range(2)
                                     for m in ("attn.c_attn", "mlp.c_proj"))
    nn.unmerge_lora(model)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.numpy(), base[n], rtol=0, atol=1e-6)
    again, _ = model(idx)
    np.testing.assert_allclose(again.numpy(), with_adapters.numpy(), rtol=1e-5, atol=1e-5)


def test_adapters_save_and_load_alone(tmp_path):
    model = trained_lora(seed=0)
    idx, _ = batch()
    want, _ = model(idx)
    path = save_adapters(model, tmp_path / "adapters.safetensors")
    from tinygrad_llm.safetensors import load_file
    tensors, _ = load_file(path)
    assert set(tensors) == set(nn.lora_state_dict(model)) and all("lora_" in k for k in tensors)
    fresh = tiny_gpt(seed=0)  # the same base weights, no adapters yet
    load_adapters(fresh, path)  # applies LoRA with the saved rank, alpha and targets, then loads
    got, _ = fresh(idx)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    with pytest.raises(ValueError, match="adapter"):
        load_adapters(GPT(GPTConfig(vocab_size=29, block_size=12, n_layer=1, n_head=2, n_embd=16)), path)


def test_apply_lora_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="no nn.Linear matches targets.*c_attn"):
        nn.apply_lora(model, targets=("q_proj",))
    untied = tiny_gpt()
    with pytest.raises(ValueError, match="lm_head.weight is tied"):
        nn.apply_lora(untied, targets=("lm_head",))
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        nn.apply_lora(tiny_gpt(), rank=0)
