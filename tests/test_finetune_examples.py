"""The fine-tuning examples end to end on tiny checkpoints the tests write: our own run (checkpoint
+ tokenizer.json) and a Hugging Face GPT-2 directory (config.json, model.safetensors, vocab.json,
merges.txt, as save_pretrained and the GPT-2 tokenizer files make it)."""
import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.checkpoint import save_checkpoint
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizer import BPETokenizer

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nO Romeo, Romeo, wherefore art "
        "thou Romeo?\n\n") * 20


def example(name):
    sys.path.insert(0, str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def our_run(tmp_path):
    tok = BPETokenizer.train(TEXT, vocab_size=300)
    tl.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    run = tmp_path / "run"
    run.mkdir()
    tok.save(run / "tokenizer.json")
    save_checkpoint(run / "ckpt.safetensors", GPT(cfg).state_dict(), config=cfg.to_dict())
    return run


def labelled_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["label,text"] + [f"{'a' if i % 2 else 'b'},{'light window' if i % 2 else 'Romeo wherefore'} {i}"
                             for i in rng.permutation(40)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_classifier_example_on_our_checkpoint(tmp_path):
    out = tmp_path / "m.json"
    rc = example("finetune_classifier").main(["--data", str(labelled_csv(tmp_path)), "--text-col", "text",
                                              "--label-col", "label", "--init", str(our_run(tmp_path)),
                                              "--epochs", "8", "--lr", "3e-3", "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["classes"] == ["a", "b"] and len(m["history"]) == 8
    assert m["train_acc"] == 1.0  # the two classes' texts differ in every word
    assert 0.0 <= m["majority_baseline"] <= 1.0 and m["wall_s"] > 0


def test_classifier_example_on_a_hugging_face_directory_with_lora(tmp_path, data_dir):
    tl.manual_seed(0)
    hf = GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)).save_pretrained(tmp_path / "hf")
    shutil.copy(data_dir / "gpt2" / "encoder.json", hf / "vocab.json")
    shutil.copy(data_dir / "gpt2" / "vocab.bpe", hf / "merges.txt")
    out = tmp_path / "m.json"
    rc = example("finetune_classifier").main(["--data", str(labelled_csv(tmp_path)), "--init", str(hf),
                                              "--lora-rank", "2", "--epochs", "1", "--out", str(out)])
    assert rc == 0 and json.loads(out.read_text())["trainable"] == "LoRA r=2 + head"


def test_classifier_example_builds_the_shakespeare_speakers_set():
    texts, labels = example("finetune_classifier").shakespeare_lines(TEXT + "NURSE:\nAnon!\n\n", speakers=2)
    assert set(labels) == {"ROMEO", "JULIET"} and len(texts) == 40
    assert texts[0] == "But soft, what light through yonder window breaks?"


def test_instruct_example_writes_responses(tmp_path):
    records = [{"instruction": f"Name speaker {i}.", "input": "", "output": "ROMEO" if i % 2 else "JULIET"}
               for i in range(12)]
    data = tmp_path / "a.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "r" / "responses.json"
    rc = example("finetune_instruct").main(["--data", str(data), "--init", str(our_run(tmp_path)), "--epochs", "1",
                                            "--test-count", "3", "--max-new-tokens", "4", "--lora-rank", "2",
                                            "--out", str(out)])
    assert rc == 0
    got = json.loads(out.read_text())
    assert [r["instruction"] for r in got] == [r["instruction"] for r in records[-3:]]
    assert all(isinstance(r["model_response"], str) for r in got)
    assert out.with_suffix(".adapters.safetensors").exists()


def test_instruct_example_needs_data():
    with pytest.raises(SystemExit):
        example("finetune_instruct").main([])
