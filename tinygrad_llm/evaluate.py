"""Benchmarks a model is measured on, as the field reports them.

    multiple choice   HellaSwag, ARC, PIQA, MMLU (their public JSON/JSONL layouts): each ending is
                      scored by its log-likelihood given the context, sum_t log p(ending_t | ...);
                      acc takes the likeliest ending, acc_norm the likeliest per byte of the ending
    exact match       GSM8K: greedy generation (KV cache), the number after "####" (or the last
                      number) against the reference's
    bits per byte     a text file, or the val shard of a shard folder

    results = evaluate_task(model, tok, "hellaswag_val.jsonl", limit=200)
    results["acc"], results["acc_norm"]

Records are read by shape: ctx/endings/label (HellaSwag), question/choices/answerKey (ARC),
goal/sol1/sol2/label (PIQA), question/choices/answer (MMLU), question/answer (GSM8K); pass
task_type to say it outright. A record that fits none is refused by index and field.
"""
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from .autograd import no_grad
from .finetune.dpo import collate_rows
from .ops.logprob import token_logprobs

MC_TYPES = ("hellaswag", "arc", "piqa", "mmlu")
TASK_TYPES = MC_TYPES + ("gsm8k", "bpb")


# ------------------------------------------------------------------------------------ records
def read_records(path):
    """The records of a JSON list (or {"data": [...]}, or one object per line: JSONL)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        elif text.lstrip().startswith("{") and "\n" not in text.strip():
            one = json.loads(text)
            records = one.get("data", [one]) if isinstance(one, dict) else one
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON or JSONL ({e})") from None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: no records")
    return records


def detect_task_type(record):
    """Which layout a record has, from its fields (None when none fits)."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if {"endings", "label"} <= keys and ("ctx" in keys or "ctx_a" in keys):
        return "hellaswag"
    if {"goal", "sol1", "sol2"} <= keys:
        return "piqa"
    if {"question", "answerKey"} <= keys:  # the original ARC keeps its choices inside the question
        return "arc"
    if {"question", "choices", "answer"} <= keys:
        return "mmlu"
    if {"question", "answer"} <= keys:
        return "gsm8k"
    return None


def _need(record, field, index, kind):
    if field not in record:
        raise ValueError(f"{kind} record {index}: no {field!r} field")
    return record[field]


def _label_index(label, n, index, kind, labels=None):
    """The label as a 0-based index into n choices (ints, digit strings, or one of `labels`)."""
    if labels is not None and str(label) in labels:
        return labels.index(str(label))
    try:
        i = int(label)
    except (TypeError, ValueError):
        raise ValueError(f"{kind} record {index}: label {label!r} is not one of the choices "
                         f"{labels or list(range(n))}") from None
    if not 0 <= i < n:
        raise ValueError(f"{kind} record {index}: label {i} is outside the {n} choices")
    return i


def multiple_choice(record, kind, index=0):
    """(context, [endings], label index) of one record; each ending starts with its space."""
    if not isinstance(record, dict):
        raise ValueError(f"{kind} record {index}: a {type(record).__name__}, not an object")  # noqa: TRY004
    try:
        return _multiple_choice(record, kind, index)
    except KeyError as e:
        raise ValueError(f"{kind} record {index}: no {e.args[0]!r} field") from None
    except (TypeError, AttributeError) as e:
        raise ValueError(f"{kind} record {index}: a field has the wrong type ({e})") from None


def _multiple_choice(record, kind, index):
    if kind == "hellaswag":
        ctx = record["ctx"] if "ctx" in record else record["ctx_a"] + " " + record.get("ctx_b", "").capitalize()
        endings = _need(record, "endings", index, kind)
        label = _need(record, "label", index, kind)
        context, choices = ctx.strip(), list(endings)
    elif kind == "piqa":
        context = f"Question: {_need(record, 'goal', index, kind)}\nAnswer:"
        choices, label = [record["sol1"], record["sol2"]], _need(record, "label", index, kind)
    elif kind == "arc":
        q = record["question"]
        ch = q.get("choices") if isinstance(q, dict) else record["choices"]
        if isinstance(q, dict):  # the original ARC jsonl: question {stem, choices [{text, label}]}
            ch = {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}
            q = q["stem"]
        if not isinstance(ch, dict) or "text" not in ch:
            raise ValueError(f"arc record {index}: 'choices' must hold 'text' and 'label' lists")
        context, choices = f"Question: {q}\nAnswer:", list(ch["text"])
        labels = [str(x) for x in ch.get("label", range(len(choices)))]
        return context, [" " + c.strip() for c in choices], \
            _label_index(record["answerKey"], len(choices), index, kind, labels)
    elif kind == "mmlu":
        context = f"Question: {record['question']}\nAnswer:"
        choices, label = list(record["choices"]), record["answer"]
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if isinstance(label, str) and label in letters:
            label = letters.index(label)
    else:
        raise ValueError(f"multiple_choice: unknown task type {kind!r}")
    if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ValueError(f"{kind} record {index}: needs at least two non-empty string choices, got {choices!r:.120}")
    return context, [" " + c.strip() for c in choices], _label_index(label, len(choices), index, kind)


# -------------------------------------------------------------------------------- scoring
def _encode(tok, text):
    return tok.encode_ordinary(text) if hasattr(tok, "encode_ordinary") else tok.encode(text)


def _rows(tok, context, endings, block_size, index):
    """(ids, n_context) per ending, the context cropped from the left to fit block_size + 1 ids."""
    ctx = _encode(tok, context)
    if not ctx:
        eot = getattr(tok, "eot_id", None)
        if eot is None:
            raise ValueError(f"record {index}: the context encodes to no tokens and the tokenizer has no "
                             "<|endoftext|> to start from")
        ctx = [eot]
    rows = []
    for j, ending in enumerate(endings):
        cont = _encode(tok, ending)
        if len(cont) > block_size:
            raise ValueError(f"record {index}: ending {j} is {len(cont)} tokens, longer than the "
                             f"model's context of {block_size}")
        keep = ctx[-(block_size + 1 - len(cont)):]
        rows.append((keep + cont, len(keep)))
    return rows


@no_grad()
def score_rows(model, rows, pad_id=0):
    """Sum of the continuation tokens' log-probabilities for each (ids, n_context) row (float64)."""
    inputs, targets, mask = collate_rows(rows, pad_id)  # the same padding DPO's batches use
    with model.evaluating():
        logits, _ = model(inputs)
        lp = token_logprobs(logits, targets, mask)
    return np.asarray(lp.numpy(), dtype=np.float64).sum(axis=-1)


def score_choices(model, tok, items, batch_size=8, progress=None):
    """items: (context, endings, label) triples. Returns one array of ending log-likelihoods per item."""
    block = model.config.block_size
    pad = getattr(tok, "eot_id", None) or 0
    out = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        rows, sizes = [], []
        for k, (context, endings, _) in enumerate(batch):
            r = _rows(tok, context, endings, block, start + k)
            rows += r
            sizes.append(len(r))
        scores = score_rows(model, rows, pad)
        for n in sizes:
            out.append(scores[:n])
            scores = scores[n:]
        if progress:
            progress(len(out), len(items))
    return out


def evaluate_multiple_choice(model, tok, records, kind, batch_size=8, progress=None):
    items = [multiple_choice(r, kind, i) for i, r in enumerate(records)]
    scores = score_choices(model, tok, items, batch_size, progress)
    correct = norm_correct = 0
    for (_, endings, label), s in zip(items, scores):
        n_bytes = np.array([len(e.encode("utf-8")) for e in endings], dtype=np.float64)
        correct += int(np.argmax(s) == label)
        norm_correct += int(np.argmax(s / n_bytes) == label)
    n = len(items)
    return {"acc": correct / n, "acc_norm": norm_correct / n, "n": n}


NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def extract_answer(text):
    """The answer of a GSM8K-style text: what follows "####", else the last number; normalised
    (no commas, "$" or trailing "."), or None."""
    if "####" in text:
        text = text.split("####", 1)[1].strip().split("\n")[0]
        found = NUMBER.findall(text)
        return _normalise(found[0]) if found else (text.strip() or None)
    found = NUMBER.findall(text)
    return _normalise(found[-1]) if found else None


def _normalise(number):
    n = number.replace(",", "").replace("$", "").rstrip(".")
    try:
        f = float(n)
        return str(int(f)) if f == int(f) else str(f)
    except ValueError:
        return n


def evaluate_exact_match(model, tok, records, batch_size=8, max_new_tokens=256, prompt="Question: {question}\nAnswer:",
                         progress=None):
    """Greedy answers (KV cache) to question/answer records; exact match of the extracted numbers.
    Prompts of equal length run as one batch."""
    eot = getattr(tok, "eot_id", None)
    block = model.config.block_size
    prompts = []
    for i, r in enumerate(records):
        if not isinstance(r.get("question"), str) or not isinstance(r.get("answer"), str):
            raise ValueError(f"gsm8k record {i}: needs string 'question' and 'answer' fields")  # noqa: TRY004
        ids = _encode(tok, prompt.format(question=r["question"]))
        if len(ids) + 1 > block:
            raise ValueError(f"gsm8k record {i}: the prompt is {len(ids)} tokens, no room to answer within "
                             f"the model's context of {block}")
        prompts.append(ids)
    by_len = {}
    for i, ids in enumerate(prompts):
        by_len.setdefault(len(ids), []).append(i)
    answers, done = [None] * len(records), 0
    for length, idxs in sorted(by_len.items()):
        for start in range(0, len(idxs), batch_size):
            group = idxs[start:start + batch_size]
            new = min(max_new_tokens, block - length)
            out = model.generate(np.array([prompts[i] for i in group]), new, temperature=0, eos_id=eot).numpy()
            for i, row in zip(group, out):
                text = tok.decode([int(t) for t in row[length:] if t != eot])
                answers[i] = text.split("\n\nQuestion:")[0]
            done += len(group)
            if progress:
                progress(done, len(records))
    correct = sum(extract_answer(a) is not None and extract_answer(a) == extract_answer(r["answer"])
                  for a, r in zip(answers, records))
    return {"exact_match": correct / len(records), "n": len(records),
            "samples": [{"answer": a, "extracted": extract_answer(a), "reference": extract_answer(r["answer"])}
                        for a, r in list(zip(answers, records))[:5]]}


@no_grad()
def bits_per_byte(model, tok, path, limit=None, batch_size=8, progress=None):
    """Bits per byte of a text file (encoded here) or a shard folder's val shard, scored in
    non-overlapping windows of block_size tokens (limit: at most that many windows)."""
    from .shard_data import ShardData, is_shard_folder
    T = model.config.block_size
    if is_shard_folder(path):
        data = ShardData(path)
        ids = np.asarray(data.splits["val"], dtype=np.int64)
        bytes_per_token = data.bytes_per_token("val")
    else:
        text = Path(path).read_text(encoding="utf-8")
        ids = np.asarray(_encode(tok, text), dtype=np.int64)
        bytes_per_token = len(text.encode("utf-8")) / max(len(ids), 1)
    n = (len(ids) - 1) // T
    if n == 0:
        T = len(ids) - 1
        n = 1
    if T < 1:
        raise ValueError(f"{path}: needs at least two tokens to score")
    n = min(n, limit) if limit else n
    nats, tokens = 0.0, 0
    with model.evaluating():
        for start in range(0, n, batch_size):
            rows = min(batch_size, n - start)
            chunk = ids[start * T:(start + rows) * T + 1]
            x = np.stack([chunk[r * T:(r + 1) * T] for r in range(rows)])
            y = np.stack([chunk[r * T + 1:(r + 1) * T + 1] for r in range(rows)])
            _, loss = model(x, y)
            nats += loss.item() * rows * T
            tokens += rows * T
            if progress:
                progress(start + rows, n)
    loss = nats / tokens
    return {"bits_per_byte": loss / (math.log(2) * bytes_per_token), "loss": loss, "tokens": tokens}


# ---------------------------------------------------------------------------------- driver
def progress_line(task, stream=None):
    """A callback(done, total) drawing one updating line: examples done, rate, time left."""
    t0 = time.perf_counter()

    def show(done, total):
        out = stream or sys.stderr  # looked up now: a redirected stderr is honoured
        dt = time.perf_counter() - t0
        rate = done / dt if dt > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        out.write(f"\r{task}: {done}/{total} ({rate:.1f}/s, {eta:.0f}s left)")
        if done >= total:
            out.write("\n")
        out.flush()
    return show


def evaluate_task(model, tokenizer, path, task_type=None, limit=None, batch_size=8, max_new_tokens=256,
                  progress=None):
    """Evaluate model on the task file (or text file / shard folder for "bpb"); returns a results dict
    with the task type, example count, the metrics, seconds and examples per second."""
    t0 = time.perf_counter()
    path = Path(path)
    if task_type is not None and task_type not in TASK_TYPES:
        raise ValueError(f"evaluate: task_type must be one of {TASK_TYPES}, got {task_type!r}")
    if task_type is None and (path.is_dir() or path.suffix not in (".json", ".jsonl")):
        task_type = "bpb"
    if task_type == "bpb":
        results = bits_per_byte(model, tokenizer, path, limit, batch_size, progress)
    else:
        records = read_records(path)
        kind = task_type or detect_task_type(records[0])
        if kind is None:
            raise ValueError(f"{path}: record 0 has fields {sorted(records[0])[:8]}, which fit none of the "
                             f"layouts {TASK_TYPES[:-1]}; pass task_type")
        records = records[:limit] if limit else records
        task_type = kind
        if kind == "gsm8k":
            results = evaluate_exact_match(model, tokenizer, records, batch_size, max_new_tokens, progress=progress)
        else:
            results = evaluate_multiple_choice(model, tokenizer, records, kind, batch_size, progress)
    seconds = time.perf_counter() - t0
    return {"task": str(path), "task_type": task_type, **results, "seconds": seconds,
            "examples_per_s": (results["n"] / seconds) if "n" in results and seconds > 0 else None}
