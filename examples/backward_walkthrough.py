"""A guided tour of the backward pass through a real (tiny) GPT, in a few seconds on a CPU.

    python examples/backward_walkthrough.py [--out-dir out/walkthrough] [--moe] [--mla]

1. builds a 1-layer GPT in float64 and a batch of 2 sequences of 6 tokens (--moe: its MLP a
   mixture of 4 experts, 2 per token, plus a shared one, with the balancing loss; --mla: its
   attention multi-head latent attention);
2. checks the gradient of every parameter against central finite differences;
3. draws the computation graph (DOT, and SVG when Graphviz is installed), edges labelled with the
   size of the gradient that flowed back along them;
4. runs backward under the tracer and prints it op by op: what each node received, what it
   returned, and the formula it used (the backward line of the op's docstring, derived in full in
   docs/backward.md at the anchor shown).
"""
import argparse
import inspect
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import tinygrad_llm as tl  # noqa: E402
from tinygrad_llm.models import GPT, GPTConfig  # noqa: E402
from tinygrad_llm.study import backward_formula, scope_blocks  # noqa: E402


def build(seed=0, moe=False, mla=False):
    tl.manual_seed(seed)
    options = {}
    if moe:  # the router, its choice, dispatch, per-expert GEMMs, combine and the balancing loss
        options.update(moe_experts=4, moe_top_k=2, moe_shared=1, moe_aux_loss_coef=0.1, moe_z_loss_coef=0.01)
    if mla:
        options.update(pos="rope", attn="mla", mla_q_rank=4)
    config = GPTConfig(vocab_size=16, block_size=6, n_layer=1, n_head=2, n_embd=8, **options)
    model = GPT(config, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, config.vocab_size, size=(2, config.block_size))  # (B, T)
    targets = np.roll(idx, -1, axis=1)  # next-token targets
    return model, idx, targets


def check_every_parameter(model, idx, targets):
    """gradcheck each parameter of the model (float64, central differences, element by element)."""
    print("1. gradient check: analytic backward vs (L(w + eps) - L(w - eps)) / 2 eps, every element")
    t0 = time.perf_counter()
    names = []
    for name, p in model.named_parameters():
        others = [q for q in model.parameters() if q is not p]
        for q in others:
            q.requires_grad = False  # check one parameter at a time, so a failure names it
        try:
            tl.gradcheck(lambda w: model(idx, targets)[1], [p], eps=1e-6, atol=1e-7, rtol=1e-5)
        finally:
            for q in others:
                q.requires_grad = True
        names.append(name)
        print(f"   ok  {name:<34} {str(tuple(p.shape)):<10} {p.size:>5} elements")
    total = sum(p.size for p in model.parameters())
    print(f"   all {len(names)} parameters ({total} numbers) match, in {time.perf_counter() - t0:.1f} s\n")
    return names


def draw(model, idx, targets, out_dir):
    print("2. the graph")
    _, loss = model(idx, targets)
    paths = tl.draw_graph(loss, out_dir / "graph.svg", params=model,
                          title="1-layer GPT: forward edges, labelled with |gradient| flowing back")
    print(f"   wrote {paths['dot']}" + (f" and {paths['svg']}" if paths["svg"] else
                                        " (install Graphviz's `dot` for an SVG)"))
    print("   boxes are ops (output shape), blue ellipses parameters; clusters are the block, its\n"
          "   attention and its MLP; an edge's label is the norm of the gradient sent back along it\n")
    return loss


def trace(loss):
    print("3. the backward pass, node by node (the loss first, the embeddings last)")
    with tl.trace_backward() as t:
        loss.backward()
    for r in t.records:
        fn = _op_class(r["op"])
        link = _anchor(fn)
        ins = ", ".join("const" if s is None else str(tuple(s)) for s in r["in_shapes"])
        dxs = ", ".join("-" if n is None else f"{n:.3g}" for n in r["dx_norms"])
        print(f"  [{r['index']:>2}] {r['op']:<26} {r['scope'] or '':<10} out {str(tuple(r['out_shape'])):<12}"
              f" in {ins}")
        print(f"       |dy| {r['grad_norm']:.4g} -> |dx| {dxs};  saved {r['saved_bytes']} B")
        if r["formula"]:
            print(f"       {r['formula']}")
        if link:
            print(f"       derivation: {link}")
    print("\nwhere the backward spent its time (tiny sizes: Python overhead dominates)")
    print(t.summary_table())
    return t


_OPS = {}


def _op_class(name):
    if not _OPS:
        import importlib
        import pkgutil

        import tinygrad_llm.ops as ops
        from tinygrad_llm.autograd import Function
        for info in pkgutil.iter_modules(ops.__path__):
            mod = importlib.import_module(f"tinygrad_llm.ops.{info.name}")
            for k, v in vars(mod).items():
                if inspect.isclass(v) and issubclass(v, Function):
                    _OPS.setdefault(k, v)
    return _OPS.get(name)


def _anchor(fn):
    m = re.search(r"docs/backward\.md#[\w\-]+", inspect.getdoc(fn) or "") if fn else None
    return m.group(0) if m else ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="out/walkthrough", help="where the graph picture goes")
    parser.add_argument("--moe", action="store_true", help="a mixture-of-experts MLP (4 experts, top 2, one shared)")
    parser.add_argument("--mla", action="store_true", help="multi-head latent attention")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, idx, targets = build(moe=args.moe, mla=args.mla)
    scope_blocks(model)  # name the block's pieces (h.0.attn, h.0.mlp, h.0.mlp.experts) in the graph and trace
    kind = " + ".join(k for k, on in (("MoE", args.moe), ("MLA", args.mla)) if on)
    print(f"a 1-layer {kind + ' ' if kind else ''}GPT ({model.num_parameters()} parameters, float64) on a "
          f"batch of {idx.shape[0]} x {idx.shape[1]} tokens\n")
    check_every_parameter(model, idx, targets)
    loss = draw(model, idx, targets, out_dir)
    trace(loss)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
