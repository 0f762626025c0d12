"""Name scopes: tag the graph nodes made inside a block so pictures and statistics can group them.

    with tl.study.scope(f"h.{i}"):      # the GPT enters one per transformer block
        x = block(x)

Every op created while a scope is open gets `ctx.scope = "h.3"` (nested scopes join with a dot,
like module names: "h.3.attn"). draw_graph clusters nodes by it and collapses blocks that repeat;
record_activations() keeps the mean/std of each scope's last output (the block's output).
Outside any scope the engine pays one `is None` test per op and nothing else.

Threads (the sharded training step runs one forward per shard at once): each thread has its own
stack of open scopes and tags its own nodes. Statistics are recorded from the thread that turned
recording on (or armed the next forward) only, so a sharded step reports its first shard's.
"""
import math
import re
import threading

from .. import autograd
from ..backend import to_numpy

_local = threading.local()  # .stack: names of this thread's open scopes, outermost first;
                            # .last: full scope name -> the last Tensor made inside it
_lock = threading.Lock()
_open = 0          # scopes open in all threads: the engine's hook stays on while any is
_recording = None  # dict name -> stats while record_activations() is on, else None
_armed = None      # one forward pass armed by gradient_health: name -> stats, filled once each
_owner = None      # the thread whose scope outputs _recording / _armed take


def _stack():
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
        _local.last = {}
    return stack


def current():
    """The full dotted name of the innermost open scope of this thread, or None."""
    stack = _stack()
    return ".".join(stack) if stack else None


def _hook(ctx, out):
    stack = _stack()
    if not stack:  # another thread's scope is open, not this one's
        return
    name = ".".join(stack)
    if out._ctx is ctx:  # only nodes that are part of the graph get a scope
        ctx.scope = name
    if (_recording is not None or _armed is not None) and _owner == threading.get_ident():
        _local.last[name] = out


class scope:
    """Context manager: ops made inside belong to the block `name` (see module docstring)."""

    def __init__(self, name):
        if not isinstance(name, str) or not name:
            raise ValueError(f"scope: name must be a non-empty string, got {name!r}")
        self.name = name

    def __enter__(self):
        global _open
        _stack().append(self.name)
        with _lock:
            _open += 1
            autograd.set_scope_hook(_hook)
        return self

    def __exit__(self, *exc):
        global _open
        stack = _stack()
        full = ".".join(stack)
        stack.pop()
        with _lock:
            _open -= 1
            if not _open:
                autograd.set_scope_hook(None)
        out = _local.last.pop(full, None)
        if out is not None:
            _store(full, out)
        return False


def _store(name, out):
    global _armed
    if _owner != threading.get_ident():
        return
    if _recording is not None:
        _recording[name] = activation_stats(out)
    if _armed is not None:
        if name in _armed:  # a second forward pass has begun: the armed one is complete
            _armed_done.update(_armed)
            _armed = None
        else:
            _armed[name] = activation_stats(out)


_armed_done = {}  # the statistics of the last armed forward pass, until taken


def arm_next_forward():
    """Record the scope outputs of this thread's next forward pass (each scope once), for
    take_recorded()."""
    global _armed, _owner
    _armed, _owner = {}, threading.get_ident()


def take_recorded():
    """The statistics of the armed forward pass (or what it has so far), then forget them."""
    global _armed
    stats = dict(_armed_done)
    if _armed:
        stats.update(_armed)
    _armed_done.clear()
    _armed = None
    if not _stack():
        _local.last.clear()
    return stats


def activation_stats(t):
    """mean, std and max |x| of a tensor's data, as Python floats (one pass each, float64 sums)."""
    a = to_numpy(t.data if hasattr(t, "data") else t)
    if a.size == 0:
        return {"mean": 0.0, "std": 0.0, "absmax": 0.0}
    mean = float(a.mean(dtype="float64"))
    std = float(a.std(dtype="float64"))
    absmax = float(abs(a).max())
    return {"mean": mean, "std": std, "absmax": absmax if math.isfinite(absmax) else float("inf")}


class record_activations:
    """Context manager: while on, each scope's output statistics land in `.stats` (name -> dict).

    with record_activations() as rec:
        logits, loss = model(idx, targets)
    rec.stats  # {"h.0": {"mean": ..., "std": ..., "absmax": ...}, ...}
    """

    def __init__(self):
        self.stats = {}

    def __enter__(self):
        global _recording, _owner
        self._prev, _recording = (_recording, _owner), self.stats
        _owner = threading.get_ident()
        return self

    def __exit__(self, *exc):
        global _recording, _owner
        _recording, _owner = self._prev
        _stack()
        _local.last.clear()
        return False


def record_activation(name, tensor):
    """Record one tensor's statistics under `name` (e.g. the logits) when recording is on."""
    if (_recording is not None or _armed is not None) and _owner == threading.get_ident():
        _store(name, tensor)


_BLOCK_NAME = re.compile(r"(?:^|\.)([A-Za-z_]\w*\.\d+)$")


def scope_blocks(model, children=True):
    """Open a scope around every numbered submodule of `model` ("transformer.h.3" -> "h.3"), and
    around each of its direct children ("h.3.attn", "h.3.mlp"), without changing the model's code.
    A child whose class sets `scope_children = True` (the MoE layer, MLA) has its own children
    scoped too ("h.3.mlp.gate", "h.3.mlp.experts", "h.3.attn.kv_b_proj").

    It sets an instance-level `forward` that enters the scope and calls the class's forward, so
    parameters, state_dict and results are untouched. Calling it twice changes nothing. Returns
    the scope names it installed.
    """
    named = list(model.named_modules()) if hasattr(model, "named_modules") else []
    installed = []
    for name, module in named:
        m = _BLOCK_NAME.search(name)
        if m is None:
            continue
        _wrap(module, m.group(1), installed)
        if children:
            for child_name, child in getattr(module, "_modules", {}).items():
                if child is not None:
                    _wrap(child, child_name, installed, prefix=m.group(1))
                    if getattr(type(child), "scope_children", False):
                        for name2, grandchild in child._modules.items():
                            if grandchild is not None:
                                _wrap(grandchild, name2, installed, prefix=f"{m.group(1)}.{child_name}")
    return installed


def _wrap(module, name, installed, prefix=None):
    if "forward" in vars(module) and getattr(vars(module)["forward"], "_study_scope", None):
        installed.append(vars(module)["forward"]._study_scope)
        return
    forward = type(module).forward.__get__(module)

    def scoped_forward(*args, **kwargs):
        with scope(name):
            return forward(*args, **kwargs)

    scoped_forward._study_scope = name if prefix is None else f"{prefix}.{name}"
    object.__setattr__(module, "forward", scoped_forward)
    installed.append(scoped_forward._study_scope)
