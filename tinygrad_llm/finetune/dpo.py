"""Preference tuning: DPO (Rafailov et al. 2023) and its IPO and SimPO variants, on
{"prompt", "chosen", "rejected"} records.

Each record becomes two rows, prompt + chosen and prompt + rejected; a row's log-probability is
the sum of its completion tokens' log p(y_t | x_<t) (ops/logprob.py). The reference model's
values are computed once, before training, by the policy itself at its starting weights (or by
any model passed as `reference`), so no second copy of the weights is kept while training.

    records = load_preferences("prefs.jsonl")
    pairs = [encode_pair(r, tok, max_len=128, index=i) for i, r in enumerate(records)]
    history = fit(model, pairs, beta=0.1, loss_type="sigmoid", steps=50)

The objective is one op, PreferenceLoss, whose backward is derived down to the sequence
log-probabilities; the token op carries it on to the logits (docs/backward.md#dpo).
"""
import json
import time

import numpy as np

from .. import nn, optim
from ..autograd import no_grad
from ..backend import array_module
from ..ops.logprob import token_logprobs
from ..ops.preference import LOSS_TYPES, PreferenceLoss  # noqa: F401  (LOSS_TYPES: part of this API)

FIELDS = ("prompt", "chosen", "rejected")


def check_records(records, source="preferences"):
    """Every record is a dict with non-empty string prompt, chosen and rejected fields."""
    if not isinstance(records, list) or not records:
        raise ValueError(f"{source}: expected a non-empty list of preference records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            # a ValueError, as for every other bad record: the CLI reports them as user errors
            raise ValueError(f"{source}: record {i} is a {type(r).__name__}, not an object with "  # noqa: TRY004
                             f"fields {', '.join(FIELDS)}")
        for field in FIELDS:
            if field not in r:
                raise ValueError(f"{source}: record {i} has no {field!r} field (each needs "
                                 f"{', '.join(FIELDS)})")
            if not isinstance(r[field], str):
                raise ValueError(f"{source}: record {i} field {field!r} must be a string, got "  # noqa: TRY004
                                 f"{type(r[field]).__name__}")
        for field in ("chosen", "rejected"):
            if not r[field].strip():
                raise ValueError(f"{source}: record {i} has an empty {field!r} completion")
    return records


def load_preferences(path):
    """Records from a JSON list or a JSONL file of {"prompt", "chosen", "rejected"} objects."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else \
            [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON or JSONL ({e})") from None
    return check_records(records, str(path))


def _encode(tok, text):
    return tok.encode_ordinary(text) if hasattr(tok, "encode_ordinary") else tok.encode(text)


def encode_pair(record, tok, max_len, index=0):
    """((ids, n_prompt) for chosen, (ids, n_prompt) for rejected): prompt + completion ids, at
    most max_len + 1 of them (the prompt is cut from the left to keep the completion)."""
    prompt = _encode(tok, record["prompt"])
    rows = []
    for field in ("chosen", "rejected"):
        done = _encode(tok, record[field])
        if not done:
            raise ValueError(f"record {index}: the {field!r} completion encodes to no tokens")
        keep = max(max_len + 1 - len(done), 1)
        p = prompt[-keep:] if prompt else []
        ids = (p + done)[:max_len + 1]
        if len(ids) - len(p) < 1 or len(ids) < 2:
            raise ValueError(f"record {index}: no {field!r} token fits in max_len={max_len}")
        rows.append((ids, len(p)))
    return tuple(rows)


def collate_rows(rows, pad_id=0):
    """(inputs (N, T), targets (N, T), mask (N, T) bool): mask marks targets that are completion tokens."""
    T = max(len(ids) for ids, _ in rows) - 1
    inputs = np.full((len(rows), T), pad_id, dtype=np.int64)
    targets = np.zeros((len(rows), T), dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=bool)
    for i, (ids, n_prompt) in enumerate(rows):
        n = len(ids) - 1
        inputs[i, :n], targets[i, :n] = ids[:-1], ids[1:]
        mask[i, max(n_prompt - 1, 0):n] = True  # target j is token j + 1: the completion starts at n_prompt
    return inputs, targets, mask


def sequence_logprobs(model, rows, pad_id=0):
    """Tensor (N,): sum of each row's completion-token log-probabilities, and the token counts (N,)."""
    inputs, targets, mask = collate_rows(rows, pad_id)
    logits, _ = model(inputs)
    return token_logprobs(logits, targets, mask).sum(axis=-1), mask.sum(axis=-1)


def preference_loss(chosen, rejected, ref_chosen=None, ref_rejected=None, n_chosen=None, n_rejected=None,
                    beta=0.1, loss_type="sigmoid", gamma=0.0):
    """The PreferenceLoss op on (B,) Tensors; the reference values and lengths are arrays (constants)."""
    xp = array_module(chosen.data)
    const = (lambda a: None if a is None else xp.asarray(getattr(a, "data", a), dtype=chosen.dtype))
    if loss_type != "simpo" and (ref_chosen is None or ref_rejected is None):
        raise ValueError(f"preference loss: loss_type={loss_type!r} needs the reference log-probabilities")
    if loss_type == "simpo" and (n_chosen is None or n_rejected is None):
        raise ValueError("preference loss: loss_type='simpo' needs the completion lengths")
    return PreferenceLoss.apply(chosen, rejected, ref_chosen=const(ref_chosen), ref_rejected=const(ref_rejected),
                                n_chosen=const(n_chosen), n_rejected=const(n_rejected), beta=beta,
                                loss_type=loss_type, gamma=gamma)


def implicit_rewards(chosen, rejected, ref_chosen, ref_rejected, n_chosen, n_rejected, beta, loss_type):
    """(chosen rewards, rejected rewards) as arrays: beta (log pi - log pi_ref), or SimPO's beta log pi / n."""
    if loss_type == "simpo":
        return beta * chosen / n_chosen, beta * rejected / n_rejected
    return beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)


def _split(pairs):
    return [p[0] for p in pairs] + [p[1] for p in pairs]


@no_grad()
def reference_logprobs(model, pairs, batch_size=8, pad_id=0):
    """(chosen (P,), rejected (P,)) float64 arrays: each pair's sequence log-probabilities under model."""
    chosen, rejected = [], []
    with model.evaluating():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            lp, _ = sequence_logprobs(model, _split(batch), pad_id)
            lp = np.asarray(lp.numpy(), dtype=np.float64)
            chosen.append(lp[:len(batch)])
            rejected.append(lp[len(batch):])
    return np.concatenate(chosen), np.concatenate(rejected)


def evaluate(model, pairs, ref, beta=0.1, loss_type="sigmoid", batch_size=8, pad_id=0):
    """{"accuracy", "margin", "chosen_reward", "rejected_reward"} over pairs, ref = reference_logprobs."""
    c, r = reference_logprobs(model, pairs, batch_size, pad_id)
    n_c = np.array([len(p[0][0]) - max(p[0][1], 1) for p in pairs], dtype=np.float64)
    n_r = np.array([len(p[1][0]) - max(p[1][1], 1) for p in pairs], dtype=np.float64)
    rc, rr = implicit_rewards(c, r, ref[0], ref[1], n_c, n_r, beta, loss_type)
    return {"accuracy": float((rc > rr).mean()), "margin": float((rc - rr).mean()),
            "chosen_reward": float(rc.mean()), "rejected_reward": float(rr.mean())}


def fit(model, pairs, beta=0.1, loss_type="sigmoid", gamma=0.0, steps=100, batch_size=8, lr=1e-4,
        weight_decay=0.0, seed=0, pad_id=0, reference=None, log=print, log_every=10):
    """AdamW on the trainable parameters against the preference loss; returns the logged records.

    reference: the model whose log-probabilities anchor the loss (default: the policy itself at its
    starting weights, computed once here). Each record: step, loss, accuracy and reward margin of
    the batch, seconds."""
    if not pairs:
        raise ValueError("dpo: no preference pairs to train on")
    ref = None if loss_type == "simpo" else reference_logprobs(reference or model, pairs, batch_size, pad_id)
    params = nn.trainable_parameters(model)
    opt = optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    history, t0 = [], time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        pick = rng.choice(len(pairs), size=min(batch_size, len(pairs)), replace=False)
        batch = [pairs[i] for i in pick]
        lp, n = sequence_logprobs(model, _split(batch), pad_id)
        B = len(batch)
        c, r = lp[:B], lp[B:]
        ref_c, ref_r = (None, None) if ref is None else (ref[0][pick], ref[1][pick])
        loss = preference_loss(c, r, ref_c, ref_r, n[:B], n[B:], beta=beta, loss_type=loss_type, gamma=gamma)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lc, lr_ = np.asarray(c.numpy(), np.float64), np.asarray(r.numpy(), np.float64)
        rc, rr = implicit_rewards(lc, lr_, ref_c, ref_r, n[:B], n[B:], beta, loss_type)
        record = {"step": step, "loss": loss.item(), "accuracy": float((rc > rr).mean()),
                  "margin": float((rc - rr).mean()), "seconds": time.perf_counter() - t0}
        if not np.isfinite(record["loss"]):
            raise FloatingPointError(f"dpo: the loss is {record['loss']} at step {step}")
        history.append(record)
        if log and (step % log_every == 0 or step == steps):
            log(f"step {step}: loss {record['loss']:.4f}, batch accuracy {record['accuracy']:.2f}, "
                f"reward margin {record['margin']:.4f}, {record['seconds']:.1f}s")
    model.eval()
    return history
