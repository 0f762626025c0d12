"""`python -m tinygrad_llm train` and examples/train_shakespeare.py: text in, trained GPT out.

With no arguments: find tiny Shakespeare (--data, else $TINYGRAD_LLM_DATA, else the cached copy
in ~/.cache/tinygrad_llm/, else download it into that cache), train
a byte-level BPE tokenizer on it (or a char-level vocabulary with --tokenizer char), encode it,
train a GPT on the CPU, then print the validation loss, bits per byte and a sample.

--data may also name a token file (.bin with its .bin.json sidecar, from `tokenize encode`) or a
folder of shards (`tokenize encode --out DIR`); then --tokenizer-file names the tokenizer that
wrote it (its JSON file, or GPT-2's folder), for the sample and --doc-mask.
"""
import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path

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


def add_arguments(parser):
    parser.add_argument("--data", help="text file, token file (.bin) or shard folder; default: tiny Shakespeare")
    parser.add_argument("--out-dir", default="out/shakespeare", help="checkpoints, metrics.jsonl, tokenizer")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda selects nanoGPT's GPU Shakespeare config")
    parser.add_argument("--dtype", choices=("fp32", "bf16"),
                        help="bf16: bfloat16 matmuls and attention, float32 weights and loss (GPU only)")
    parser.add_argument("--resume", action="store_true", help="continue from <out-dir>/ckpt.safetensors")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--tokenizer", choices=("bpe", "char"), help="byte-level BPE or nanoGPT's characters")
    parser.add_argument("--vocab-size", type=int, help="BPE vocabulary size")
    parser.add_argument("--tokenizer-file",
                        help="tokenizer of a pre-encoded --data (its JSON file, or GPT-2's folder)")
    for key, typ in [("max_iters", int), ("batch_size", int), ("grad_accum", int), ("block_size", int),
                     ("n_layer", int), ("n_head", int), ("n_kv_head", int), ("n_embd", int),
                     ("max_seconds", float), ("dropout", float), ("lr", float), ("muon_lr", float), ("warmup_iters", int),
                     ("min_lr_ratio", float), ("weight_decay", float), ("beta2", float),
                     ("eval_every", int), ("eval_iters", int), ("log_every", int),
                     ("checkpoint_every", int), ("health_every", int), ("shards", int)]:
        parser.add_argument("--" + key.replace("_", "-"), type=typ, dest=key)
    parser.add_argument("--zero", type=int, choices=(0, 1),
                        help="under mpirun: 1 shards the optimizer state across ranks (ZeRO-1)")
    parser.add_argument("--optimizer", choices=("adamw", "muon"))
    parser.add_argument("--schedule", choices=("cosine", "wsd", "constant"))
    parser.add_argument("--pos", choices=("learned", "rope"))
    parser.add_argument("--norm", choices=("layernorm", "rmsnorm"))
    parser.add_argument("--mlp", choices=("gelu", "swiglu"))
    parser.add_argument("--no-bias", dest="bias", action="store_false", default=None)
    parser.add_argument("--doc-mask", action="store_true", default=None,
                        help="attention within each document only (needs a shard folder as --data)")
    parser.add_argument("--sample-tokens", type=int, default=None, help="length of the final sample (0: none)")
    parser.add_argument("--quiet", action="store_true", help="no per-step log lines")


def find_text(path=None, log=print):
    """The training text: the path given, $TINYGRAD_LLM_DATA, the cached copy, or a download."""
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"--data {p}: no such file")
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
        raise SystemExit(f"could not download tiny Shakespeare ({e}); pass --data PATH to a text file "
                         "or set TINYGRAD_LLM_DATA") from None
    from ..files import atomic_write
    with atomic_write(cached) as f:
        f.write(raw)
    return cached


def prepare_tokens(text_path, out_dir, kind, vocab_size, reuse=False, log=print):
    """Train the tokenizer and encode the text into out_dir; returns (token file, tokenizer)."""
    from ..tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, write_token_file
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_path, bin_path = out_dir / "tokenizer.json", out_dir / "tokens.bin"
    if reuse and tok_path.exists() and bin_path.exists():  # --resume: the very same ids
        return bin_path, load_tokenizer(tok_path)
    t0 = time.perf_counter()
    raw = Path(text_path).read_bytes()
    text = raw.decode("utf-8", "surrogateescape")
    if kind == "char":
        tok = CharTokenizer.from_text(text)
        name = "char"
    else:
        tok = BPETokenizer.train(text, vocab_size=vocab_size)
        name = f"bpe{vocab_size}"
    ids = tok.encode(text) if kind == "char" else tok.encode_ordinary(text)
    tok.save(tok_path)
    meta = write_token_file(ids, bin_path, tok.vocab_size, len(raw), name)
    log(f"tokenizer: {name}, vocab {tok.vocab_size}, {meta['num_tokens']:,} tokens from "
        f"{len(raw):,} bytes ({len(raw) / meta['num_tokens']:.2f} bytes/token) in {time.perf_counter() - t0:.1f}s")
    return bin_path, tok


def build_config(args):
    """(TrainConfig, tokenizer kind, vocab size) from the preset of the device and the flags given."""
    from ..train import TrainConfig
    preset = dict(PRESETS[args.device])
    for key in MODEL_KEYS + TRAIN_KEYS + ("tokenizer", "vocab_size"):
        v = getattr(args, key, None)
        if v is not None:
            preset[key] = v
    model = {k: preset[k] for k in MODEL_KEYS if k in preset}
    train = {k: preset[k] for k in TRAIN_KEYS if k in preset}
    cfg = TrainConfig(out_dir=args.out_dir, model=model, **train)
    if args.quiet:
        cfg.log_every = 10 ** 9
    return cfg, preset["tokenizer"], preset["vocab_size"]


_print = print


def main(args):
    t_start = time.perf_counter()
    from .. import backend, distributed
    from ..train import Trainer
    if args.device == "cuda" and not backend.cuda_available():
        raise SystemExit("--device cuda: no GPU found (CuPy missing or no device); use --device cpu")
    if args.dtype == "bf16" and args.device != "cuda":
        raise SystemExit("--dtype bf16 runs on the GPU only (--device cuda); the CPU trains in float32")
    world = distributed.init(args.device)  # under mpirun: this rank; else a world of one
    print = _print if world.is_main else (lambda *a, **k: None)  # noqa: A001 - rank 0 alone prints
    cfg, kind, vocab_size = build_config(args)
    data_path = find_text(args.data)
    if data_path.suffix == ".bin" or data_path.is_dir():
        if not args.tokenizer_file:
            raise SystemExit(f"--data {data_path} is pre-encoded: pass --tokenizer-file for the tokenizer "
                             "that wrote it")
        from ..tokenizer import load_tokenizer
        bin_path, tok = data_path, load_tokenizer(args.tokenizer_file)
    else:
        print(f"data: {data_path}", flush=True)
        # rank 0 trains the tokenizer and encodes; the others then read its files from --out-dir
        if world.is_main:
            bin_path, tok = prepare_tokens(data_path, args.out_dir, kind, vocab_size, reuse=args.resume)
        world.barrier()
        if not world.is_main:
            bin_path, tok = prepare_tokens(data_path, args.out_dir, kind, vocab_size, reuse=True)
    cfg.data = str(bin_path)
    trainer = Trainer(cfg, decode_bytes=tok.decode_bytes)
    summary = trainer.run(resume=args.resume)
    if summary["val_loss"] is not None:
        print(f"val loss {summary['val_loss']:.4f} nats/token, {summary['val_bpb']:.4f} bits/byte "
              f"(step {summary['step']}, {summary['elapsed_s']:.1f}s training)", flush=True)
    n = args.sample_tokens if args.sample_tokens is not None else (500 if kind == "char" else 250)
    if n and summary["status"] != "diverged" and world.is_main:
        from ..models import generate_text
        print("---- sample ----")
        print(generate_text(trainer.model, tok, "\n", n, temperature=0.8, top_k=None, seed=cfg.seed))
        print("----------------")
    print(f"total wall time {time.perf_counter() - t_start:.1f}s", flush=True)
    return {"done": 0, "interrupted": 130, "diverged": 1}[summary["status"]]


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(main(p.parse_args()))
