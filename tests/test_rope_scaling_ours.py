"""RoPE scaling at inference on our own checkpoints (GPT.extend_context, load_model, the sample
command): linear interpolation, dynamic NTK and YaRN tables from ops/rope.py, a model trained at T
run at 4T and 16T, ALiBi and NoPE extended without scaling, and one clear error for each mistake:
a scaling factor <= 0, a length past a learned table, ALiBi / NoPE asked of a learned checkpoint."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor
from tinygrad_llm.checkpoint import save_checkpoint
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.ops.rope import rope_tables
from tinygrad_llm.train import load_model

T = 8


def model(pos="rope"):
    return GPT(GPTConfig(vocab_size=20, block_size=T, n_layer=2, n_head=2, n_embd=16, pos=pos))


def tables(m, length):
    x = Tensor(np.zeros((1, length, 16), np.float32))
    return [np.asarray(a) for a in m._rope(0, length, x)]


def test_linear_interpolation_puts_position_4t_where_t_was():
    m = model().extend_context(4 * T, "linear:4")
    assert m.config.block_size == 4 * T and m.config.trained_block_size == T
    cos, sin = tables(m, 4 * T)
    plain_cos, plain_sin = rope_tables(T, 8)
    np.testing.assert_allclose(cos[::4], plain_cos, atol=1e-6)
    np.testing.assert_allclose(sin[::4], plain_sin, atol=1e-6)


def test_each_kind_uses_ops_rope_tables():
    for spec, scaling in [("ntk:4", {"rope_type": "dynamic", "factor": 4.0}),
                          ("yarn:4", {"rope_type": "yarn", "factor": 4.0})]:
        m = model().extend_context(4 * T, spec)
        assert m.config.rope_scaling == scaling
        want = rope_tables(4 * T, 8, scaling=scaling, max_position_embeddings=T)
        for got, w in zip(tables(m, 4 * T), want):
            np.testing.assert_allclose(got, w, atol=1e-6)


def test_dynamic_ntk_changes_nothing_up_to_the_trained_length():
    m = model()
    x = np.random.default_rng(0).integers(0, 20, (1, T))
    with tl.no_grad():
        plain = m(x)[0].numpy()
        ntk = m.extend_context(16 * T, "dynamic")(x)[0].numpy()  # no factor: 16T / T
    assert m.config.rope_scaling["factor"] == 16
    np.testing.assert_allclose(ntk, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", [None, "linear:4", "ntk:4", "yarn:4", "linear:16", "yarn:16"])
def test_a_rope_model_runs_at_4t_and_16t(spec):
    length = 16 * T if spec is None or spec.endswith("16") else 4 * T
    m = model().extend_context(length, spec)
    x = np.random.default_rng(1).integers(0, 20, (1, length))
    with tl.no_grad():
        logits, loss = m(x, x)
    assert logits.shape == (1, length, 20) and np.isfinite(loss.numpy())
    out = m.generate(x[:, :3], length, temperature=0).numpy()  # the cache reaches the new length
    assert out.shape == (1, 3 + length)


@pytest.mark.parametrize("pos", ["alibi", "none"])
def test_alibi_and_nope_extend_without_scaling(pos):
    m = model(pos).extend_context(16 * T)
    x = np.random.default_rng(2).integers(0, 20, (2, 16 * T))
    with tl.no_grad():
        assert np.isfinite(m(x, x)[1].numpy())


def test_checkpoints_load_at_a_longer_context(tmp_path):
    m = model()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", m.state_dict(), config=m.config.to_dict())
    loaded, _ = load_model(path, block_size=4 * T, rope_scaling="yarn:4")
    assert loaded.config.block_size == 4 * T and loaded.config.rope_scaling["rope_type"] == "yarn"
    x = np.random.default_rng(3).integers(0, 20, (1, T))
    with tl.no_grad():  # YaRN keeps the high frequencies: the short-range logits stay close
        assert np.abs(loaded(x)[0].numpy() - m(x)[0].numpy()).max() < 0.5


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="factor must be a finite number > 0, got 0.0"):
        model().extend_context(4 * T, "linear:0")
    with pytest.raises(ValueError, match="factor must be a finite number > 0, got -2.0"):
        model().extend_context(4 * T, "yarn:-2")
    with pytest.raises(ValueError, match="factor must be a finite number > 0"):
        model().extend_context(4 * T, {"rope_type": "linear", "factor": 0})
    with pytest.raises(ValueError, match="the kind must be one of"):
        model().extend_context(4 * T, "cubic:2")
    with pytest.raises(ValueError, match=r"pos='learned' has a table of 8 positions; it cannot evaluate "
                                         r"sequences of 32 tokens"):
        model("learned").extend_context(4 * T)
    with pytest.raises(ValueError, match="rope scaling 'linear:4' needs RoPE layers"):
        model("alibi").extend_context(4 * T, "linear:4")
    learned = model("learned")
    path = save_checkpoint(tmp_path / "ckpt.safetensors", learned.state_dict(), config=learned.config.to_dict())
    for pos in ("alibi", "none"):
        with pytest.raises(ValueError, match=f"pos='{pos}' requested for a checkpoint trained with "
                                             "pos='learned'"):
            load_model(path, pos=pos)
    assert load_model(path, pos="learned")[0].config.pos == "learned"
    with pytest.raises(ValueError, match="cannot evaluate sequences of 64 tokens"):
        load_model(path, block_size=64)


def test_the_sample_command_takes_the_flags(tmp_path, capsys):
    from tinygrad_llm.__main__ import main
    from tinygrad_llm.tokenizer import CharTokenizer
    tok = CharTokenizer.from_text("abcdefghijklmnopqrst")
    tok.save(tmp_path / "tokenizer.json")
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=T, n_layer=1, n_head=2, n_embd=16, pos="rope"))
    save_checkpoint(tmp_path / "ckpt.safetensors", m.state_dict(), config=m.config.to_dict())
    args = ["sample", "--out-dir", str(tmp_path), "--prompt", "ab", "--max-new-tokens", "30", "--temperature", "0"]
    assert main(args + ["--block-size", "32", "--rope-scaling", "linear:4"]) == 0
    assert len(capsys.readouterr().out.splitlines()[0]) == 32
    assert main(args + ["--block-size", "32", "--rope-scaling", "linear:0"]) != 0
    assert "factor must be a finite number > 0" in capsys.readouterr().err
