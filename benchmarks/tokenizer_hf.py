"""Encoding speed of a Hugging Face tokenizer.json: ours (tokenizer.from_pretrained) vs `tokenizers`.

    python benchmarks/tokenizer_hf.py [--vocab 8192] [--repeat 3] [--out benchmarks/results/tokenizer_hf_DATE.txt]

A Llama-3-style tokenizer (Llama 3's Split regex, ByteLevel without its own regex, ignore_merges,
<|begin_of_text|> added by the post-processor) is trained in the run with the library's own
BpeTrainer on tiny Shakespeare and saved as a folder; both load that folder.  Timed, best of
--repeat, on the same text:

  whole text   the 1.1 MB file as one string; ours cold (chunk cache cleared first) and warm
  paragraphs   one encode per paragraph (blank-line separated); the library's encode_batch on one
               thread (RAYON_NUM_THREADS=1, set before it is imported) and our loop of encode

Every row checks that the ids agree with the library's.  MB/s = UTF-8 bytes / wall seconds.
"""
import argparse
import datetime
import io
import os
import platform
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the library's batch encode: one thread, as ours

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinygrad_llm.tokenizer import from_pretrained

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_llama3_style(text, vocab_size):
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    tk = Tokenizer(models.BPE(ignore_merges=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    bos = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])])
    return tk


def best(fn, repeat, before=None):
    times, result = [], None
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def machine():
    import numpy as np
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   platform.processor())
    buf = io.StringIO()
    with redirect_stdout(buf):
        np.show_config()
    blas = next((line.strip() for line in buf.getvalue().splitlines() if "name:" in line), "unknown")
    return cpu, blas, os.cpu_count(), os.getloadavg()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the table here")
    args = ap.parse_args()
    if not DATA.is_file():
        sys.exit(f"error: {DATA} not found (tiny Shakespeare)")
    import tokenizers
    text = DATA.read_text(encoding="utf-8")
    nbytes = len(text.encode("utf-8"))
    paragraphs = [p + "\n\n" for p in text.split("\n\n")]
    cpu, blas, ncpu, load = machine()

    t0 = time.perf_counter()
    ref = train_llama3_style(text, args.vocab)
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        ref.save(str(Path(d) / "tokenizer.json"))
        t0 = time.perf_counter()
        ours = from_pretrained(d)
        load_s = time.perf_counter() - t0

    rows = []
    t_ref, ids_ref = best(lambda: ref.encode(text).ids, args.repeat)
    t_cold, ids_cold = best(lambda: ours.encode(text), args.repeat, before=ours.model._cache.clear)
    t_warm, ids_warm = best(lambda: ours.encode(text), args.repeat)
    rows.append(("whole text", "tokenizers encode", t_ref, True, len(ids_ref)))
    rows.append(("whole text", "ours, cold cache", t_cold, ids_cold == ids_ref, len(ids_cold)))
    rows.append(("whole text", "ours, warm cache", t_warm, ids_warm == ids_ref, len(ids_warm)))
    t_bref, b_ref = best(lambda: [e.ids for e in ref.encode_batch(paragraphs)], args.repeat)
    t_bcold, b_cold = best(lambda: ours.encode_batch(paragraphs), args.repeat, before=ours.model._cache.clear)
    t_bwarm, b_warm = best(lambda: ours.encode_batch(paragraphs), args.repeat)
    n = sum(map(len, b_ref))
    rows.append(("paragraphs", "tokenizers encode_batch, 1 thread", t_bref, True, n))
    rows.append(("paragraphs", "ours, cold cache", t_bcold, b_cold == b_ref, sum(map(len, b_cold))))
    rows.append(("paragraphs", "ours, warm cache", t_bwarm, b_warm == b_ref, sum(map(len, b_warm))))

    stamp = datetime.date.today().isoformat()
    lines = [f"# Hugging Face tokenizer.json encoding: ours vs tokenizers {tokenizers.__version__} ({stamp})",
             (f"# {cpu}, {ncpu} cpus, NumPy BLAS {blas}, python {platform.python_version()}; "
              f"load average {load:.1f} at start: a loaded machine, so the times are noisy"),
             (f"# Llama-3-style tokenizer trained in the run: vocab {args.vocab}, {train_s:.1f} s to train, "
              f"{load_s * 1000:.0f} ms for ours to load; text: tiny Shakespeare, {nbytes:,} bytes, "
              f"{len(paragraphs):,} paragraphs; best of {args.repeat}"),
             "",
             f"{'input':<11} | {'encoder':<34} | {'seconds':>8} | {'MB/s':>6} | {'tokens':>8} | same ids",
             "-" * 88]
    for what, who, t, same, count in rows:
        lines.append(f"{what:<11} | {who:<34} | {t:8.3f} | {nbytes / t / 1e6:6.2f} | {count:8,} | {same}")
    lines += ["", (f"whole text: ours cold / tokenizers = {t_ref / t_cold:.2f}x throughput, "
                   f"ours warm / tokenizers = {t_ref / t_warm:.2f}x"),
              (f"paragraphs: ours cold / tokenizers = {t_bref / t_bcold:.2f}x throughput, "
               f"ours warm / tokenizers = {t_bref / t_bwarm:.2f}x")]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    if not all(r[3] for r in rows):
        sys.exit("error: the ids differ from the library's")


if __name__ == "__main__":
    main()
