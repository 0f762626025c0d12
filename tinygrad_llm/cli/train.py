"""`python -m tinygrad_llm train` and examples/train_shakespeare.py: text in, trained GPT out.

With no arguments: find tiny Shakespeare (--data, else $TINYGRAD_LLM_DATA, else the cached copy
in ~/.cache/tinygrad_llm/, else download it into that cache), train
a byte-level BPE tokenizer on it (or a char-level vocabulary with --tokenizer char), encode it,
train a GPT on the CPU, then print the validation loss, bits per byte and a sample.

--data may also name a token file (.bin with its .bin.json sidecar, from `tokenize encode`) or a
folder of shards (`tokenize encode --out DIR`); then --tokenizer-file names the tokenizer that
wrote it (its JSON file, or GPT-2's folder), for the sample and --doc-mask.
"""
import os
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from . import common
from ..config import TRAIN_PRESETS
from .common import UsageError, file_digest, user_input

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinygrad_llm"

# The CPU default finishes (tokenizer, training, eval, sample) within 90 seconds on two cores:
# training stops at max_iters or after max_seconds of wall time, whichever comes first, and the
# learning-rate schedule follows whichever is further along, so a slower machine trains fewer
# steps but still anneals. --max-seconds 0 makes the run a fixed number of steps (exactly
# reproducible). Measurements: benchmarks/results/shakespeare_cpu_2026-11-21.txt.
PRESETS = {
    # nanoGPT's CPU model (4 x 128, T=64, B=12, no dropout) with a 1024-token BPE (2.6 bytes per
    # token: each step sees 2.6x the text of a char-level step), Muon on the blocks' matrices and
    # AdamW at 3x nanoGPT's lr on the rest. Muon learns more per step; since its Newton-Schulz runs
    # one matrix per core it costs ~54 ms/step against AdamW's ~40, and in the fixed 78 s it ends
    # lower (2.263-2.268 vs 2.298-2.317 bits/byte over three seeds; see the results file).
    # --optimizer adamw selects AdamW alone. max_iters rarely binds: ~1400 Muon steps fit in 78 s.
    "cpu": dict(tokenizer="bpe", vocab_size=1024, n_layer=4, n_head=4, n_embd=128, block_size=64,
                batch_size=12, max_iters=2000, max_seconds=78.0, lr=3e-3, warmup_iters=100, dropout=0.0,
                optimizer="muon", eval_every=250, eval_iters=20, log_every=100),
    # nanoGPT's GPU Shakespeare recipe (config/train_shakespeare_char.py), char-level like it
    "cuda": dict(tokenizer="char", vocab_size=None, n_layer=6, n_head=6, n_embd=384, block_size=256,
                 batch_size=64, max_iters=5000, lr=1e-3, warmup_iters=100, dropout=0.2,
                 optimizer="adamw", eval_every=250, eval_iters=200, log_every=10),
}
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "n_kv_head", "pos", "norm", "mlp", "bias")
TRAIN_KEYS = ("batch_size", "grad_accum", "max_iters", "max_seconds", "optimizer", "lr", "muon_lr", "warmup_iters",
              "schedule", "min_lr_ratio", "weight_decay", "beta2", "eval_every", "eval_iters",
              "log_every", "checkpoint_every", "seed", "device", "dtype", "health_every", "shards", "zero", "doc_mask")


# numeric flags and the values they accept (TrainConfig.LIMITS for the training settings)
MODEL_LIMITS = {"n_layer": "[1, inf)", "n_head": "[1, inf)", "n_kv_head": "[1, inf)", "n_embd": "[1, inf)",
                "block_size": "[1, inf)", "dropout": "[0, 1)"}
OTHER_LIMITS = {"vocab_size": "[1, inf)", "sample_tokens": "[0, inf)", "seed": "[0, inf)"}
NUMERIC_FLAGS = [("max_iters", int), ("batch_size", int), ("grad_accum", int), ("block_size", int),
                 ("n_layer", int), ("n_head", int), ("n_kv_head", int), ("n_embd", int),
                 ("max_seconds", float), ("dropout", float), ("lr", float), ("muon_lr", float),
                 ("warmup_iters", int), ("min_lr_ratio", float), ("weight_decay", float), ("beta2", float),
                 ("eval_every", int), ("eval_iters", int), ("log_every", int),
                 ("checkpoint_every", int), ("health_every", int), ("shards", int)]


FLAG_HELP = {
    "max_iters": "optimizer steps", "batch_size": "rows per micro-batch", "grad_accum": "micro-batches per step",
    "block_size": "context length T", "n_layer": "transformer blocks", "n_head": "attention heads",
    "n_kv_head": "key/value heads (grouped-query attention)", "n_embd": "width",
    "max_seconds": "also stop after this much wall time (0: no limit)", "dropout": "dropout probability",
    "lr": "peak learning rate (AdamW's)", "muon_lr": "Muon's peak learning rate",
    "warmup_iters": "steps of linear warmup", "min_lr_ratio": "the schedule ends at lr x this",
    "weight_decay": "decoupled weight decay on matrices", "beta2": "AdamW's second-moment decay",
    "eval_every": "steps between evaluations (0: only at the end)", "eval_iters": "validation batches per evaluation",
    "log_every": "steps between log lines and metrics records", "checkpoint_every": "steps between checkpoints "
    "(0: at each evaluation)", "health_every": "steps between gradient-health records (0: none)",
    "shards": "CPU threads per micro-batch (0: one per core)", "seed": "seed of data order, init and dropout",
    "optimizer": "muon: Muon on the blocks' matrices, AdamW on the rest", "schedule": "learning-rate schedule",
    "pos": "position encoding", "norm": "normalisation layer", "mlp": "feed-forward block",
}


def _default(key):
    """What applies when a flag is not given: the preset's value per device, else the config's."""
    from ..models import GPTConfig
    from ..train import TrainConfig
    if key == "n_kv_head":
        return "n_head"
    base = None
    for cls in (TrainConfig, GPTConfig):
        f = cls.__dataclass_fields__.get(key)
        if f is not None:
            base = f.default
    cpu, cuda = (PRESETS[d].get(key, base) for d in ("cpu", "cuda"))
    if key == "vocab_size":
        cuda = "none (char)"
    return str(cpu) if cpu == cuda else f"{cpu} on cpu, {cuda} on cuda"


def add_arguments(parser):
    def default(key, text=None):
        return f"{text or FLAG_HELP.get(key, '')} (default: {_default(key)}; on --resume: the run's)".strip()
    parser.add_argument("--data", help="text file, token file (.bin) or shard folder; default: tiny Shakespeare")
    parser.add_argument("--out-dir", default="out/shakespeare", help="checkpoints, metrics.jsonl, tokenizer")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="cuda selects nanoGPT's GPU Shakespeare config (default: cpu; on --resume: the run's)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"),
                        help="bf16: bfloat16 matmuls and attention, float32 weights and loss (GPU only) "
                             "(default: fp32; on --resume: the run's)")
    parser.add_argument("--resume", action="store_true", help="continue from <out-dir>/ckpt.safetensors")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an --out-dir that holds a checkpoint, replacing it")
    parser.add_argument("--seed", type=int, help=default("seed"))
    parser.add_argument("--tokenizer", choices=("bpe", "char"),
                        help=default("tokenizer", "byte-level BPE or nanoGPT's characters"))
    parser.add_argument("--vocab-size", type=int, help=default("vocab_size", "BPE vocabulary size"))
    parser.add_argument("--tokenizer-file",
                        help="tokenizer of a pre-encoded --data (its JSON file, or GPT-2's folder)")
    for key, typ in NUMERIC_FLAGS:
        parser.add_argument("--" + key.replace("_", "-"), type=typ, dest=key, help=default(key))
    parser.add_argument("--zero", type=int, choices=(0, 1),
                        help="under mpirun: 1 shards the optimizer state across ranks (ZeRO-1) (default: 0)")
    parser.add_argument("--optimizer", choices=("adamw", "muon"), help=default("optimizer"))
    parser.add_argument("--schedule", choices=("cosine", "wsd", "constant"), help=default("schedule"))
    parser.add_argument("--preset", choices=sorted(TRAIN_PRESETS), help="a named recipe over the device's "
                        "preset (config.TRAIN_PRESETS; qt-tiny: GQA, ALiBi, RMSNorm, GELU, WSD, beta2 0.95)")
    parser.add_argument("--pos", help=default("pos", "learned, rope, alibi, none, or per layer: rope,rope,rope,none"))
    parser.add_argument("--norm", choices=("layernorm", "rmsnorm"), help=default("norm"))
    parser.add_argument("--mlp", choices=("gelu", "swiglu"), help=default("mlp"))
    parser.add_argument("--no-bias", dest="bias", action="store_false", default=None,
                        help="no biases in the linear layers and norms")
    parser.add_argument("--doc-mask", action="store_true", default=None,
                        help="attention within each document only (needs a shard folder as --data)")
    parser.add_argument("--sample-tokens", type=int, default=None,
                        help="length of the final sample, 0: none (default: 250 with bpe, 500 with char)")
    parser.add_argument("--quiet", action="store_true", help="no per-step log lines")


def find_text(path=None, log=print):
    """The training text: the path given, $TINYGRAD_LLM_DATA, the cached copy, or a download."""
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"--data {p}: no such file or folder")
        return p
    env = os.environ.get("TINYGRAD_LLM_DATA")
    if env:
        p = Path(env)
        if p.is_dir():
            p = p / "tinyshakespeare.txt"
        if not p.exists():
            raise FileNotFoundError(f"$TINYGRAD_LLM_DATA points at {p}, which does not exist")
        return p
    cached = CACHE_DIR / "tinyshakespeare.txt"
    if cached.exists():
        return cached
    log(f"downloading tiny Shakespeare from {SHAKESPEARE_URL} to {cached} ...")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=60) as r:
            raw = r.read()
    except OSError as e:
        raise UsageError(f"could not download tiny Shakespeare ({e}); pass --data PATH to a text file "
                         "or set TINYGRAD_LLM_DATA") from None
    from ..files import atomic_write
    with atomic_write(cached) as f:
        f.write(raw)
    return cached


def check_data_path(path):
    """--data must be a non-empty file or a shard folder: refused before anything is written."""
    from ..shard_data import is_shard_folder
    p = Path(path)
    if p.is_dir():
        if not is_shard_folder(p):
            raise UsageError(f"--data {p} is a folder without shards (.bin files with .bin.json sidecars); "
                             "pass a text file, a token file (.bin) or a shard folder")
        return p
    if p.stat().st_size == 0:
        raise UsageError(f"--data {p} is empty")
    return p


def encode_text(text_path, kind, vocab_size, log=print):
    """Train the tokenizer on the text and encode it, in memory: (ids, tokenizer, name, source bytes)."""
    from ..tokenizer import BPETokenizer, CharTokenizer
    t0 = time.perf_counter()
    raw = Path(text_path).read_bytes()
    text = raw.decode("utf-8", "surrogateescape")
    if kind == "char":
        tok, name = CharTokenizer.from_text(text), "char"
    else:
        tok, name = BPETokenizer.train(text, vocab_size=vocab_size, strict=True), f"bpe{vocab_size}"
    ids = tok.encode(text) if kind == "char" else tok.encode_ordinary(text)
    log(f"tokenizer: {name}, vocab {tok.vocab_size}, {len(ids):,} tokens from {len(raw):,} bytes "
        f"({len(raw) / max(len(ids), 1):.2f} bytes/token) in {time.perf_counter() - t0:.1f}s")
    return ids, tok, name, len(raw)


def build_config(args, saved=None):
    """(TrainConfig, tokenizer kind, vocab size) from the preset of the device (or, on resume, the
    saved run's settings: `saved` is the checkpoint's meta) and the flags given."""
    from ..train import TrainConfig
    if saved:
        train = dict((saved.get("extra") or {}).get("train_config") or {})
        base = {k: train[k] for k in TRAIN_KEYS if k in train}
        base.update({k: v for k, v in (saved.get("config") or {}).items() if k in MODEL_KEYS})
        base.update(tokenizer=None, vocab_size=None)
    else:
        base = dict(PRESETS[args.device or "cpu"])
    recipe = TRAIN_PRESETS[args.preset] if getattr(args, "preset", None) and not saved else {}
    base.update(recipe)
    for key in MODEL_KEYS + TRAIN_KEYS + ("tokenizer", "vocab_size"):
        v = getattr(args, key, None)
        if v is not None:
            base[key] = v
    model = {k: base[k] for k in MODEL_KEYS if k in base}
    if saved:
        model = {**(saved.get("config") or {}), **model}
    train = {k: base[k] for k in TRAIN_KEYS if k in base}
    # a recipe's training fields that have no flag (decay_frac, beta1, grad_clip) still apply
    train.update({k: v for k, v in recipe.items() if k in TrainConfig.__dataclass_fields__ and k not in train})
    cfg = TrainConfig(out_dir=args.out_dir, model=model, **train)
    return cfg, base["tokenizer"], base["vocab_size"]


def check_flags(args):
    """Every numeric flag in its range, and flags that only make sense together."""
    from ..train import TrainConfig
    limits = {**{k: v for k, v in TrainConfig.LIMITS.items() if k in TRAIN_KEYS}, **MODEL_LIMITS, **OTHER_LIMITS}
    common.check_flags(args, limits)
    if args.dtype == "bf16" and args.device != "cuda" and not args.resume:
        raise UsageError("--dtype bf16 runs on the GPU only (--device cuda); the CPU trains in float32")
    from ..shard_data import is_shard_folder
    encoded = bool(args.data) and (Path(args.data).suffix == ".bin" or is_shard_folder(args.data))
    if encoded and not args.tokenizer_file:
        raise UsageError(f"--data {args.data} is pre-encoded: pass --tokenizer-file for the tokenizer that wrote it")
    if args.tokenizer_file and not encoded:
        raise UsageError("--tokenizer-file goes with pre-encoded --data (a .bin or a shard folder from "
                         "`tokenize encode`)")


def check_saved_tokenizer(args, tok, tok_path, saved):
    """On resume the run keeps its tokenizer: refuse --tokenizer/--vocab-size that say otherwise,
    and a tokenizer that does not fit the checkpoint's embedding."""
    kind = "char" if hasattr(tok, "stoi") else "bpe"
    if args.tokenizer and args.tokenizer != kind:
        raise UsageError(f"--tokenizer {args.tokenizer}: this run's tokenizer ({tok_path}) is {kind}; "
                         "a resumed run keeps its tokenizer")
    if args.vocab_size is not None and args.vocab_size != tok.vocab_size:
        raise UsageError(f"--vocab-size {args.vocab_size}: this run's tokenizer ({tok_path}) has "
                         f"{tok.vocab_size}; a resumed run keeps its tokenizer")
    ck_vocab = (saved.get("config") or {}).get("vocab_size")
    if ck_vocab is not None and ck_vocab < tok.vocab_size:
        raise UsageError(f"{tok_path} has {tok.vocab_size} tokens but the checkpoint's model only "
                         f"{ck_vocab}: the tokenizer is not the one this checkpoint was trained with")


def check_inputs(cfg, data, vocab_size):
    """What the Trainer would refuse (config, model shape, data shorter than a window), checked
    before a fresh run writes its tokenizer and token file into --out-dir."""
    from ..models import GPTConfig
    cfg.validate()
    model = GPTConfig.from_dict({"vocab_size": vocab_size, **cfg.model})
    for split in ("train", "val"):
        data.get_batch(split, 1, model.block_size, rng=np.random.default_rng(0))


_print = print


def main(args):
    from .. import distributed
    with distributed.abort_on_exit(distributed.init(args.device)):  # under mpirun: no rank exits alone
        return _main(args)


def _main(args):
    t_start = time.perf_counter()
    from .. import backend, distributed
    from ..checkpoint import read_checkpoint_meta
    from ..data import TokenData
    from ..runs import RunError, clear_old_run, open_run_dir
    from ..tokenizer import load_tokenizer, write_token_file
    from ..tokenizer.corpus import token_dtype
    from ..train import Trainer
    check_flags(args)
    if args.device == "cuda" and not backend.cuda_available():
        raise UsageError("--device cuda: no GPU found (CuPy missing or no device); use --device cpu")
    world = distributed.init(args.device or "cpu")  # under mpirun: this rank; else a world of one
    print = _print if world.is_main else (lambda *a, **k: None)  # noqa: A001 - rank 0 alone prints
    out_dir = Path(args.out_dir)
    with user_input():
        data_path = check_data_path(find_text(args.data))
        # rank 0 holds the folder; a refusal there ends the job (mpirun stops the other ranks)
        lock = open_run_dir(out_dir, resume=args.resume, overwrite=args.overwrite) if world.is_main else None
    log = (lambda m: None if m.startswith("step ") else print(m, flush=True)) if args.quiet else None
    try:
        with user_input():
            saved = read_checkpoint_meta(out_dir / "ckpt.safetensors") if args.resume else None
            cfg, kind, vocab_size = build_config(args, saved)
            if cfg.dtype == "bf16" and cfg.device != "cuda":
                raise UsageError("--dtype bf16 runs on the GPU only (--device cuda); the CPU trains in float32")
            if kind == "char" and args.vocab_size is not None and not args.resume:
                raise UsageError("--vocab-size sets a BPE vocabulary; this run uses --tokenizer char")
            tok_path = Path(args.tokenizer_file) if args.tokenizer_file else out_dir / "tokenizer.json"
            encoded = data_path.suffix == ".bin" or data_path.is_dir()  # a token file or a shard folder
            bin_path = data_path if encoded else out_dir / "tokens.bin"
            data = None  # the Trainer opens cfg.data (a shard folder is split between the ranks)
            if not encoded and not args.resume:
                print(f"data: {data_path}", flush=True)
                # rank 0 trains the tokenizer and encodes, checks, then writes; the others read its files
                if world.is_main:
                    ids, tok, name, n_bytes = encode_text(data_path, kind, vocab_size, log=print)
                    ids = np.asarray(ids, dtype=token_dtype(tok.vocab_size))
                    data = TokenData(ids, cfg.val_fraction, seed=cfg.seed, source_bytes=n_bytes)
                    data.meta["vocab_size"] = tok.vocab_size
                    check_inputs(cfg, data, tok.vocab_size)
                    clear_old_run(out_dir)  # --overwrite: the old checkpoint goes before its tokenizer does
                    tok.save(tok_path)
                    write_token_file(ids, bin_path, tok.vocab_size, n_bytes, name)
                world.barrier()
            if data is None:
                tok = load_tokenizer(tok_path)
            if args.resume and not encoded:
                check_saved_tokenizer(args, tok, tok_path, saved)
            kind = "char" if hasattr(tok, "stoi") else "bpe"
            cfg.data = str(bin_path)
            trainer = Trainer(cfg, data=data, decode_bytes=tok.decode_bytes, log=log)
            if tok_path.is_file():
                trainer.run_info["tokenizer_sha256"] = file_digest(tok_path)
        try:
            summary = trainer.run(resume=args.resume, overwrite=args.overwrite)
        except RunError as e:
            raise UsageError(str(e)) from None
    finally:
        if lock is not None:
            lock.release()
    if summary["val_loss"] is not None:
        print(f"val loss {summary['val_loss']:.4f} nats/token, {summary['val_bpb']:.4f} bits/byte "
              f"(evaluated at step {summary['val_step']}; {summary['elapsed_s']:.1f}s training"
              + (f", stopped at step {summary['step']})" if summary["val_step"] != summary["step"] else ")"),
              flush=True)
    n = args.sample_tokens if args.sample_tokens is not None else (250 if kind == "bpe" else 500)
    if n and summary["status"] == "done" and world.is_main:
        from ..models import generate_text
        print("---- sample ----")
        print(generate_text(trainer.model, tok, "\n", n, temperature=0.8, top_k=None, seed=cfg.seed))
        print("----------------")
    print(f"total wall time {time.perf_counter() - t_start:.1f}s", flush=True)
    return {"done": 0, "interrupted": 130, "aborted": 130, "diverged": 1}[summary["status"]]


if __name__ == "__main__":  # pragma: no cover
    from ..__main__ import main as run_command
    sys.exit(run_command(["train", *sys.argv[1:]]))
