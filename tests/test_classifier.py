"""GPTClassifier and finetune/classify.py on tiny models the tests build: it overfits a small
labelled set, padding cannot change a row's logits, the trainable-layer choices train exactly
what they name, and labelled files are read (or refused) with clear messages."""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import nn, optim
from tinygrad_llm.finetune.classify import LabelledData, evaluate, fit, pad_batch, read_labelled
from tinygrad_llm.models import GPT, GPTClassifier, GPTConfig


def tiny_classifier(num_classes=3, seed=0):
    tl.manual_seed(seed)
    return GPTClassifier(GPTConfig(vocab_size=31, block_size=16, n_layer=2, n_head=2, n_embd=16), num_classes)


def small_set(n=12, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, 31, rng.integers(2, 12)).tolist() for _ in range(n)]
    return seqs, rng.integers(0, 3, n)


def test_classifier_overfits_a_small_labelled_set():
    clf = tiny_classifier()
    seqs, labels = small_set()
    ids, lengths = pad_batch(seqs)
    opt = optim.AdamW(clf.set_trainable("all"), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(80):
        opt.zero_grad()
        _, loss = clf(ids, lengths, labels)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    metrics = evaluate(clf, seqs, labels, batch_size=5)
    assert metrics["accuracy"] == 1.0 and metrics["loss"] < 0.05 < first


def test_padding_never_changes_a_rows_logits():
    clf = tiny_classifier()
    seqs, _ = small_set(6, seed=1)
    ids, lengths = pad_batch(seqs, pad_id=0)
    batched, _ = clf(ids, lengths)
    garbage = ids.copy()
    for row, n in zip(garbage, lengths):  # whatever fills the padding, the answer is the same
        row[n:] = np.random.default_rng(int(n)).integers(0, 31, len(row) - n)
    np.testing.assert_allclose(clf(garbage, lengths)[0].numpy(), batched.numpy(), rtol=0, atol=1e-6)
    for i, s in enumerate(seqs):
        alone, _ = clf(np.array([s]))
        np.testing.assert_allclose(alone.numpy()[0], batched.numpy()[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["head", 1, "all"])
def test_set_trainable_trains_what_it_names(which):
    clf = tiny_classifier()
    trainable = clf.set_trainable(which)
    seqs, labels = small_set(4)
    ids, lengths = pad_batch(seqs)
    _, loss = clf(ids, lengths, labels)
    loss.backward()
    got = {n for n, p in clf.named_parameters() if p.grad is not None}
    assert got == {n for n, p in clf.named_parameters() if p.requires_grad}
    assert len(trainable) == len(got)
    if which == "head":
        assert got == {"head.weight", "head.bias"}
    elif which == 1:
        assert got == {"head.weight", "head.bias", "gpt.transformer.ln_f.weight", "gpt.transformer.ln_f.bias"} | {
            n for n, _ in clf.named_parameters() if n.startswith("gpt.transformer.h.1.")}
    else:
        assert len(got) == len(list(clf.parameters()))
    with pytest.raises(ValueError, match="'head', 'all' or a number of last blocks"):
        clf.set_trainable(3)


def test_classifier_wraps_a_pretrained_gpt_and_checks_its_inputs():
    tl.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=31, block_size=16, n_layer=1, n_head=2, n_embd=16))
    clf = GPTClassifier(gpt, 2)
    assert clf.gpt is gpt and clf.head.weight.shape == (2, 16)
    with pytest.raises(ValueError, match=r"lengths must be \(B,\) = \(2,\) values in \[1, 3\]"):
        clf(np.ones((2, 3), np.int64), lengths=[0, 3])
    with pytest.raises(ValueError, match=r"labels must be \(B,\) = \(2,\) integers in \[0, 2\)"):
        clf(np.ones((2, 3), np.int64), labels=[0, 2])
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        GPTClassifier(gpt, 1)


def test_fit_reports_train_and_val_metrics_and_keeps_state_for_trainable_only():
    clf = tiny_classifier(num_classes=2)
    clf.set_trainable("head")
    seqs, labels = small_set(20, seed=3)
    data = LabelledData([0, 1], seqs[:16], labels[:16] % 2, seqs[16:], labels[16:] % 2)
    history = fit(clf, data, epochs=2, batch_size=8, lr=1e-2, log=None)
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(history[0])
    assert 0.0 <= history[-1]["val_acc"] <= 1.0


class CharTok:
    def encode(self, text):
        return [1 + (ord(c) % 30) for c in text]


def test_labelled_files_and_split(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('label,text\nham,"hello, there"\nspam,win money\nham,see you\nham,ok\n')
    texts, labels = read_labelled(csv_path, "text", "label")
    assert texts[0] == "hello, there" and labels == ["ham", "spam", "ham", "ham"]
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text("label\ttext\nham\thi\nspam\tbuy now\n")
    assert read_labelled(tsv_path, "text", "label") == (["hi", "buy now"], ["ham", "spam"])
    with pytest.raises(ValueError, match=r"no column 'message'; the header has \['label', 'text'\]"):
        read_labelled(csv_path, "message", "label")
    data = LabelledData.build(texts, labels, CharTok(), max_len=4, val_frac=0.25, seed=0)
    assert data.classes == ["ham", "spam"] and len(data.val_x) == 1 and len(data.train_x) == 3
    assert all(len(s) <= 4 for s in data.train_x)
    top = np.bincount(data.train_y).argmax()
    assert data.majority_baseline() == float(data.val_y[0] == top)


def test_pad_batch():
    ids, lengths = pad_batch([[5, 6, 7], [8]], pad_id=9)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [8, 9, 9]])
    np.testing.assert_array_equal(lengths, [3, 1])
    with pytest.raises(ValueError, match="at least one token"):
        pad_batch([[1], []])


def test_lora_on_a_classifier_trains_adapters_and_head():
    clf = tiny_classifier(num_classes=2)
    nn.apply_lora(clf.gpt, rank=2, alpha=4)
    for p in clf.head.parameters():
        p.requires_grad_(True)
    names = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert names == {"head.weight", "head.bias"} | {n for n in names if n.endswith(("lora_A", "lora_B"))}
    assert sum(n.endswith("lora_A") for n in names) == 3 * 2  # c_attn, attn.c_proj, mlp.c_proj; 2 blocks
