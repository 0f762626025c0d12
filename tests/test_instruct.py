"""Instruction tuning: the Alpaca prompt, the padded collate, and the loss masked on the prompt,
checked by gradient: no gradient reaches a position whose target is a prompt token or padding."""
import json

import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.functional as F
from tinygrad_llm import Tensor
from tinygrad_llm.finetune.instruct import (IGNORE, collate, encode_example, eval_loss, fit, format_prompt,
                                            generate_response, load_alpaca)
from tinygrad_llm.models import GPT, GPTConfig


class ByteTok:
    """Bytes 0..255 as ids and <|endoftext|> as 256."""
    eot_id = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def test_prompt_follows_the_alpaca_template():
    with_input = format_prompt({"instruction": "Add.", "input": "2 and 3", "output": "5"})
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert with_input.endswith("### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n")
    bare = format_prompt({"instruction": "Say hi.", "input": "", "output": "hi"})
    assert bare == ("Below is an instruction that describes a task. Write a response that appropriately "
                    "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n")


def test_collate_pads_and_masks_the_prompt():
    examples = [([1, 2, 3, 4, 5], 3), ([6, 7, 8], 2)]
    inputs, targets = collate(examples, pad_id=0)
    np.testing.assert_array_equal(inputs, [[1, 2, 3, 4], [6, 7, 0, 0]])
    # row 0: targets 2, 3 are prompt tokens (ignored), 4 and 5 the response; row 1: 8, then padding
    np.testing.assert_array_equal(targets, [[IGNORE, IGNORE, 4, 5], [IGNORE, 8, IGNORE, IGNORE]])


def tiny_gpt(vocab=257, seed=0):
    tl.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=256, n_layer=1, n_head=2, n_embd=16))


RECORDS = [{"instruction": "Repeat.", "input": "ab", "output": "ab"},
           {"instruction": "Shout.", "input": "", "output": "HEY"}]


def test_the_loss_ignores_prompt_tokens_by_gradient():
    tok = ByteTok()
    examples = [encode_example(r, tok, max_len=250) for r in RECORDS]
    inputs, targets = collate(examples, pad_id=tok.eot_id)
    model = tiny_gpt()
    raw, _ = model(inputs)
    logits = Tensor(raw.numpy(), requires_grad=True)  # a leaf, to read the gradient per position
    B, T, V = logits.shape
    loss = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(-1))
    loss.backward()
    grad_norm = np.abs(logits.grad.numpy()).sum(axis=-1)  # (B, T)
    is_response = targets != IGNORE
    assert is_response.sum(axis=1).tolist() == [len(r["output"]) + 1 for r in RECORDS]  # + <|endoftext|>
    assert (grad_norm[~is_response] == 0).all()  # prompt and padding: exactly no gradient
    assert (grad_norm[is_response] > 0).all()
    for row, (ids, n_prompt) in enumerate(examples):  # the response positions are exactly these
        response = np.zeros(T, bool)
        response[n_prompt - 1:len(ids) - 1] = True
        np.testing.assert_array_equal(is_response[row], response)
    # the model's own loss is this masked mean
    np.testing.assert_allclose(model(inputs, targets)[1].item(), loss.item(), rtol=1e-6)


def test_fit_lowers_the_response_loss_and_generates(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(RECORDS))
    records = load_alpaca(path)
    tok = ByteTok()
    examples = [encode_example(r, tok, max_len=250) for r in records]
    model = tiny_gpt()
    before = eval_loss(model, examples, pad_id=tok.eot_id)
    fit(model, examples, examples, epochs=30, batch_size=2, lr=3e-3, weight_decay=0.0, pad_id=tok.eot_id, log=None)
    assert eval_loss(model, examples, pad_id=tok.eot_id) < 0.5 * before
    assert isinstance(generate_response(model, tok, records[1], max_new_tokens=4), str)


def test_load_alpaca_refuses_bad_records(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(ValueError, match="record 0 needs string 'instruction' and 'output'"):
        load_alpaca(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_alpaca(path)
