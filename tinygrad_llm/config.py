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
