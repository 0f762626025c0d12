"""Learning-rate schedules as plain functions of the step, and LRScheduler to apply them.

A schedule is any callable step -> float. The factories below return multipliers in [0, 1] (of
each group's base lr); `nanogpt_lr` is nanoGPT's absolute get_lr. Plug either into any optimizer:

    sched = optim.LRScheduler(opt, optim.warmup_cosine(warmup=100, total=5000, floor=0.1))
    for it in range(5000):
        ...; opt.step(); sched.step()

LRScheduler sets every group's lr at construction (for step 0) and after each step():
lr = base_lr * fn(step) (the default; base_lr is the group's lr when the scheduler was made, so
a Muon + AdamW hybrid keeps its two lrs in proportion), or lr = fn(step) with absolute=True.
Its state_dict (step and base lrs) goes into checkpoints, so a resumed run continues exactly.
"""
import math


def linear_warmup(step, warmup):
    """(step + 1) / (warmup + 1) during the warmup, as nanoGPT: step 0 already moves, and step
    `warmup`, the first after it, is at 1. Every schedule here starts with it."""
    return (step + 1) / (warmup + 1)


def constant(warmup=0):
    """1 after a linear warmup of `warmup` steps (none by default)."""
    if warmup < 0:
        raise ValueError(f"constant: need warmup >= 0, got {warmup}")
    return lambda step: linear_warmup(step, warmup) if step < warmup else 1.0


def warmup_cosine(warmup, total, floor=0.1):
    """Linear warmup over `warmup` steps, then a half cosine from 1 down to `floor` at step
    `total`, then `floor` (nanoGPT's get_lr, as a multiplier: floor = min_lr / max_lr)."""
    if warmup < 0 or total <= warmup:
        raise ValueError(f"warmup_cosine: need 0 <= warmup < total, got warmup={warmup}, total={total}")

    def fn(step):
        if step < warmup:
            return linear_warmup(step, warmup)
        if step > total:
            return floor
        ratio = (step - warmup) / (total - warmup)
        return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1.0 - floor)
    return fn


def nanogpt_lr(learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """nanoGPT's get_lr(it), absolute (use with LRScheduler(..., absolute=True))."""
    mult = warmup_cosine(warmup_iters, lr_decay_iters, floor=min_lr / learning_rate)
    return lambda step: learning_rate * mult(step)


def wsd(warmup, total, decay=0.2, floor=0.0, shape="linear"):
    """Warmup-stable-decay: linear warmup, flat at 1, then down to `floor` over the last
    `decay` fraction of `total` steps (shape "linear", "sqrt" i.e. 1 - sqrt(progress), or
    "cosine"); `floor` after `total`."""
    if shape not in ("linear", "sqrt", "cosine"):
        raise ValueError(f"wsd: shape must be 'linear', 'sqrt' or 'cosine', got {shape!r}")
    decay_steps = int(round(decay * total))
    start = total - decay_steps
    if warmup < 0 or start < warmup or not 0.0 <= decay <= 1.0:
        raise ValueError(f"wsd: need 0 <= warmup <= total * (1 - decay); got warmup={warmup}, "
                         f"total={total}, decay={decay}")

    def fn(step):
        if step < warmup:
            return linear_warmup(step, warmup)
        if step < start:
            return 1.0
        if step >= total:
            return floor
        x = (step - start) / decay_steps  # progress through the decay, in [0, 1)
        f = {"linear": 1.0 - x, "sqrt": 1.0 - math.sqrt(x),
             "cosine": 0.5 * (1.0 + math.cos(math.pi * x))}[shape]
        return floor + (1.0 - floor) * f
    return fn


class LRScheduler:
    """Sets every param group's lr from fn(step); see the module docstring."""

    def __init__(self, optimizer, fn, absolute=False):
        self.optimizer, self.fn, self.absolute = optimizer, fn, absolute
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def _apply(self):
        f = self.fn(self.last_step)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = f if self.absolute else base * f

    def step(self):
        self.last_step += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs), "absolute": self.absolute}

    def load_state_dict(self, state):
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"LRScheduler.load_state_dict: {len(state['base_lrs'])} base lrs saved, "
                             f"the optimizer has {len(self.optimizer.param_groups)} groups")
        self.last_step, self.base_lrs = int(state["last_step"]), list(state["base_lrs"])
        self.absolute = bool(state.get("absolute", self.absolute))
        self._apply()
