"""Pictures of the computation graph: Graphviz DOT, rendered to SVG when `dot` is installed.

    tl.draw_graph(loss, "gpt.dot", params=model)   # writes gpt.dot (+ gpt.svg)

Nodes are the graph's Contexts (ops, boxes labelled op + output shape) and its leaves (ellipses:
parameters by name, blue). Walk it before backward: backward frees the nodes it has used.

Gradient flow: for a single-element root, draw_graph runs one extra backward with
retain_graph=True and labels every edge with the norm of the gradient that flowed along it
(thicker = larger; dashed grey = exactly zero; red = inf/nan). Leaves' .grad are restored
afterwards, so the caller's own backward is unaffected.

Repeated blocks: nodes are clustered by name scope. Scopes come from `tl.study.scope("h.3")`
entered around each block (the GPT does this), or, when the graph has none and `params` is given,
are inferred from parameter names: an op that consumes "h.3.attn.c_attn.weight" is in block h.3,
an op inherits the latest block of its inputs, and one that consumes a parameter outside any
numbered block (ln_f, wte) leaves the blocks. Top-level scopes named <prefix>.<int> whose nodes
match the first block op for op and shape for shape are collapsed into one box ("h.1 ... h.11:
same as h.0"), so a 12-layer GPT draws as one block plus a box.
"""
import math
import re
import shutil
import subprocess
from pathlib import Path

from .. import autograd
from ..autograd import Context
from .tracer import _norm

_BLOCK = re.compile(r"^(.*?[A-Za-z_]\w*)\.(\d+)(?:\.|$)")


def _collect(root):
    """Nodes reachable from root (Contexts and leaf Tensors), inputs before the ops using them."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if isinstance(node, Context):
            if node.fn is None:
                raise autograd.GraphError("draw_graph: this graph was already freed by backward(); "
                                          "draw it before calling backward")
            stack.extend((p, False) for p in reversed(node.parents) if p is not None)
    return order


def _param_names(params):
    if params is None:
        return {}
    if hasattr(params, "named_parameters"):
        params = params.named_parameters()
    items = params.items() if isinstance(params, dict) else params
    return {id(t): name for name, t in items}


def _infer_scopes(order, names):
    """Block scopes from parameter names, for graphs built without study.scope (see module doc)."""
    scopes = {}
    for node in order:
        if not isinstance(node, Context):
            continue
        direct, outside, inherited = [], False, []
        for p in node.parents:
            if isinstance(p, Context):
                inherited.append(scopes.get(id(p)))
            elif p is not None and id(p) in names:
                m = _BLOCK.match(names[id(p)])
                if m:
                    direct.append((m.group(1), int(m.group(2))))
                else:
                    outside = True
        if direct:
            scopes[id(node)] = max(direct, key=lambda b: b[1])
        elif not outside:
            found = [s for s in inherited if s is not None]
            scopes[id(node)] = max(found, key=lambda b: b[1]) if found else None
    return {k: f"{v[0]}.{v[1]}" for k, v in scopes.items() if v is not None}


def _edge_grad_norms(root_tensor):
    """(id(parent), id(node)) -> |dx| from one retained backward; leaves' .grad are restored."""
    sums = {}  # an input used twice by one op (x * x) gets both of its gradients on one edge

    def observe(ctx, dy, dxs, seconds):
        for p, dx in zip(ctx.parents, dxs):
            if p is not None and dx is not None:
                key = (id(p), id(ctx))
                sums[key] = sums[key] + dx if key in sums else dx

    leaves = [n for n in _collect(root_tensor._ctx) if not isinstance(n, Context)]
    kept = [(leaf, leaf.grad) for leaf in leaves]
    autograd.add_backward_observer(observe)
    try:
        root_tensor.backward(retain_graph=True)
    finally:
        autograd.remove_backward_observer(observe)
        for leaf, grad in kept:
            leaf.grad = grad
    return {key: _norm(dx) for key, dx in sums.items()}


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(shape):
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _signature(nodes, scope_of, top):
    """What a block computes, independent of its name: (op, shape, sub-scope) per node, in order."""
    return tuple((n.fn.__name__, tuple(n.shape), scope_of.get(id(n), "")[len(top):]) for n in nodes)


def graph_to_dot(tensor, params=None, collapse=True, grad_flow=None, title=None):
    """The DOT text of the graph behind `tensor` (see the module docstring for the options)."""
    if tensor._ctx is None or tensor._ctx.fn is None:
        raise autograd.GraphError("draw_graph: the tensor has no graph (a leaf, made under no_grad, "
                                  "or already freed by backward)")
    names = _param_names(params)
    order = _collect(tensor._ctx)
    ops = [n for n in order if isinstance(n, Context)]
    scope_of = {id(n): n.scope for n in ops if getattr(n, "scope", None)}
    inferred = not scope_of and bool(names)
    if inferred:
        scope_of = _infer_scopes(order, names)
    if grad_flow is None:
        grad_flow = tensor.data.size == 1
    norms = _edge_grad_norms(tensor) if grad_flow else {}

    # --- clusters: every scope name, nested under the longest other scope that prefixes it
    scope_names = sorted(set(scope_of.values()))
    parent_scope = {s: max((o for o in scope_names if s.startswith(o + ".")), key=len, default=None)
                    for s in scope_names}
    top_of = {}
    for s in scope_names:
        t = s
        while parent_scope[t] is not None:
            t = parent_scope[t]
        top_of[s] = t
    members = {}  # top-level scope -> its op nodes in order
    for n in ops:
        s = scope_of.get(id(n))
        if s is not None:
            members.setdefault(top_of[s], []).append(n)

    # --- collapse runs of numbered blocks identical to the first of their run
    box_of, boxes = {}, []  # top scope -> box id; box id -> label
    if collapse:
        groups = {}
        for top in members:
            m = re.match(r"^(.*)\.(\d+)$", top)
            if m:
                groups.setdefault(m.group(1), []).append((int(m.group(2)), top))
        for prefix, blocks in groups.items():
            blocks.sort()
            i = 0
            while i < len(blocks):
                first = blocks[i][1]
                sig = _signature(members[first], scope_of, first)
                j = i + 1
                while j < len(blocks) and _signature(members[blocks[j][1]], scope_of, blocks[j][1]) == sig:
                    j += 1
                if j - i >= 2:
                    box = f"box{len(boxes)}"
                    run = [b[1] for b in blocks[i + 1:j]]
                    span = run[0] if len(run) == 1 else f"{run[0]} ... {run[-1]}"
                    boxes.append((box, f"{span}\n{len(run)} block{'s' if len(run) > 1 else ''}, "
                                       f"same as {first}\n({len(members[first])} ops each)"))
                    for b in run:
                        box_of[b] = box
                i = j

    # --- node ids; nodes inside collapsed blocks map to their box
    ids = {}
    for k, n in enumerate(order):
        ids[id(n)] = f"n{k}"
    draw_id = {}
    for n in ops:
        s = scope_of.get(id(n))
        draw_id[id(n)] = box_of.get(top_of[s]) if s is not None and top_of[s] in box_of else ids[id(n)]
    consumers = {}
    for n in ops:
        for p in n.parents:
            if p is not None and not isinstance(p, Context):
                consumers.setdefault(id(p), set()).add(draw_id[id(n)])
    for n in order:
        if not isinstance(n, Context):
            targets = consumers.get(id(n), set())
            hidden = len(targets) == 1 and next(iter(targets)).startswith("box")
            draw_id[id(n)] = next(iter(targets)) if hidden else ids[id(n)]

    # --- emit
    lines = ["digraph backward {",
             '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, newrank=true'
             + (f", label={_quote(title)}, labelloc=t" if title else "") + "];",
             '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#555555"];']
    declared = {}  # draw id -> DOT line

    def node_line(n):
        nid = ids[id(n)]
        if isinstance(n, Context):
            label = f"{n.fn.__name__}\n{_shape(n.shape)}"
            extra = ', style="filled,bold", fillcolor="#ffd7a8", penwidth=2' if n is tensor._ctx else \
                ', style=filled, fillcolor="#f2f2f2"'
            return f"{nid} [shape=box, label={_quote(label)}{extra}];"
        name = names.get(id(n))
        label = f"{name}\n{_shape(n.shape)}" if name else f"leaf\n{_shape(n.shape)}"
        fill = "#cfe2ff" if name else "#e8f5e9"
        return f"{nid} [shape=ellipse, label={_quote(label)}, style=filled, fillcolor=\"{fill}\"];"

    children = {s: [c for c in scope_names if parent_scope[c] == s] for s in scope_names}
    own = {}
    for n in ops:
        s = scope_of.get(id(n))
        if s is not None and top_of[s] not in box_of:
            own.setdefault(s, []).append(n)
    # a parameter used only inside one scope is drawn inside it (ln_1.weight beside its LayerNorm)
    leaf_scopes = {}
    for n in ops:
        for p in n.parents:
            if p is not None and not isinstance(p, Context):
                leaf_scopes.setdefault(id(p), set()).add(scope_of.get(id(n)))
    for n in order:
        if not isinstance(n, Context) and draw_id[id(n)] == ids[id(n)]:
            where = leaf_scopes.get(id(n), set())
            s = next(iter(where)) if len(where) == 1 else None
            if s is not None and top_of[s] not in box_of:
                own.setdefault(s, []).insert(0, n)

    def emit_cluster(s, indent):
        pad = "  " * indent
        lines.append(f"{pad}subgraph {_quote('cluster_' + s)} {{")
        lines.append(f'{pad}  label={_quote(s)}; style="rounded,filled"; fillcolor="#fbfbf4"; color="#999999";')
        for n in own.get(s, []):
            lines.append(pad + "  " + node_line(n))
            declared[ids[id(n)]] = True
        for c in children[s]:
            emit_cluster(c, indent + 1)
        lines.append(pad + "}")

    for s in scope_names:
        if parent_scope[s] is None and s not in box_of:
            emit_cluster(s, 1)
    for n in order:
        nid = draw_id[id(n)]
        if nid == ids[id(n)] and nid not in declared:
            lines.append("  " + node_line(n))
            declared[nid] = True
    for box, label in boxes:
        lines.append(f'  {box} [shape=box3d, label={_quote(label)}, style=filled, fillcolor="#e0e0ff"];')
        declared[box] = True

    drawn = set()
    for n in ops:
        for p in n.parents:
            if p is None:
                continue
            a, b = draw_id[id(p)], draw_id[id(n)]
            if a == b or (a, b) in drawn:
                continue
            drawn.add((a, b))
            attrs = []
            g = norms.get((id(p), id(n)))
            collapsed = a.startswith("box") or b.startswith("box")
            if g is not None and not collapsed:
                if not math.isfinite(g):
                    attrs += ['color="#d62728"', "penwidth=3", f"label={_quote('|dx| ' + str(g))}"]
                elif g == 0.0:
                    attrs += ['color="#aaaaaa"', "style=dashed", 'label="|dx| 0"']
                else:
                    width = min(4.0, max(0.6, 1.0 + 0.5 * math.log10(g + 1e-30) + 1.0))
                    attrs += ['color="#c0392b"', f"penwidth={width:.2f}", f"label={_quote(f'{g:.3g}')}"]
            lines.append(f"  {a} -> {b}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")

    note = "edges: input -> op; red labels: |gradient| that flowed back along the edge" if norms else \
        "edges: input -> op"
    if inferred:
        note += "; blocks inferred from parameter names"
    lines.append(f"  legend [shape=note, fontsize=8, label={_quote(note)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_graph(tensor, path, params=None, collapse=True, grad_flow=None, title=None):
    """Write the graph behind `tensor` to `path` as DOT, plus an SVG beside it when Graphviz's
    `dot` is installed (path "x.svg" writes x.dot and x.svg). Returns {"dot": path, "svg": path or None}.

    params: a Module or {name: Tensor} to label parameters (and to infer blocks without scopes).
    collapse: fold repeated numbered blocks into one box. grad_flow: label edges with gradient
    norms (default: when the tensor has one element). Call it before backward.
    """
    path = Path(path)
    dot_path = path if path.suffix == ".dot" else path.with_suffix(".dot")
    text = graph_to_dot(tensor, params=params, collapse=collapse, grad_flow=grad_flow, title=title)
    dot_path.parent.mkdir(parents=True, exist_ok=True)
    dot_path.write_text(text)
    svg_path = None
    exe = shutil.which("dot")
    if exe is not None:
        svg_path = dot_path.with_suffix(".svg")
        done = subprocess.run([exe, "-Tsvg", str(dot_path), "-o", str(svg_path)],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"draw_graph: dot failed on {dot_path}: {done.stderr.strip()}")
    return {"dot": str(dot_path), "svg": None if svg_path is None else str(svg_path)}
