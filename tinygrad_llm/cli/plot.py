"""`python -m tinygrad_llm plot <out_dir>`: a training run's metrics.jsonl as one PNG.

    python -m tinygrad_llm plot out/shakespeare            # writes out/shakespeare/metrics.png

Six panels: train loss (raw and a centred moving average) with val loss; val bits-per-byte; the learning rate
of each optimizer; gradient norms per parameter group; update/weight ratios per group (with the 1e-3 rule of
thumb); and the spread (std) of each block's output. The last three need health records in the file
(train with health_every > 0); without them the figure has the first three only. A mixture-of-experts
model adds a row: each MoE layer's load per expert (the last record), its imbalance (largest share
times E: 1 is even) and its router's entropy over log E, over the steps. Needs matplotlib
(pip install "tinygrad-llm[plot]").
"""
import json
import math
from pathlib import Path

from .common import UsageError, check_flags, user_input


def add_arguments(parser):
    parser.add_argument("out_dir", help="a training run's directory (holding metrics.jsonl), or the file")
    parser.add_argument("--out", help="PNG to write (default <out_dir>/metrics.png)")
    parser.add_argument("--smooth", type=int, default=None,
                        help="records averaged for the smoothed train loss (odd; default: about 1/25 of them)")
    parser.add_argument("--dpi", type=int, default=120, help="resolution of the PNG")


def read_metrics(path):
    """The records of a metrics file, cleaned (clean_record): a line cut short by a killed run, or
    one that is not UTF-8, not JSON or not a record, is skipped.

    A run killed after logging a step but before its checkpoint logs that step again when it
    resumes: a record whose step is not past the last one starts over from there, so each step
    counts once (the later record, the one the resumed run went on from, wins)."""
    records = []
    with open(path, "rb") as f:
        for line in f:
            rec = clean_record(parse_line(line))
            if rec is None:
                continue
            while records and records[-1]["step"] >= rec["step"]:
                records.pop()
            records.append(rec)
    return records


def parse_line(line):
    """One JSON line (bytes or str) as a value, or None where it is damaged in any way."""
    try:
        return json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, an integer too long to convert
        return None


def _number(v):
    """v as a finite float, or None: bools, strings, NaN, infinities and integers beyond a float's
    range are no points to draw."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        v = float(v)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def _numbers(d):
    """{name: finite float} of a dict's numeric entries; {} when d is not a dict."""
    if not isinstance(d, dict):
        return {}
    return {k: n for k, n in ((k, _number(v)) for k, v in d.items()) if n is not None}


def clean_record(rec):
    """The parts of a metrics record the plot draws, each a finite float where a number belongs
    (others dropped), or None for a line that is no record (not an object, no usable step)."""
    if not isinstance(rec, dict) or _number(rec.get("step")) is None:
        return None
    out = {"step": _number(rec["step"])}
    out.update({k: v for k, v in _numbers(rec).items() if k in ("train_loss", "val_loss", "val_bpb", "lr")})
    if _numbers(rec.get("lrs")):
        out["lrs"] = _numbers(rec.get("lrs"))
    health = rec.get("health")
    if isinstance(health, dict):
        h = {}
        if _number(health.get("grad_norm")) is not None:
            h["grad_norm"] = _number(health["grad_norm"])
        for part in ("groups", "activations"):
            named = health.get(part)
            if isinstance(named, dict):
                h[part] = {name: _numbers(v) for name, v in named.items() if isinstance(v, dict)}
        routing = _clean_routing(health.get("routing"))
        if routing:
            h["routing"] = routing
        if h:
            out["health"] = h
    return out


def _clean_routing(routing):
    """MoE layer -> {"load_share": finite floats, "entropy", "max_entropy"}, what the routing
    panels read; a layer whose shares are not all finite numbers is dropped."""
    if not isinstance(routing, dict):
        return {}
    out = {}
    for name, st in routing.items():
        if not isinstance(st, dict) or not isinstance(st.get("load_share"), list):
            continue
        share = [_number(v) for v in st["load_share"]]
        if not share or None in share:
            continue
        out[name] = {"load_share": share, **_numbers({k: st.get(k) for k in ("entropy", "max_entropy")})}
    return out


def _series(records, key):
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))
           and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _centered_mean(values, window):
    """Moving average over `window` records centred on each one: smooth, and without the lag of
    an exponential average (which would draw the curve late by window / 2 records)."""
    half = window // 2
    out = []
    for k in range(len(values)):
        chunk = values[max(0, k - half):k + half + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _health_series(records, field):
    """group -> (steps, values) of health[groups][group][field]."""
    out = {}
    for r in records:
        groups = (r.get("health") or {}).get("groups") or {}
        for name, g in groups.items():
            v = g.get(field)
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
                s = out.setdefault(name, ([], []))
                s[0].append(r["step"])
                s[1].append(v)
    return out


def _activation_series(records):
    out = {}
    for r in records:
        for name, st in ((r.get("health") or {}).get("activations") or {}).items():
            if name.count(".") == 1 and isinstance(st.get("std"), (int, float)):  # blocks, not sub-scopes
                s = out.setdefault(name, ([], []))
                s[0].append(r["step"])
                s[1].append(st["std"])
    return out


def _short(group):
    return group.replace("transformer.", "")


def _per_group(plt, ax, series, title):
    """One line per parameter group (name -> (steps, values)), log scale, legend and grid."""
    cmap = plt.get_cmap("tab20")
    for k, (name, (s, v)) in enumerate(sorted(series.items())):
        ax.plot(s, v, lw=1.1, color=cmap(k % 20), label=_short(name))
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3, which="both")


def _empty(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777",
            fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot(records, out_path, smooth=None, dpi=120, title=None):
    """Draw the six panels of `records` into out_path (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_health = any(r.get("health") for r in records)
    routing = _routing_series(records)
    if has_health and routing:
        fig, axes = plt.subplots(3, 3, figsize=(16, 12.5))
        (ax_loss, ax_bpb, ax_lr), (ax_grad, ax_upd, ax_act), ax_routing = axes
    elif has_health:
        fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
        (ax_loss, ax_bpb, ax_lr), (ax_grad, ax_upd, ax_act) = axes
    else:  # no health records: the three panels that draw them would only say so
        fig, (ax_loss, ax_bpb, ax_lr) = plt.subplots(1, 3, figsize=(16, 4.6))
    fig.suptitle(title or "training run", fontsize=13)

    steps, train = _series(records, "train_loss")
    vsteps, val = _series(records, "val_loss")
    if steps:
        ax_loss.plot(steps, train, color="#9ecae1", lw=0.8, label="train")
        window = smooth or 2 * max(1, len(train) // 50) + 1
        if len(train) > 2 and window > 1:
            ax_loss.plot(steps, _centered_mean(train, window), color="#1f77b4", lw=1.8,
                         label=f"train (mean of {window} records)")
        if val:
            ax_loss.plot(vsteps, val, "o-", color="#d62728", lw=1.6, ms=4, label="val")
            ax_loss.annotate(f"{val[-1]:.3f}", (vsteps[-1], val[-1]), textcoords="offset points",
                             xytext=(-10, 8), color="#d62728", fontsize=9)
        ax_loss.set_title("loss (cross-entropy, nats/token)")
        ax_loss.set_xlabel("step")
        ax_loss.legend(fontsize=8)
        ax_loss.grid(alpha=0.3)
    else:
        _empty(ax_loss, "no train_loss in the metrics")

    bsteps, bpb = _series(records, "val_bpb")
    if bpb:
        ax_bpb.plot(bsteps, bpb, "o-", color="#9467bd", lw=1.6, ms=4)
        ax_bpb.annotate(f"{bpb[-1]:.3f}", (bsteps[-1], bpb[-1]), textcoords="offset points",
                        xytext=(-10, 8), color="#9467bd", fontsize=9)
        ax_bpb.set_title("val bits per byte (lower is better)")
        ax_bpb.set_xlabel("step")
        ax_bpb.grid(alpha=0.3)
    else:
        _empty(ax_bpb, "no val_bpb yet (evaluations add it)")

    rates = _lr_series(records)
    if rates:
        for k, (name, (s, v)) in enumerate(sorted(rates.items())):
            ax_lr.plot(s, v, lw=1.6, color=plt.get_cmap("tab10")(k + 2), label=name)
        ax_lr.set_title("learning rate" + (" per optimizer" if len(rates) > 1 else ""))
        ax_lr.set_xlabel("step")
        if len(rates) > 1:  # Muon's and AdamW's rates are an order of magnitude apart
            ax_lr.set_yscale("log")
            ax_lr.legend(fontsize=8)
        else:
            ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax_lr.grid(alpha=0.3, which="both")
    else:
        _empty(ax_lr, "no lr in the metrics")
    if has_health:
        _health_panels(plt, records, ax_grad, ax_upd, ax_act)
    if has_health and routing:
        _routing_panels(plt, fig, routing, *ax_routing)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return out_path


def _routing_series(records):
    """MoE layer -> {"steps", "share" (a list of per-expert shares per record), "imbalance"
    (largest share times E), "entropy" (over log E)} from health["routing"]."""
    out = {}
    for r in records:
        for name, st in ((r.get("health") or {}).get("routing") or {}).items():
            share = st.get("load_share")
            if not isinstance(share, list) or not share:
                continue
            s = out.setdefault(name, {"steps": [], "share": [], "imbalance": [], "entropy": []})
            s["steps"].append(r["step"])
            s["share"].append(share)
            s["imbalance"].append(max(share) * len(share))
            h, hmax = st.get("entropy"), st.get("max_entropy")
            s["entropy"].append(h / hmax if isinstance(h, (int, float)) and hmax else float("nan"))
    return out


def _layer_order(name):
    digits = [int(p) for p in name.split(".") if p.isdigit()]
    return (digits or [0], name)


def _routing_panels(plt, fig, routing, ax_load, ax_imb, ax_ent):
    """Per-expert load of the last record (a layer x expert map), imbalance and entropy over steps."""
    names = sorted(routing, key=_layer_order)
    width = max(len(routing[n]["share"][-1]) for n in names)
    grid = [routing[n]["share"][-1] + [float("nan")] * (width - len(routing[n]["share"][-1])) for n in names]
    image = ax_load.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
    ax_load.set_yticks(range(len(names)), names, fontsize=7)
    ax_load.set_xlabel("expert")
    ax_load.set_title(f"share of tokens per expert (step {routing[names[0]]['steps'][-1]})")
    fig.colorbar(image, ax=ax_load, fraction=0.046)
    cmap = plt.get_cmap("viridis")
    for k, name in enumerate(names):
        color = cmap(k / max(1, len(names) - 1))
        s = routing[name]
        ax_imb.plot(s["steps"], s["imbalance"], lw=1.3, color=color, label=name)
        ax_ent.plot(s["steps"], s["entropy"], lw=1.3, color=color, label=name)
    ax_imb.axhline(1.0, color="black", ls="--", lw=1.0)
    ax_imb.set_title("load imbalance: largest share x experts (1 = even)")
    ax_ent.set_title("router entropy / log(experts) (1 = uniform)")
    for ax in (ax_imb, ax_ent):
        ax.set_xlabel("step")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)


def _lr_series(records):
    """optimizer name -> (steps, lrs): each optimizer's own rate ("lrs"), else the one "lr"."""
    out = {}
    for r in records:
        rates = r.get("lrs") if isinstance(r.get("lrs"), dict) else {"lr": r.get("lr")}
        for name, v in rates.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                s = out.setdefault(name, ([], []))
                s[0].append(r["step"])
                s[1].append(v)
    return out


def _health_panels(plt, records, ax_grad, ax_upd, ax_act):
    """Gradient norms, update ratios and activation spreads of the health records."""
    no_health = "no health records:\ntrain with health_every > 0"
    gsteps, gtotal = _series([{"step": r["step"], "g": (r.get("health") or {}).get("grad_norm")}
                              for r in records], "g")
    grads = _health_series(records, "grad_norm")
    if grads:
        _per_group(plt, ax_grad, grads, "gradient norm per parameter group")
        if gtotal:
            ax_grad.plot(gsteps, gtotal, color="black", lw=2.0, label="total")
            ax_grad.legend(fontsize=6, ncol=2)
    else:
        _empty(ax_grad, no_health)

    updates = _health_series(records, "update_ratio")
    if updates:
        ax_upd.axhline(1e-3, color="black", ls="--", lw=1.0, label="1e-3 (rule of thumb)")
        _per_group(plt, ax_upd, updates, "update / weight per step  |ΔW| / |W|")
    else:
        _empty(ax_upd, no_health if not grads else "update ratios appear from the second health record")

    acts = _activation_series(records)
    if acts:
        names = sorted(acts, key=lambda n: (n.split(".")[0], int(n.split(".")[1]) if n.split(".")[1].isdigit() else 0))
        cmap = plt.get_cmap("viridis")
        for k, name in enumerate(names):
            s, v = acts[name]
            ax_act.plot(s, v, lw=1.3, color=cmap(k / max(1, len(names) - 1)), label=name)
        ax_act.set_title("std of each block's output (residual stream)")
        ax_act.set_xlabel("step")
        ax_act.legend(fontsize=7, ncol=2)
        ax_act.grid(alpha=0.3)
    else:
        _empty(ax_act, no_health if not grads else "no activation statistics recorded")


def main(args):
    check_flags(args, {"smooth": "[1, inf)", "dpi": "[1, inf)"})
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("plot needs matplotlib, which is not installed: pip install \"tinygrad-llm[plot]\" "
                         "(or pip install matplotlib)") from None
    src = Path(args.out_dir)
    metrics = src if src.is_file() else src / "metrics.jsonl"
    if not metrics.is_file():
        raise UsageError(f"no metrics file at {metrics} (a training run writes <out_dir>/metrics.jsonl)")
    records = read_metrics(metrics)
    if not records:
        raise UsageError(f"{metrics} holds no metric lines yet")
    out = Path(args.out) if args.out else metrics.with_name("metrics.png")
    with user_input():
        plot(records, out, smooth=args.smooth, dpi=args.dpi, title=f"{metrics.parent.name}: {len(records)} "
             f"records, last step {records[-1]['step']}")
    print(f"wrote {out}")
    return 0
