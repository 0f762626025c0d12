"""Optimizers, learning-rate schedules and gradient clipping: `from tinygrad_llm import optim`.

Every optimizer keeps the parameters of each group in one flat buffer (see flat.py) and updates
it in place; the Parameter objects and their shapes are unchanged for the user.
"""
from .adam import Adam, AdamW
from .clip import clip_grad_norm_
from .groups import CombinedOptimizer, muon_hybrid, param_groups_for_weight_decay
from .muon import Muon, newton_schulz5
from .optimizer import Optimizer
from .schedules import LRScheduler, constant, nanogpt_lr, warmup_cosine, wsd
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Muon", "newton_schulz5", "clip_grad_norm_",
           "param_groups_for_weight_decay", "muon_hybrid", "CombinedOptimizer", "LRScheduler",
           "constant", "warmup_cosine", "nanogpt_lr", "wsd"]
