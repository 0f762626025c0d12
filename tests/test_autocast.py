"""bf16 mixed precision: which op runs in which dtype under tl.autocast, float32 gradients for the
float32 weights, closeness to the float32 run, the CPU left in float32, and --dtype bf16 refused
on the CPU. On a machine without a GPU the bfloat16 path runs on NumPy arrays (ml_dtypes) through
autocast's cpu_emulation."""
import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor, autograd
from tinygrad_llm.autocast import autocast, check_training_dtype, training_precision

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)


def _gpt():
    from tinygrad_llm.models import GPT, GPTConfig
    tl.manual_seed(0)
    return GPT(GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))


def _record_dtypes(monkeypatch):
    """op name -> the (input dtypes, output dtype) of each forward run while recording."""
    seen = {}
    original = autograd.Function.apply.__func__

    def apply(cls, *tensors, **params):
        out = original(cls, *tensors, **params)
        seen.setdefault(cls.__name__, set()).add((tuple(str(t.dtype) for t in tensors), str(out.dtype)))
        return out

    monkeypatch.setattr(autograd.Function, "apply", classmethod(apply))
    return seen


def test_gpt_runs_matmuls_and_attention_in_bf16(monkeypatch):
    model = _gpt()
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 61, (2, 16)), rng.integers(0, 61, (2, 16))
    seen = _record_dtypes(monkeypatch)
    with autocast("bf16", cpu_emulation=True):
        logits, loss = model(idx, targets)
    assert logits.dtype == BF16 and loss.dtype == np.float32
    assert seen["Linear"] == {(("bfloat16",) * 3, "bfloat16"), (("bfloat16",) * 2, "bfloat16")}  # lm_head: no bias
    assert seen["QKVAttention"] == {(("bfloat16",), "bfloat16")}
    assert seen["GELU"] == {(("bfloat16",), "bfloat16")}
    # float32: the norms (on the float32 residual stream) and the loss
    assert {out for _, out in seen["LayerNorm"]} == {"float32"}
    assert seen["CrossEntropy"] == {(("float32",), "float32")}
    # the residual adds promote: float32 stream + bfloat16 branch -> float32
    assert (("float32", "bfloat16"), "float32") in seen["Add"]
    # the only casts: weights and biases down to bf16, the logits up to float32 for the loss
    assert {ins[0] for ins, out in seen["Cast"] if out == "bfloat16"} == {"float32"}
    assert {ins for ins, out in seen["Cast"] if out == "float32"} == {("bfloat16",)}


def test_gpt_bf16_loss_and_gradients_track_float32():
    model = _gpt()
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 61, (2, 16)), rng.integers(0, 61, (2, 16))
    _, loss32 = model(idx, targets)
    loss32.backward()
    grads32 = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad()
    with autocast("bf16", cpu_emulation=True):
        _, loss = model(idx, targets)
    loss.backward()
    np.testing.assert_allclose(loss.item(), loss32.item(), rtol=1e-2)
    for name, p in model.named_parameters():
        assert p.grad.dtype == p.dtype == np.float32, name  # master weights and their gradients
        g, g32 = p.grad.numpy(), grads32[name]
        assert np.linalg.norm(g - g32) <= 0.05 * np.linalg.norm(g32) + 1e-6, name


def test_the_cpu_stays_float32():
    """Without cpu_emulation, autocast leaves NumPy arrays alone."""
    x = Tensor(np.ones((2, 3), np.float32))
    w = Tensor(np.ones((4, 3), np.float32), requires_grad=True)
    with autocast("bf16"):
        y = F.linear(x, w)
    assert y.dtype == np.float32


def test_nested_regions_and_bad_dtype():
    x = Tensor(np.ones((2, 3), np.float32))
    w = Tensor(np.ones((4, 3), np.float32))
    with autocast("bf16", cpu_emulation=True):
        assert F.linear(x, w).dtype == BF16
        with autocast(None):
            assert F.linear(x, w).dtype == np.float32
        assert F.linear(x, w).dtype == BF16
    assert F.linear(x, w).dtype == np.float32
    with pytest.raises(ValueError, match=r"'fp16' is not one of"):
        autocast("fp16")


def test_bf16_cast_hands_float32_weights_float32_gradients():
    rng = np.random.default_rng(2)
    x = Tensor(rng.standard_normal((5, 3)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal(4).astype(np.float32), requires_grad=True)
    dy = rng.standard_normal((5, 4)).astype(np.float32)
    with autocast("bf16", cpu_emulation=True):
        y = F.linear(x, w, b)
    y.backward(Tensor(dy.astype(BF16)))
    for t, want in ((x, dy @ w.numpy()), (w, dy.T @ x.numpy()), (b, dy.sum(0))):
        assert t.grad.dtype == np.float32
        np.testing.assert_allclose(t.grad.numpy(), want, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("packed", [False, True])
def test_bf16_attention_without_the_kernel_computes_in_float32(packed):
    """bf16 attention where the flash kernel does not serve: float32 inside, bf16 out and back."""
    from tinygrad_llm.ops import attention
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((2, 2, 6, 4)) for _ in range(3))
    dy = rng.standard_normal((2, 2, 6, 4))
    ids = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 2, 2]])
    want_o = attention.attention_textbook(q, k, v, True, None, ids)[0]
    want = attention.attention_backward_textbook(dy, q, k, v, True, None, ids)
    ts = [Tensor(a.astype(BF16), requires_grad=True) for a in (q, k, v)]
    if packed:  # the same numbers through the packed op: qkv (B, T, 3 H D)
        qkv = Tensor(np.concatenate([a.transpose(0, 2, 1, 3) for a in (q, k, v)], axis=2)
                     .reshape(2, 6, 24).astype(BF16), requires_grad=True)
        out = F.qkv_attention(qkv, 2, 2, segment_ids=ids)
        out.backward(Tensor(dy.transpose(0, 2, 1, 3).reshape(2, 6, 8).astype(BF16)))
        got_o = out.numpy().astype(np.float64).reshape(2, 6, 2, 4).transpose(0, 2, 1, 3)
        g = qkv.grad.numpy().astype(np.float64).reshape(2, 6, 6, 4).transpose(0, 2, 1, 3)
        got = (g[:, :2], g[:, 2:4], g[:, 4:])
        assert out.dtype == qkv.grad.dtype == BF16
    else:
        out = F.scaled_dot_product_attention(*ts, segment_ids=ids)
        out.backward(Tensor(dy.astype(BF16)))
        assert out.dtype == BF16 and all(t.grad.dtype == BF16 for t in ts)
        got_o, got = out.numpy().astype(np.float64), [t.grad.numpy().astype(np.float64) for t in ts]
    np.testing.assert_allclose(got_o, want_o, rtol=3e-2, atol=3e-2)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-2)


def test_bf16_training_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match=r"bf16 trains on the GPU only.*not on 'cpu'"):
        check_training_dtype("bf16", "cpu")
    with pytest.raises(ValueError, match=r"'fp8' is not one of"):
        check_training_dtype("fp8", "cuda")
    assert training_precision("bf16", "cuda").dtype == BF16
    from tinygrad_llm.train import TrainConfig
    with pytest.raises(ValueError, match=r"TrainConfig: dtype bf16 trains on the GPU only"):
        TrainConfig(dtype="bf16", device="cpu").validate()


@pytest.mark.parametrize("command", ["train", "bench"])
def test_cli_refuses_bf16_on_the_cpu(command, tmp_path):
    import argparse
    import importlib
    cli = importlib.import_module(f"tinygrad_llm.cli.{command}")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--dtype", "bf16", "--device", "cpu"]
                             + (["--out-dir", str(tmp_path)] if command == "train" else []))
    from tinygrad_llm.cli.common import UsageError
    with pytest.raises(UsageError, match=r"--dtype bf16 runs on the GPU only \(--device cuda\)"):
        cli.main(args)


@pytest.mark.gpu
def test_gpt_under_autocast_on_the_gpu(cp):
    """The real thing: CuPy bfloat16 casts, GEMMs, the flash kernel (head dim 32) and the bf16
    GELU kernel; float32 loss and gradients that track the float32 run."""
    from tinygrad_llm.models import GPT, GPTConfig
    tl.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=128)).to("cuda")
    rng = np.random.default_rng(4)
    idx = Tensor(cp.asarray(rng.integers(0, 61, (2, 64))))
    targets = Tensor(cp.asarray(rng.integers(0, 61, (2, 64))))
    _, loss32 = model(idx, targets)
    loss32.backward()
    grads32 = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad()
    with autocast("bf16"):
        logits, loss = model(idx, targets)
    loss.backward()
    assert logits.dtype == BF16 and loss.dtype == np.float32
    np.testing.assert_allclose(loss.item(), loss32.item(), rtol=2e-2)
    for name, p in model.named_parameters():
        assert p.grad.dtype == np.float32, name
        g, g32 = p.grad.numpy(), grads32[name]
        assert np.linalg.norm(g - g32) <= 0.1 * np.linalg.norm(g32) + 1e-6, name
