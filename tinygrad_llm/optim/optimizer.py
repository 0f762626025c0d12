"""The Optimizer base: parameter groups, flat buckets, zero_grad and state dicts.

Subclasses name their per-parameter state (`state_names`) and write `_update(group, bucket)`,
which updates one flat bucket in place (see flat.py for why the parameters are flat).

param_groups is a list of dicts as in PyTorch: {"params": [...], "lr": ..., ...}; a group's
hyperparameters may be changed between steps (`opt.param_groups[0]["lr"] = 1e-4`).

state_dict() has PyTorch's layout, with parameters numbered in group order:
    {"state": {i: {"step": int, <state name>: np.ndarray shaped like param i}},
     "param_groups": [{<hyperparameters>, "params": [i, ...]}]}
so it does not depend on how the parameters are packed.
"""
import numpy as np

from .. import backend
from ..autograd import no_grad
from ..tensor import Tensor
from .flat import FlatBucket


class Optimizer:
    state_names = ()  # per-parameter state arrays a subclass keeps (flat, one per bucket)

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups, self._buckets = [], []  # _buckets[i]: the FlatBuckets of group i
        params = list(params.values()) if isinstance(params, dict) else list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    def add_param_group(self, group):
        group = dict(group)
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(ps):
            if not isinstance(p, Tensor) or not backend.is_float(p.dtype):
                raise TypeError(f"{type(self).__name__}: parameter {i} of group {len(self.param_groups)} "
                                f"is not a floating-point Tensor ({type(p).__name__})")
            if not p.is_leaf:
                raise ValueError(f"{type(self).__name__}: parameter {i} (shape {p.shape}) is not a leaf "
                                 "tensor; optimize the leaves, not results of ops")
            if id(p) in seen:
                raise ValueError(f"{type(self).__name__}: parameter {i} (shape {p.shape}) appears in "
                                 "more than one group (or twice in one)")
            seen.add(id(p))
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        group["params"] = ps
        self._check_group(group)
        self.param_groups.append(group)
        self._buckets.append(self._bucketize(ps) if ps else [])

    def _check_group(self, group):
        """Subclasses validate hyperparameters here (clear errors naming the bad value)."""
        if group.get("lr", 0.0) < 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {group['lr']}")

    def _bucketize(self, params):
        by_kind = {}
        for p in params:  # one bucket per (device, dtype), in first-seen order
            by_kind.setdefault((p.device, p.data.dtype), []).append(p)
        return [FlatBucket(ps, self.state_names) for ps in by_kind.values()]

    # --- the step -------------------------------------------------------------------------------
    @no_grad()
    def step(self):
        for gi, group in enumerate(self.param_groups):
            buckets = self._buckets[gi]
            if any(b.needs_rebuild() for b in buckets):
                buckets = self._rebuild(gi)
            for b in buckets:
                if b.gather_grads():
                    b.step += 1
                    self._update(group, b)

    def zero_grad(self, set_to_none=False):
        """Zero the gradients. By default each parameter's .grad becomes a zeroed view into the
        group's flat gradient, so the next backward accumulates into it and step() copies
        nothing; set_to_none=True drops them instead (as PyTorch's default does)."""
        for buckets in self._buckets:
            for b in buckets:
                b.zero_grad(set_to_none)

    def _rebuild(self, gi):
        """Re-pack group gi after its parameters moved device or dtype, carrying the state over."""
        old = self._buckets[gi]
        saved = {}
        for b in old:
            for p, lo, hi in b.slices():
                saved[id(p)] = ({k: backend.to_numpy(v[lo:hi]) for k, v in b.state.items()}, b.step)
        new = self._bucketize(self.param_groups[gi]["params"])
        for b in new:
            for p, lo, hi in b.slices():
                st, step = saved[id(p)]
                for k, v in st.items():
                    b.state[k][lo:hi] = backend.to_device(v, b.device) if b.device != "cpu" else v
                b.step = step
        self._buckets[gi] = new
        return new

    # --- state dicts ------------------------------------------------------------------------------
    def state_dict(self):
        state, groups, index = {}, [], 0
        where = {}  # id(param) -> (bucket, lo, hi)
        for buckets in self._buckets:
            for b in buckets:
                for p, lo, hi in b.slices():
                    where[id(p)] = (b, lo, hi)
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                b, lo, hi = where[id(p)]
                entry = {"step": b.step}
                for k, v in b.state.items():
                    entry[k] = np.array(backend.to_numpy(v[lo:hi])).reshape(p.shape)  # a copy
                state[index] = entry
                ids.append(index)
                index += 1
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore state and hyperparameters saved by state_dict() (the groups must hold the same
        number of parameters with the same shapes; errors name the parameter and both shapes)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: {len(saved_groups)} param groups "
                             f"saved, this optimizer has {len(self.param_groups)}")
        for gi, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"{type(self).__name__}.load_state_dict: group {gi} saved with "
                                 f"{len(sg['params'])} parameters, this one has {len(g['params'])}")
        state = state_dict["state"]
        problems = []
        for sg, g in zip(saved_groups, self.param_groups):
            for idx, p in zip(sg["params"], g["params"]):
                for k, v in state.get(idx, state.get(str(idx), {})).items():
                    if k != "step" and tuple(np.shape(v)) != tuple(p.shape):
                        problems.append(f"param {idx} {k}: saved shape {tuple(np.shape(v))} vs "
                                        f"parameter shape {tuple(p.shape)}")
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        for gi, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            for k, v in sg.items():
                if k != "params":
                    g[k] = v
            buckets = self._buckets[gi]
            if any(b.needs_rebuild() for b in buckets):
                buckets = self._rebuild(gi)
            where = {id(p): (b, lo, hi) for b in buckets for p, lo, hi in b.slices()}
            for idx, p in zip(sg["params"], g["params"]):
                b, lo, hi = where[id(p)]
                entry = state.get(idx, state.get(str(idx)))
                if entry is None:  # saved before its first step
                    for v in b.state.values():
                        v[lo:hi] = 0
                    b.step = 0
                    continue
                b.step = int(entry.get("step", 0))
                for k, v in b.state.items():
                    if k not in entry:
                        raise KeyError(f"{type(self).__name__}.load_state_dict: param {idx} has no "
                                       f"saved {k!r}")
                    arr = np.asarray(entry[k]).reshape(-1)
                    v[lo:hi] = backend.to_device(arr, b.device) if b.device != "cpu" else arr

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, g in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} params, {hyper}")
        return "\n".join(lines) + "\n)"
