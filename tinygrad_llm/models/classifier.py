"""GPTClassifier: a GPT whose language-model head gives way to a classification head.

    clf = GPTClassifier(GPT.from_safetensors("gpt2"), num_classes=2)
    clf.set_trainable("head")            # or an int N: the last N blocks, ln_f and the head; "all"
    logits, loss = clf(ids, lengths, labels)   # ids (B, T) right-padded, lengths (B,)

The head reads the hidden state of each sequence's last real token: under causal attention it is
the only position that has seen the whole text. Sequences are padded on the right, so that token
sits at lengths - 1 and attends only to positions before it: no real token ever looks at padding,
and whatever ids fill the padding cannot change the logits (tested). Positions after it are
computed and thrown away.
"""
import numpy as np

from .. import functional as F
from .. import nn
from ..tensor import Tensor
from .gpt import GPT, GPTConfig


class GPTClassifier(nn.Module):
    """The GPT's body (as self.gpt, its names unchanged under "gpt.") and head: Linear(n_embd, num_classes)."""

    def __init__(self, config_or_gpt, num_classes, dtype=None):
        super().__init__()
        if isinstance(config_or_gpt, GPT):
            gpt = config_or_gpt
        elif isinstance(config_or_gpt, (GPTConfig, dict)):
            gpt = GPT(config_or_gpt, dtype=dtype)
        else:
            raise TypeError(f"GPTClassifier: expected a GPT or a GPTConfig, got {type(config_or_gpt).__name__}")
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"GPTClassifier: num_classes must be an integer >= 2, got {num_classes!r}")
        self.gpt, self.num_classes = gpt, int(num_classes)
        w = gpt.lm_head.weight
        self.head = nn.Linear(gpt.config.n_embd, self.num_classes, dtype=w.dtype, device=w.device)

    @property
    def config(self):
        return self.gpt.config

    def forward(self, idx, lengths=None, labels=None):
        """(logits (B, num_classes), mean cross-entropy against labels (B,) or None).

        lengths (B,): the number of real tokens in each row of idx (B, T); None means every row
        is full. The row's class is read at position lengths - 1.
        """
        data = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if data.ndim != 2:
            raise ValueError(f"GPTClassifier: idx must be (B, T) token ids, got shape {data.shape}")
        B, T = data.shape
        lengths = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
        if lengths.shape != (B,) or (B and (lengths.min() < 1 or lengths.max() > T)):
            raise ValueError(f"GPTClassifier: lengths must be (B,) = ({B},) values in [1, {T}], "
                             f"got shape {lengths.shape} and values {lengths[:8].tolist()}")
        x = self.gpt.hidden_states(data)  # (B, T, C)
        last = x[np.arange(B), lengths - 1]  # (B, C): each row's last real token
        logits = self.head(last)  # (B, num_classes)
        if labels is None:
            return logits, None
        labels = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
        fits = labels.shape == (B,) and labels.dtype.kind in "iu"
        if not fits or (B and not 0 <= labels.min() <= labels.max() < self.num_classes):
            raise ValueError(f"GPTClassifier: labels must be (B,) = ({B},) integers in [0, {self.num_classes}), "
                             f"got {labels.dtype} {labels.shape}")
        return logits, F.cross_entropy(logits, labels)

    def set_trainable(self, which="all"):
        """Which parameters train: "head", an int N (the last N blocks, the final norm and the
        head, as Raschka's book fine-tunes), or "all". Returns the trainable parameters."""
        n_layer = self.config.n_layer
        if which == "all":
            train = set(id(p) for p in self.parameters())
        elif which == "head":
            train = set(id(p) for p in self.head.parameters())
        elif isinstance(which, (int, np.integer)) and not isinstance(which, bool) and 0 <= which <= n_layer:
            mods = [self.head, self.gpt.transformer.ln_f] + list(self.gpt.transformer.h)[n_layer - which:]
            train = set(id(p) for m in mods for p in m.parameters())
        else:
            raise ValueError(f"set_trainable: expected 'head', 'all' or a number of last blocks in "
                             f"[0, {n_layer}], got {which!r}")
        for p in self.parameters():
            p.requires_grad_(id(p) in train)
        return [p for p in self.parameters() if p.requires_grad]
