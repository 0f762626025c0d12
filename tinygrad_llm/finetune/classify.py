"""Classification fine-tuning: labelled text in, a trained GPTClassifier and its metrics out.

    texts, labels = read_labelled("spam.tsv", text_col="text", label_col="label")
    data = LabelledData.build(texts, labels, tok, max_len=128, val_frac=0.1, seed=0)
    history = fit(clf, data, epochs=3, batch_size=16, lr=5e-5)   # accuracy and loss, train and val

Batches are right-padded (pad_batch): each row's true length goes with it, and the classifier
reads the row at its last real token (see models/classifier.py).
"""
import csv
import time
from dataclasses import dataclass

import numpy as np

from .. import nn, optim
from ..autograd import no_grad


def read_labelled(path, text_col, label_col):
    """(texts, labels) from a CSV (.csv) or tab-separated (.tsv, .txt) file with a header row."""
    delimiter = "\t" if str(path).endswith((".tsv", ".txt")) else ","
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = reader.fieldnames or []
        for col in (text_col, label_col):
            if col not in columns:
                raise ValueError(f"{path}: no column {col!r}; the header has {columns}")
        texts, labels = [], []
        for i, row in enumerate(reader, start=2):
            text, label = row[text_col], row[label_col]
            if text is None or label is None or label == "":
                raise ValueError(f"{path}: line {i} lacks a {text_col!r} or {label_col!r} value")
            texts.append(text)
            labels.append(label)
    if not texts:
        raise ValueError(f"{path}: no rows below the header")
    return texts, labels


def pad_batch(seqs, pad_id=0):
    """(ids (B, T) int64, lengths (B,)) with T the longest sequence, shorter ones padded on the right."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    if len(seqs) == 0 or lengths.min() < 1:
        raise ValueError("pad_batch: every sequence needs at least one token")
    ids = np.full((len(seqs), int(lengths.max())), pad_id, dtype=np.int64)
    for row, s in zip(ids, seqs):
        row[:len(s)] = s
    return ids, lengths


@dataclass
class LabelledData:
    """Token sequences with integer labels, split into train and val; classes[i] names label i."""
    classes: list
    train_x: list
    train_y: np.ndarray
    val_x: list
    val_y: np.ndarray

    @classmethod
    def build(cls, texts, labels, tok, max_len, val_frac=0.1, seed=0):
        """Encode (truncating to the first max_len tokens), number the classes, shuffle and split."""
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise ValueError(f"classification needs at least two classes, got {classes}")
        index = {c: i for i, c in enumerate(classes)}
        encode = getattr(tok, "encode_ordinary", tok.encode)
        seqs = [encode(t)[:max_len] for t in texts]
        keep = [i for i, s in enumerate(seqs) if s]  # an empty text has no last token to read
        y = np.array([index[labels[i]] for i in keep], dtype=np.int64)
        seqs = [seqs[i] for i in keep]
        order = np.random.default_rng(seed).permutation(len(seqs))
        n_val = max(1, int(round(val_frac * len(seqs))))
        val, train = order[:n_val], order[n_val:]
        if len(train) == 0:
            raise ValueError(f"{len(seqs)} examples leave none to train on after a {val_frac:.0%} validation split")
        return cls(classes, [seqs[i] for i in train], y[train], [seqs[i] for i in val], y[val])

    def majority_baseline(self):
        """Val accuracy of always answering the most frequent training class."""
        top = np.bincount(self.train_y, minlength=len(self.classes)).argmax()
        return float((self.val_y == top).mean())


@no_grad()
def evaluate(model, seqs, labels, batch_size=32, pad_id=0):
    """{"loss", "accuracy"} of model on (seqs, labels), in eval mode (dropout off)."""
    total_loss, correct = 0.0, 0
    with model.evaluating():
        for start in range(0, len(seqs), batch_size):
            ids, lengths = pad_batch(seqs[start:start + batch_size], pad_id)
            y = labels[start:start + batch_size]
            logits, loss = model(ids, lengths, y)
            total_loss += loss.item() * len(y)
            correct += int((logits.numpy().argmax(axis=-1) == y).sum())
    n = max(len(seqs), 1)
    return {"loss": total_loss / n, "accuracy": correct / n}


def fit(model, data, epochs=3, batch_size=16, lr=5e-5, weight_decay=0.1, seed=0, pad_id=0,
        eval_batches=None, log=print):
    """Train the parameters that require a gradient with AdamW (state for those alone); after each
    epoch, loss and accuracy on train and val. Returns the history, one dict per epoch."""
    params = nn.trainable_parameters(model)
    if not params:
        raise ValueError("fit: no parameter requires a gradient (see GPTClassifier.set_trainable)")
    opt = optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    history = []
    limit = None if eval_batches is None else eval_batches * batch_size  # cap evaluation cost
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(len(data.train_x))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, lengths = pad_batch([data.train_x[i] for i in rows], pad_id)
            opt.zero_grad()
            _, loss = model(ids, lengths, data.train_y[rows])
            loss.backward()
            opt.step()
        train = evaluate(model, data.train_x[:limit], data.train_y[:limit], batch_size, pad_id)
        val = evaluate(model, data.val_x[:limit], data.val_y[:limit], batch_size, pad_id)
        record = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["accuracy"],
                  "val_loss": val["loss"], "val_acc": val["accuracy"], "seconds": time.perf_counter() - t0}
        history.append(record)
        if log:
            log(f"epoch {epoch}: train loss {train['loss']:.4f} acc {train['accuracy']:.3f} | "
                f"val loss {val['loss']:.4f} acc {val['accuracy']:.3f} | {record['seconds']:.1f}s")
    return history
