"""Configs as dataclasses that round-trip through JSON (checkpoints, the CLI, metrics files)."""
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
