"""Module, Parameter and the two containers (ModuleList, Sequential).

A Module registers what is assigned to it: a Parameter becomes a parameter, a Module a child,
and `register_buffer` adds a tensor that is state but not trained (RoPE tables, masks). Names are
dotted paths from the root (`h.0.attn.c_attn.weight`), as in PyTorch, so checkpoints read as a
straight copy.

State dicts map those names to NumPy arrays (CPU copies). Loading copies *into* the existing
arrays, never rebinding them: a parameter whose `.data` is a view into an optimizer's flat buffer
stays that view (see optim/flat.py).
"""
import contextlib
from collections import OrderedDict, namedtuple

import numpy as np

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module trains: requires_grad=True, and registered on assignment."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data)
        if requires_grad:
            self.requires_grad_(True)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class StateDictError(KeyError):
    """A state dict does not fit the module: the message lists every missing, unexpected and
    wrong-shaped key at once."""

    def __str__(self):  # KeyError would quote the message
        return self.args[0]


LoadResult = namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of every layer and model: subclasses set attributes in __init__ and define
    forward(); calling the module calls forward."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # --- registration ---------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning "
                                 f"attribute {name!r}")
        params, bufs, mods = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            bufs.pop(name, None), mods.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None), bufs.pop(name, None)
            mods[name] = value
        elif name in bufs:  # reassigning a buffer keeps it a buffer
            if value is not None and not isinstance(value, Tensor):
                value = Tensor(value)
            bufs[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"{type(self).__name__}.{name} is a parameter: assign a Parameter "
                                f"or None, not {type(value).__name__}")
            del params[name]
        elif name in mods:
            del mods[name]
        # the attribute lives in __dict__ too, so reading it back is a plain (fast) lookup
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        self._non_persistent.discard(name)
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Add a parameter (or None, a declared-but-absent slot like a missing bias)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}): expected a Parameter or None, "
                            f"got {type(param).__name__}")
        setattr(self, name, param)

    def register_buffer(self, name, tensor, persistent=True):
        """Add state that is not trained (a Tensor or array, or None). Persistent buffers go into
        state_dict(); non-persistent ones (caches that can be recomputed) do not."""
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(tensor)
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)
        object.__setattr__(self, name, tensor)

    # --- traversal --------------------------------------------------------------------------------
    def children(self):
        return iter(self._modules.values())

    def named_children(self):
        return iter(self._modules.items())

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every descendant, each module once."""
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            kids = [(f"{name}.{k}" if name else k, m) for k, m in mod._modules.items() if m is not None]
            stack.extend(reversed(kids))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix="", remove_duplicate=True):
        """(dotted name, Parameter) in registration order; a tied parameter appears once (under
        its first name) unless remove_duplicate=False."""
        seen = set()
        for mname, mod in self.named_modules(prefix):
            for pname, p in mod._parameters.items():
                if p is None or (remove_duplicate and id(p) in seen):
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix=""):
        for mname, mod in self.named_modules(prefix):
            for bname, b in mod._buffers.items():
                if b is not None:
                    yield (f"{mname}.{bname}" if mname else bname), b

    def buffers(self):
        return (b for _, b in self.named_buffers())

    def num_parameters(self, trainable_only=False):
        """Total element count of the (deduplicated: tied weights count once) parameters."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # --- modes, gradients, devices --------------------------------------------------------------
    def train(self, mode=True):
        """Set the training flag on this module and every descendant (dropout honours it)."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def evaluating(self):
        """`with model.evaluating():` eval mode (dropout off) inside, the previous mode restored
        after, also when the body raises. Evaluation and generation run inside one."""
        was_training = self.training
        self.eval()
        try:
            yield self
        finally:
            self.train(was_training)

    def zero_grad(self, set_to_none=True):
        """Drop every parameter's .grad (or fill it with zeros, keeping the array)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.data[...] = 0

    def to(self, device):
        """Move every parameter and buffer to `device` in place: the Parameter objects stay the
        same (an optimizer holding them follows; see optim/flat.py), their .data is replaced."""
        backend.check_device(device)
        for p in self.parameters():
            if p.device != device:
                p.data = backend.to_device(p.data, device)
                if p.grad is not None:
                    p.grad = Tensor(backend.to_device(p.grad.data, device))
        for mod in self.modules():
            for name, b in mod._buffers.items():
                if b is not None and b.device != device:
                    b.data = backend.to_device(b.data, device)
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def apply(self, fn):
        """Call fn(module) on every descendant, children first, then this module (like PyTorch)."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # --- state dicts ------------------------------------------------------------------------------
    def _state_items(self):
        """(dotted name, Tensor) of every parameter (tied ones under each name, as PyTorch does)
        and every persistent buffer."""
        for mname, mod in self.named_modules():
            pre = f"{mname}." if mname else ""
            for k, p in mod._parameters.items():
                if p is not None:
                    yield pre + k, p
            for k, b in mod._buffers.items():
                if b is not None and k not in mod._non_persistent:
                    yield pre + k, b

    def state_dict(self):
        """OrderedDict dotted name -> np.ndarray, a CPU copy (later training does not change it)."""
        out = OrderedDict()
        for name, t in self._state_items():
            arr = backend.to_numpy(t.data)
            out[name] = arr.copy() if arr is t.data else arr
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters and buffers, in place (same dtype and device as before).

        Every problem is collected first and reported in one StateDictError: keys the module has
        but the dict lacks (missing), keys the dict has but the module lacks (unexpected), and keys
        whose shapes differ (both shapes named). strict=False tolerates missing and unexpected
        keys, never a wrong shape. Returns (missing_keys, unexpected_keys).
        """
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        wrong = []
        for k, t in own.items():
            if k in state_dict:
                shape = tuple(getattr(state_dict[k], "shape", np.shape(state_dict[k])))
                if shape != tuple(t.shape):
                    wrong.append(f"{k}: checkpoint shape {shape} vs model shape {tuple(t.shape)}")
        problems = []
        if wrong:
            problems.append("wrong shape: " + "; ".join(wrong))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise StateDictError(f"load_state_dict into {type(self).__name__}: " + " | ".join(problems))
        for k, t in own.items():
            if k in state_dict:
                value = state_dict[k]
                value = value.data if isinstance(value, Tensor) else value
                if backend.device_of(value) != t.device:
                    value = backend.to_device(np.asarray(value) if t.device == "cuda" else value, t.device)
                # in place: keeps views into flat optimizer buffers and tied weights intact
                t.data[...] = value
        return LoadResult(missing, unexpected)

    # --- calling and printing ---------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        forward = getattr(self, "forward", None)
        if forward is None:
            raise TypeError(f"{type(self).__name__} does not define forward(); a Module subclass "
                            "computes its output in forward()")
        return forward(*args, **kwargs)

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({k}): " + repr(m).replace("\n", "\n  ") for k, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules, registered under their index ("0", "1", ...)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ModuleList(list(self._modules.values())[i])
        n = len(self._modules)
        if not -n <= i < n:
            raise IndexError(f"ModuleList index {i} out of range for {n} modules")
        return self._modules[str(i % n)]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied in order: Sequential(a, b, c)(x) == c(b(a(x)))."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x
