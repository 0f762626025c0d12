"""Gradient health during training: are the gradients and updates of each layer in a sane range?

    health = gradient_health(model, optimizer)      # after backward (and step), every N steps

returns a JSON-ready dict:

    grad_norm        total L2 norm of all gradients
    groups           per parameter group ("h.*.attn.c_attn": the same layer across blocks):
                     grad_norm, weight_norm, grad_weight_ratio (|g| / |W|),
                     update_ratio (|W - W_prev| / |W_prev| per step since the previous call)
    lr               the optimizer's learning rate, when it has one
    activations      mean/std/absmax of each study.scope's output (the blocks) and of anything given
                     to study.record_activation, from the most recent recorded forward pass
    routing          per mixture-of-experts layer ("h.1.mlp"), since the previous call: tokens,
                     load (tokens per expert), load_share, and the router's mean entropy (nats)
                     with its maximum log E; found on any module with take_routing_stats()

A healthy run keeps update_ratio near 1e-3 per step (Karpathy's rule of thumb) and gradient
norms of the same order across groups; a group whose ratio is orders of magnitude off is
learning too fast or not at all. The update ratio compares the weights with a copy kept from the
previous call (one extra copy of the weights), divided by the optimizer steps in between.
Activation statistics come from forward passes run while recording: gradient_health scopes the
model's numbered blocks (study.scope_blocks, once) and turns recording on for the next forward
pass after each call, so from its second call on it reports the block outputs of the forward
that followed the previous call; wrap a forward in study.record_activations() to choose one.
"""
import re
import weakref

import numpy as np

from ..backend import to_numpy
from . import scope as _scope

_DIGITS = re.compile(r"\.\d+\.")
_previous = weakref.WeakKeyDictionary()  # model -> {"weights": {name: array}, "step": int}
_previous_plain = {}  # id(model) -> (model, same) for models that take no weak reference (dicts)


def group_name(param_name):
    """'h.3.attn.c_attn.weight' -> 'h.*.attn.c_attn': one group per layer kind, all blocks together."""
    name = _DIGITS.sub(".*.", "." + param_name + ".").strip(".")
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _sq(a):
    a = a.astype(np.float64, copy=False)
    return float(np.dot(a.ravel(), a.ravel()))


def _optimizer_steps(optimizer):
    for attr in ("step_count", "t", "steps", "_step"):
        v = getattr(optimizer, attr, None)
        if isinstance(v, (int, np.integer)):
            return int(v)
    state = getattr(optimizer, "state", None)
    if isinstance(state, dict):
        for s in state.values():
            v = s.get("step") if isinstance(s, dict) else None
            if isinstance(v, (int, np.integer)):
                return int(v)
    return None


def _learning_rate(optimizer):
    if optimizer is None:
        return None
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        lr = groups[0].get("lr") if isinstance(groups[0], dict) else None
        if lr is not None:
            return float(lr)
    lr = getattr(optimizer, "lr", None)
    return float(lr) if isinstance(lr, (int, float, np.floating)) else None


def gradient_health(model, optimizer=None, activations=None, record_next=True):
    """Per-group gradient norms, update/weight ratios and activation statistics (see module doc).

    model: anything with named_parameters() (or a {name: Tensor} dict). optimizer: used for the
    learning rate and its step count. activations: a dict of stats to report instead of the
    recorder's. record_next: record activations during the next forward pass.
    """
    named = model.named_parameters() if hasattr(model, "named_parameters") else model
    named = list(named.items() if isinstance(named, dict) else named)
    if not named:
        raise ValueError("gradient_health: the model has no parameters")
    steps = _optimizer_steps(optimizer) if optimizer is not None else None
    prev = _get_previous(model)
    elapsed = None
    if prev is not None:
        elapsed = (steps - prev["step"]) if steps is not None and prev["step"] is not None else 1
    groups, total_sq, snapshot = {}, 0.0, {}
    for name, p in named:
        w = to_numpy(p.data)
        g = None if p.grad is None else to_numpy(p.grad.data)
        s = groups.setdefault(group_name(name), {"params": 0, "_g": 0.0, "_w": 0.0, "_dw": 0.0,
                                                "_wprev": 0.0, "_has_prev": True})
        s["params"] += int(w.size)
        s["_w"] += _sq(w)
        if g is not None:
            gsq = _sq(g)
            s["_g"] += gsq
            total_sq += gsq
        old = None if prev is None else prev["weights"].get(name)
        if old is not None and old.shape == w.shape:
            s["_dw"] += _sq(w.astype(np.float64) - old)
            s["_wprev"] += _sq(old)
        else:
            s["_has_prev"] = False
        snapshot[name] = w.copy()
    out_groups = {}
    for gname, s in groups.items():
        wn, gn = s["_w"] ** 0.5, s["_g"] ** 0.5
        entry = {"grad_norm": gn, "weight_norm": wn, "grad_weight_ratio": gn / wn if wn > 0 else None,
                 "params": s["params"]}
        if s["_has_prev"] and prev is not None and elapsed and elapsed > 0 and s["_wprev"] > 0:
            entry["update_ratio"] = (s["_dw"] ** 0.5) / (s["_wprev"] ** 0.5) / elapsed
        out_groups[gname] = entry
    _set_previous(model, {"weights": snapshot, "step": steps})
    result = {"grad_norm": total_sq ** 0.5, "groups": out_groups}
    lr = _learning_rate(optimizer)
    if lr is not None:
        result["lr"] = lr
    routing = routing_health(model)
    if routing:
        result["routing"] = routing
    acts = activations if activations is not None else _scope.take_recorded()
    if acts:
        result["activations"] = acts
    if record_next:
        _scope.scope_blocks(model)  # block outputs are recorded at their scope's exit
        _scope.arm_next_forward()
    return result


def routing_health(model):
    """{layer name: its routing statistics} for every module of model that reports them (an MoE
    layer's take_routing_stats: what its router did since the last call)."""
    out = {}
    for name, module in (model.named_modules() if hasattr(model, "named_modules") else ()):
        take = getattr(module, "take_routing_stats", None)
        stats = take() if callable(take) else None
        if stats:
            out[name.removeprefix("transformer.")] = stats
    return out


def _get_previous(model):
    try:
        return _previous.get(model)
    except TypeError:
        kept = _previous_plain.get(id(model))
        return kept[1] if kept is not None and kept[0] is model else None


def _set_previous(model, value):
    try:
        _previous[model] = value
    except TypeError:
        _previous_plain[id(model)] = (model, value)
