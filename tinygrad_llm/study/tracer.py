"""The backward tracer: what each node of the graph did during one backward pass.

    with tl.trace_backward() as t:
        loss.backward()
    print(t)              # one row per node, in the order backward visited them, then a summary
    t.to_json()           # the same data as JSON (t.records is the list of dicts)

Each record: the op, its output shape and its inputs' shapes, the bytes its forward saved for
backward, the norm of the gradient it received (|dy|) and of each gradient it returned (|dx|),
the seconds its backward took, and its name scope (see study.scope). `t.summary()` totals time,
count and saved bytes per op type: where a GPT's backward spends its time and memory.
"""
import json
import re

from .. import autograd
from ..autograd import Context
from ..backend import array_module

_DERIVATIVE = re.compile(r"\bd[A-Za-z_][\w']*(?:\[[^\]]*\])? = ")


def backward_formula(fn):
    """The backward line of an op's docstring ("dx = y * dy ..."), or "" when it has none."""
    doc = " ".join((fn.__doc__ or "").split())
    marker = doc.find("Backward:")
    m = _DERIVATIVE.search(doc, marker if marker >= 0 else 0)
    if m is None:
        return ""
    rest = doc[m.start():]
    # stop at the first sentence end that is not inside a formula ("2.0" has no space after it)
    end = re.search(r"(?<=[A-Za-z)\]0-9])\.(\s|$)", rest)
    return (rest[:end.start()] if end else rest).strip()


def _norm(a):
    if a is None:
        return None
    xp = array_module(a)
    return float(xp.sqrt(xp.sum(xp.square(a, dtype="float64"))))


def _shape_of(parent, dx):
    if parent is not None:
        return tuple(parent.shape)
    return tuple(dx.shape) if dx is not None else None  # an input that takes no gradient


class BackwardTrace:
    """Records every node of the backward passes run while it is active (a context manager)."""

    def __init__(self):
        self.records = []

    def __enter__(self):
        autograd.add_backward_observer(self._observe)
        return self

    def __exit__(self, *exc):
        autograd.remove_backward_observer(self._observe)
        return False

    def _observe(self, ctx, dy, dxs, seconds):
        self.records.append({
            "index": len(self.records),
            "op": ctx.fn.__name__,
            "out_shape": tuple(ctx.shape),
            "in_shapes": [_shape_of(p, dx) for p, dx in zip(ctx.parents, dxs)],
            "inputs": ["op" if isinstance(p, Context) else "leaf" if p is not None else "const"
                       for p in ctx.parents],
            "dtype": str(ctx.dtype),
            "saved_bytes": ctx.saved_nbytes(),
            "grad_norm": _norm(dy),
            "dx_norms": [_norm(dx) for dx in dxs],
            "seconds": seconds,
            "scope": getattr(ctx, "scope", None),
            "formula": backward_formula(ctx.fn),
        })

    # --- views of the data ---------------------------------------------------------------------
    @property
    def ops(self):
        """The op names in the order backward visited them."""
        return [r["op"] for r in self.records]

    def summary(self):
        """op name -> {count, seconds, saved_bytes, time_share}, most time first."""
        by_op = {}
        for r in self.records:
            s = by_op.setdefault(r["op"], {"count": 0, "seconds": 0.0, "saved_bytes": 0})
            s["count"] += 1
            s["seconds"] += r["seconds"]
            s["saved_bytes"] += r["saved_bytes"]
        total = sum(s["seconds"] for s in by_op.values()) or 1.0
        for s in by_op.values():
            s["time_share"] = s["seconds"] / total
        return dict(sorted(by_op.items(), key=lambda kv: -kv[1]["seconds"]))

    def total_seconds(self):
        return sum(r["seconds"] for r in self.records)

    def total_saved_bytes(self):
        return sum(r["saved_bytes"] for r in self.records)

    def to_dict(self):
        return {"records": self.records, "summary": self.summary(),
                "total_seconds": self.total_seconds(), "total_saved_bytes": self.total_saved_bytes()}

    def to_json(self, path=None, indent=None):
        """The trace as a JSON string (tuples become lists); also written to `path` if given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def table(self, limit=None):
        """The per-node rows as text; `limit` keeps the first rows (the ones nearest the loss)."""
        head = (f"{'#':>4}  {'op':<26} {'scope':<10} {'output':<16} {'inputs':<28} "
                f"{'saved':>9} {'|dy|':>10} {'|dx|':<22} {'ms':>8}")
        lines = [head, "-" * len(head)]
        rows = self.records if limit is None else self.records[:limit]
        for r in rows:
            ins = ", ".join(_fmt_shape(s) for s in r["in_shapes"])
            dxs = ", ".join("-" if n is None else f"{n:.3g}" for n in r["dx_norms"])
            lines.append(f"{r['index']:>4}  {r['op']:<26} {(r['scope'] or ''):<10} "
                         f"{_fmt_shape(r['out_shape']):<16} {ins:<28} {_fmt_bytes(r['saved_bytes']):>9} "
                         f"{r['grad_norm']:>10.4g} {dxs:<22} {r['seconds'] * 1e3:>8.3f}")
        if limit is not None and len(self.records) > limit:
            lines.append(f"  ... {len(self.records) - limit} more nodes")
        return "\n".join(lines)

    def summary_table(self):
        lines = [f"{'op':<26} {'count':>6} {'ms':>10} {'time':>6} {'saved':>10}"]
        for op, s in self.summary().items():
            lines.append(f"{op:<26} {s['count']:>6} {s['seconds'] * 1e3:>10.3f} "
                         f"{s['time_share']:>6.1%} {_fmt_bytes(s['saved_bytes']):>10}")
        lines.append(f"{'total':<26} {len(self.records):>6} {self.total_seconds() * 1e3:>10.3f} "
                     f"{'':>6} {_fmt_bytes(self.total_saved_bytes()):>10}")
        return "\n".join(lines)

    def __str__(self):
        return (f"backward pass: {len(self.records)} nodes\n{self.table()}\n\n"
                f"by op type\n{self.summary_table()}")

    def __len__(self):
        return len(self.records)


def _fmt_shape(shape):
    if shape is None:
        return "const"
    return "(" + ",".join(str(n) for n in shape) + ")"


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def trace_backward():
    """`with tl.trace_backward() as t: loss.backward()` records each node; see BackwardTrace."""
    return BackwardTrace()
