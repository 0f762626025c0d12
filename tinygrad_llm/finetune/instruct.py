"""Instruction fine-tuning on Alpaca-format data: {"instruction", "input", "output"} records.

Each record becomes the standard Alpaca prompt followed by its response (and <|endoftext|> when
the tokenizer has one). The model learns to continue the prompt with the response: the loss is
taken on the response tokens only. Positions whose target is a prompt token, and padding, get
the target IGNORE (-100), which F.cross_entropy leaves out of the mean: their gradient is zero.

    records = load_alpaca("alpaca_data.json")
    examples = [encode_example(r, tok, max_len=256) for r in records]
    inputs, targets = collate(examples[:8], pad_id=tok.eot_id)
    logits, loss = model(inputs, targets)           # loss over response tokens only
"""
import json
import time

import numpy as np

from .. import nn, optim
from ..autograd import no_grad

IGNORE = -100  # F.cross_entropy's default ignore_index
# the Stanford Alpaca templates (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT)
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                     "further context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
RESPONSE_END = "\n\n### "  # where a tokenizer without <|endoftext|> cuts a generated response


def format_prompt(record):
    """The Alpaca prompt for a record (with or without its input), ending where the response begins."""
    if record.get("input", "").strip():
        return PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=record["input"])
    return PROMPT_NO_INPUT.format(instruction=record["instruction"])


def load_alpaca(path):
    """The records of an Alpaca JSON file (a list of objects with instruction, input?, output)."""
    with open(path, encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: expected a non-empty JSON list of records, got {type(records).__name__}")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
            raise ValueError(f"{path}: record {i} needs string 'instruction' and 'output' fields, got {r!r:.120}")
        r.setdefault("input", "")
    return records


def _encode(tok, text):
    return tok.encode_ordinary(text) if hasattr(tok, "encode_ordinary") else tok.encode(text)


def encode_example(record, tok, max_len):
    """(ids, n_prompt): prompt + response (+ <|endoftext|>) token ids, at most max_len + 1 of them
    (inputs and targets are the ids shifted by one), and how many of them are the prompt."""
    prompt = _encode(tok, format_prompt(record))
    ids = prompt + _encode(tok, record["output"])
    eot = getattr(tok, "eot_id", None)
    if eot is not None:
        ids.append(eot)
    return ids[:max_len + 1], min(len(prompt), max_len + 1)


def collate(examples, pad_id=0, ignore_index=IGNORE):
    """(inputs (B, T), targets (B, T)) int64 from (ids, n_prompt) pairs, T the longest minus one.

    inputs are ids[:-1] padded with pad_id; targets are ids[1:], with ignore_index where the target
    is a prompt token (positions j < n_prompt - 1) and on the padding.
    """
    T = max(len(ids) for ids, _ in examples) - 1
    if T < 1:
        raise ValueError("collate: every example needs at least two tokens (a prompt token and a target)")
    inputs = np.full((len(examples), T), pad_id, dtype=np.int64)
    targets = np.full((len(examples), T), ignore_index, dtype=np.int64)
    for row, (ids, n_prompt) in enumerate(examples):
        n = len(ids) - 1
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = ids[1:]
        targets[row, :max(n_prompt - 1, 0)] = ignore_index  # predicting the prompt is not the task
    return inputs, targets


@no_grad()
def eval_loss(model, examples, batch_size=8, pad_id=0):
    """Mean response-token loss over examples (each batch weighted by its response tokens)."""
    total, count = 0.0, 0
    with model.evaluating():
        for start in range(0, len(examples), batch_size):
            inputs, targets = collate(examples[start:start + batch_size], pad_id)
            n = int((targets != IGNORE).sum())
            if n:
                total += model(inputs, targets)[1].item() * n
                count += n
    return total / max(count, 1)


def fit(model, train, val, epochs=1, batch_size=8, lr=5e-5, weight_decay=0.1, seed=0, pad_id=0,
        max_steps=None, log=print):
    """AdamW on the trainable parameters over the encoded train examples; val loss after each epoch."""
    params = nn.trainable_parameters(model)
    opt = optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    history, step = [], 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(len(train))
        losses = []
        for start in range(0, len(order), batch_size):
            if max_steps is not None and step >= max_steps:
                break
            inputs, targets = collate([train[i] for i in order[start:start + batch_size]], pad_id)
            opt.zero_grad()
            _, loss = model(inputs, targets)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        record = {"epoch": epoch, "steps": step, "train_loss": float(np.mean(losses)) if losses else None,
                  "val_loss": eval_loss(model, val, batch_size, pad_id) if val else None,
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        if log:
            val_text = f"{record['val_loss']:.4f}" if record["val_loss"] is not None else "-"
            log(f"epoch {epoch}: {step} steps, train loss {record['train_loss']:.4f}, val loss {val_text}, "
                f"{record['seconds']:.1f}s")
    return history


def generate_response(model, tok, record, max_new_tokens=64):
    """The model's greedy response to a record's prompt, decoded and cut at the end marker."""
    prompt = _encode(tok, format_prompt(record))
    block = model.config.block_size
    prompt = prompt[-max(block - 1, 1):]  # leave room for at least one new token
    eot = getattr(tok, "eot_id", None)
    out = model.generate(np.array([prompt]), max_new_tokens, temperature=0, eos_id=eot).numpy()[0]
    new = [int(t) for t in out[len(prompt):] if eot is None or t != eot]
    text = tok.decode(new)
    return text.split(RESPONSE_END)[0].strip()
