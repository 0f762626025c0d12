"""Configs as dataclasses that round-trip through JSON (checkpoints, the CLI, metrics files)."""
import math
import numbers
from dataclasses import asdict, fields


class DictConfig:
    """Mixin for a dataclass: to_dict(), and from_dict() that names unknown keys instead of
    dropping them (a typo in a config file must not fall back to a default silently)."""

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def check_range(label, value, interval):
    """Raise ValueError naming `label` unless value is a finite number inside `interval`,
    written as in maths: "[1, inf)", "(0, inf)", "[0, 1)", "(0, 1]".

    >>> check_range("lr", float("nan"), "(0, inf)")
    Traceback (most recent call last):
    ...
    ValueError: lr nan: must be a finite number in (0, inf)
    """
    lo, hi = (float(s) for s in interval[1:-1].split(","))
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (lo < value if interval[0] == "(" else lo <= value) and \
             (value < hi if interval[-1] == ")" else value <= hi)
    if not ok:
        raise ValueError(f"{label} {value!r}: must be a finite number in {interval}")


# Named training recipes: overrides of the device preset (cli/train.py PRESETS), model, tokenizer
# and training fields together. `python -m tinygrad_llm train --preset qt-tiny`; flags still win.
TRAIN_PRESETS = {
    # the shape of a from-scratch "qt" model (GQA, ALiBi, RMSNorm, GELU, WSD, AdamW beta2 0.95),
    # scaled down to a CPU: 6 layers x 192 wide (2.56M parameters with a 1024-token BPE, tied head),
    # 6 query heads on 2 k/v heads (head size 32), T=128, no biases, no dropout. Each optimizer step
    # is 8 rows x 4 accumulated micro-batches x 128 tokens = 4,096 tokens; 1,500 steps (about 6.1M
    # tokens) with 100 warmup steps, a stable phase, then a linear cooldown over the last 20%
    # (300 steps) to 0.1 x lr. ALiBi also lets the result run past T=128 (sample --block-size).
    "qt-tiny": dict(tokenizer="bpe", vocab_size=1024,
                    n_layer=6, n_head=6, n_kv_head=2, n_embd=192, block_size=128, pos="alibi",
                    norm="rmsnorm", mlp="gelu", bias=False, dropout=0.0,
                    optimizer="adamw", lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.1, grad_clip=1.0,
                    schedule="wsd", warmup_iters=100, decay_frac=0.2, min_lr_ratio=0.1,
                    batch_size=8, grad_accum=4, max_iters=1500, max_seconds=0.0,
                    eval_every=250, eval_iters=20, log_every=50),
}
