"""The eval command on small sets written here: each layout read (HellaSwag, ARC in both shapes,
PIQA, MMLU, GSM8K), the likeliest ending chosen, acc_norm dividing by bytes, exact match after
"####", bits per byte against the model's own loss, bad records named, and the CLI writing its
JSON results; then the log-likelihoods against transformers on a tiny random GPT-2."""
import json
import math

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import evaluate as ev
from tinygrad_llm.__main__ import main as run_command
from tinygrad_llm.checkpoint import save_checkpoint
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizer import CharTokenizer

TEXT = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:?!#\n-'"


class ByteTok:
    eot_id = None

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def model():
    tl.manual_seed(0)
    return GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()


def brute_force(model, context, ending):
    """log p(ending | context) one token at a time, the definition."""
    ids = ByteTok().encode(context) + ByteTok().encode(ending)
    n_ctx = len(ids) - len(ending.encode())
    logits, _ = model(np.array([ids[:-1]]))
    logits = logits.numpy()[0].astype(np.float64)
    total = 0.0
    for t in range(n_ctx - 1, len(ids) - 1):
        row = logits[t]
        total += row[ids[t + 1]] - (row.max() + np.log(np.exp(row - row.max()).sum()))
    return total


HELLASWAG = [{"ctx": "The cat sat on the", "endings": ["mat.", "moon tonight.", "dog", "xyz"], "label": 0},
             {"ctx": "She opened the", "endings": ["door", "window slowly", "box"], "label": "2"}]
ARC_HF = [{"question": "Which is a color?", "choices": {"text": ["red", "run", "rock"], "label": ["A", "B", "C"]},
           "answerKey": "A"}]
ARC_ORIG = [{"question": {"stem": "2+2?", "choices": [{"text": "4", "label": "1"}, {"text": "5", "label": "2"}]},
             "answerKey": "1"}]
PIQA = [{"goal": "Boil water", "sol1": "use a kettle", "sol2": "use a fridge", "label": 0}]
MMLU = [{"question": "Capital of France?", "choices": ["Paris", "Rome", "Oslo", "Bern"], "answer": 0}]


@pytest.mark.parametrize("records, kind", [(HELLASWAG, "hellaswag"), (ARC_HF, "arc"), (ARC_ORIG, "arc"),
                                           (PIQA, "piqa"), (MMLU, "mmlu")])
def test_multiple_choice_scores_are_the_log_likelihoods(model, records, kind, tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    assert ev.detect_task_type(records[0]) == kind
    items = [ev.multiple_choice(r, kind, i) for i, r in enumerate(records)]
    scores = ev.score_choices(model, ByteTok(), items, batch_size=2)
    acc = norm = 0
    for (context, endings, label), s in zip(items, scores):
        want = [brute_force(model, context, e) for e in endings]
        np.testing.assert_allclose(s, want, rtol=1e-4, atol=1e-4)
        acc += int(np.argmax(want) == label)
        norm += int(np.argmax(np.array(want) / [len(e.encode()) for e in endings]) == label)
    got = ev.evaluate_task(model, ByteTok(), path, batch_size=3)
    assert got["task_type"] == kind and got["n"] == len(records)
    assert got["acc"] == acc / len(records) and got["acc_norm"] == norm / len(records)


def test_labels_read_in_each_form():
    assert ev.multiple_choice(HELLASWAG[1], "hellaswag")[2] == 2
    assert ev.multiple_choice(ARC_HF[0] | {"answerKey": "C"}, "arc")[2] == 2
    assert ev.multiple_choice(MMLU[0] | {"answer": "B"}, "mmlu")[2] == 1
    assert ev.multiple_choice(HELLASWAG[0], "hellaswag")[1][0] == " mat."


@pytest.mark.parametrize("record, kind, message", [
    ({"ctx": "a", "endings": ["b", "c"], "label": 5}, "hellaswag", "record 0: label 5 is outside the 2 choices"),
    ({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"}, "arc",
     "label 'E' is not one of the choices"),
    ({"goal": "g", "sol1": "a", "label": 0}, "piqa", "no 'sol2' field"),
    ({"question": "q", "choices": ["a", ""], "answer": 0}, "mmlu", "two non-empty string choices")])
def test_bad_records_named(record, kind, message):
    with pytest.raises(ValueError, match=message):
        ev.multiple_choice(record, kind, 0)


def test_unknown_layout_refused(model, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"text": "hi"}]))
    with pytest.raises(ValueError, match="fit none of the layouts"):
        ev.evaluate_task(model, ByteTok(), path)


def test_extract_answer():
    assert ev.extract_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert ev.extract_answer("The answer is $42.") == "42"
    assert ev.extract_answer("no number") is None
    assert ev.extract_answer("#### 7.0") == "7"


def test_exact_match_counts_greedy_answers(model, tmp_path):
    """The reference answers are the model's own greedy continuations for half the records."""
    prompt = "Question: {question}\nAnswer:"
    records = []
    for i, q in enumerate(["one", "two", "three", "four"]):
        ids = ByteTok().encode(prompt.format(question=q))
        out = model.generate(np.array([ids]), 6, temperature=0).numpy()[0][len(ids):]
        produced = ev.extract_answer(ByteTok().decode(out.tolist()))
        answer = f"#### {produced}" if (i % 2 == 0 and produced) else "#### 123456789"
        records.append({"question": q, "answer": answer})
    path = tmp_path / "gsm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    got = ev.evaluate_task(model, ByteTok(), path, max_new_tokens=6, batch_size=2)
    want = sum(1 for i, r in enumerate(records) if i % 2 == 0 and r["answer"] != "#### 123456789") / 4
    assert got["task_type"] == "gsm8k" and got["exact_match"] == want


def test_bits_per_byte_matches_the_loss(model, tmp_path):
    text = "hello world, the quick brown fox jumps over the lazy dog. " * 4
    path = tmp_path / "t.txt"
    path.write_text(text)
    got = ev.evaluate_task(model, ByteTok(), path, batch_size=2)
    ids = np.array(ByteTok().encode(text))
    T, n = 64, (len(ids) - 1) // 64
    x = ids[:n * T].reshape(n, T)
    y = ids[1:n * T + 1].reshape(n, T)
    _, loss = model(x, y)
    assert got["task_type"] == "bpb"
    assert got["bits_per_byte"] == pytest.approx(loss.item() / math.log(2), rel=1e-5)  # 1 byte per token


def test_cli_writes_json_results(tmp_path, capsys):
    tl.manual_seed(1)
    tok = CharTokenizer.from_text(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "ckpt.safetensors", GPT(cfg).state_dict(), config=cfg.to_dict())
    tok.save(run / "tokenizer.json")
    task = tmp_path / "hs.jsonl"
    task.write_text("\n".join(json.dumps(r) for r in HELLASWAG))
    out = tmp_path / "results.json"
    assert run_command(["eval", "--model", str(run), "--task", str(task), "--out", str(out), "--limit", "1"]) == 0
    results = json.loads(out.read_text())
    assert results["n"] == 1 and results["task_type"] == "hellaswag" and 0 <= results["acc"] <= 1
    assert "1/1" in capsys.readouterr().err  # the progress line
    assert run_command(["eval", "--model", str(tmp_path / "nope"), "--task", str(task)]) == 2
    assert "no file or folder" in capsys.readouterr().err


def test_trainer_scores_the_eval_task_every_n_steps(tmp_path):
    from train_helpers import make_data

    from tinygrad_llm.train import TrainConfig, Trainer

    class Tok13:  # the 13-id vocabulary of make_data: one id per character, modulo 13
        eot_id = None

        def encode(self, text):
            return [ord(c) % 13 for c in text]

    task = tmp_path / "hs.jsonl"
    task.write_text("\n".join(json.dumps(r) for r in HELLASWAG))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), model={"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
                      batch_size=4, max_iters=4, warmup_iters=1, eval_every=0, eval_iters=1, log_every=10, seed=0,
                      final_eval="sample", eval_task=str(task), eval_task_every=2)
    trainer = Trainer(cfg, data=make_data(), log=lambda m: None)
    trainer.eval_tokenizer = Tok13()
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if "eval_task" in r]
    assert [r["step"] for r in scored] == [2, 4]
    assert all(r["eval_task"]["n"] == 2 and 0 <= r["eval_task"]["acc"] <= 1 for r in scored)
    with pytest.raises(ValueError, match="eval_task_every needs eval_task"):
        TrainConfig(eval_task_every=5).validate()
