"""Where a GPT's position signal comes from, per layer, and how far a trained model may run.

pos (GPTConfig):
    "learned"   GPT-2's table of block_size position vectors, added to the token embeddings
    "rope"      q and k rotated by their positions in every layer (ops/rope.py)
    "alibi"     every head's scores biased by -m_h * distance (ops/alibi.py); nothing learned
    "none"      NoPE: no position signal at all; the causal mask alone tells a token what came
                before it (Kazemnejad et al. 2023)
    per layer   a list of n_layer names, or the same as one string: "rope,rope,rope,none". A
                pattern shorter than n_layer repeats (n_layer must be a multiple of its length):
                "rope,rope,rope,none" on 8 layers is RoPE on layers 0-2 and 4-6, NoPE on 3 and 7,
                the interleaving Llama 4 and SmolLM3 use. "learned" is a table at the input, not a
                per-layer choice, so it only stands alone.

Past the trained length (GPT.extend_context): ALiBi and NoPE need nothing; RoPE may be scaled
(rope scaling specs below, the implementations of ops/rope.py); a learned table ends where it ends.
"""
import math

LAYER_CHOICES = ("rope", "alibi", "none")
CHOICES = ("learned",) + LAYER_CHOICES

# spec kind -> Hugging Face's rope_type
SCALING_KINDS = {"linear": "linear", "ntk": "dynamic", "dynamic": "dynamic", "yarn": "yarn"}


def layer_positions(pos, n_layer):
    """(n_layer names): each layer's scheme for a pos name, pattern string or list; else ValueError."""
    names = check_positions(pos, n_layer)
    return tuple(names) * (n_layer // len(names))


def check_positions(pos, n_layer):
    """The pattern's names, after the checks of layer_positions, without building the per-layer
    tuple (a config's n_layer is checked before anything trusts it)."""
    names = pos.split(",") if isinstance(pos, str) else pos
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"GPTConfig: pos={pos!r}; expected one of {CHOICES} or a list of them per layer")
    names = [n.strip() if isinstance(n, str) else n for n in names]
    bad = [n for n in names if n not in CHOICES]
    if bad:
        raise ValueError(f"GPTConfig: pos={pos!r}; expected one of {CHOICES} (or a per-layer list of "
                         f"{LAYER_CHOICES}), got {bad[0]!r}")
    if len(names) > 1 and "learned" in names:
        raise ValueError(f"GPTConfig: pos={pos!r}: 'learned' is one table at the input, not a per-layer "
                         f"choice; a per-layer pattern takes {LAYER_CHOICES}")
    if n_layer % len(names):
        raise ValueError(f"GPTConfig: pos={pos!r} names {len(names)} layers; n_layer={n_layer} must be a "
                         "multiple of that (the pattern repeats)")
    return names


def parse_rope_scaling(spec, trained_len, new_len):
    """A rope_scaling dict (Hugging Face's spelling) from a spec "kind[:factor]" (kind linear, ntk
    or dynamic, yarn; no factor: new_len / trained_len), a dict, or None. Dynamic NTK and YaRN
    read the trained length from GPTConfig.trained_block_size."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        scaling = dict(spec)
    else:
        kind, _, factor = str(spec).partition(":")
        if kind not in SCALING_KINDS:
            raise ValueError(f"rope scaling {spec!r}: the kind must be one of {sorted(SCALING_KINDS)} "
                             "(as in linear:4)")
        try:
            factor = float(factor) if factor else new_len / trained_len
        except ValueError:
            raise ValueError(f"rope scaling {spec!r}: the factor after ':' must be a number") from None
        scaling = {"rope_type": SCALING_KINDS[kind], "factor": factor}
    factor = scaling.get("factor")
    if factor is not None and not (isinstance(factor, (int, float)) and not isinstance(factor, bool)
                                   and math.isfinite(factor) and factor > 0):
        raise ValueError(f"rope scaling {spec!r}: the factor must be a finite number > 0, got {factor!r}")
    return scaling


def check_context(config, block_size, rope_scaling=None):
    """Raise a ValueError when a model of this config cannot run sequences of block_size tokens
    with this scaling: a learned table too short, or RoPE scaling on a model without RoPE."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"extend_context: block_size must be a positive integer, got {block_size!r}")
    if config.pos == "learned" and block_size > config.block_size:
        raise ValueError(f"extend_context: pos='learned' has a table of {config.block_size} positions; "
                         f"it cannot evaluate sequences of {block_size} tokens (no row for positions "
                         f"{config.block_size}..{block_size - 1}); RoPE, ALiBi and NoPE models can")
    if rope_scaling is not None and "rope" not in config.layer_pos:
        raise ValueError(f"extend_context: rope scaling {rope_scaling!r} needs RoPE layers, and this "
                         f"model has pos={config.pos!r}")


def check_checkpoint_pos(saved_pos, requested):
    """A position scheme requested at load time must be the checkpoint's own: its weights were
    trained with it. The common mistake, ALiBi or NoPE on a learned-table checkpoint, is named."""
    if requested is None or requested == saved_pos:
        return
    if saved_pos == "learned":
        raise ValueError(f"pos={requested!r} requested for a checkpoint trained with pos='learned': its "
                         "weights expect the learned position table, and ALiBi / NoPE cannot replace it "
                         "after training; train a model with that pos instead")
    raise ValueError(f"pos={requested!r} requested for a checkpoint trained with pos={saved_pos!r}; a "
                     "position scheme cannot be changed after training")
