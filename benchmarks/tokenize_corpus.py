"""Corpus encoding speed with 1 and 2 workers (and HF `tokenizers` if installed), and the peak
memory of training from a 1 GB shard corpus.

    python benchmarks/tokenize_corpus.py encode [--mb 50] [--workers 1 2] [--gpt2 DIR]
    python benchmarks/tokenize_corpus.py train-rss [--gb 1.0] [--steps 300]

encode: a corpus of at least --mb MB is assembled from tiny Shakespeare (one document per
paragraph, in .jsonl) and the Python standard library's .py and .decTest files (one document
per file, in .txt files joined by <|endoftext|>). That is about 38 MB of distinct text; to reach
the size the documents are cycled through again (a second pass meets warmer chunk caches, in
both encoders alike). It is encoded with GPT-2's tokenizer into shards by `encode_corpus` with
each worker count, every run into a fresh folder; the shards must be identical. MB/s = input
bytes / wall time of the whole command (reading, encoding, writing). The target: 2 workers at
least 1.7x of 1 worker on 2 cores, and at least 5 MB/s. With `tokenizers` installed, its
batch encode (the same documents, GPT-2 files, RAYON_NUM_THREADS = the largest worker count)
is timed too and the ratio reported; it also checks the ids agree on a sample of documents.

train-rss: writes a synthetic shard folder of --gb GB of uint16 ids (100M-token shards, a 1M
token val shard) and a 10 MB one, then trains a small GPT for --steps steps on each in a
subprocess (vocabulary 8192, T=256, batch 8: the model's own memory is small), and draws
loader-only batches of 64 x 1024 ids adding up to the corpus's size; it reports each
subprocess's peak RSS. Flat memory: the 1 GB corpus costs about what the 10 MB one does.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinygrad_llm.tokenizer import BPETokenizer  # noqa: E402
from tinygrad_llm.tokenizer.shards import encode_corpus  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
EOT = "<|endoftext|>"


# --------------------------------------------------------------------------------------- encode
def source_documents():
    """(name, text) of the distinct documents: Shakespeare's paragraphs, then stdlib files."""
    shakespeare = DATA / "tinyshakespeare.txt"
    if shakespeare.exists():
        for i, para in enumerate(shakespeare.read_text(encoding="utf-8").split("\n\n")):
            yield "shakespeare", para
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(stdlib.rglob("*")):
        if f.suffix in (".py", ".decTest") and f.is_file() and "site-packages" not in f.parts:
            text = f.read_text(encoding="utf-8", errors="replace").replace(EOT, "")
            yield "stdlib", text


def assemble_corpus(folder, mb):
    """Write >= mb MB of documents into folder: a .jsonl for Shakespeare, .txt files for stdlib."""
    folder.mkdir(parents=True, exist_ok=True)
    target, total, part = mb * 1e6, 0, 0
    docs = []
    while total < target:
        for kind, text in source_documents():
            docs.append((kind, text))
            total += len(text.encode("utf-8"))
            if total >= target:
                break
    jsonl = open(folder / "shakespeare.jsonl", "w", encoding="utf-8")
    txt, txt_bytes = None, 0
    for kind, text in docs:
        if kind == "shakespeare":
            jsonl.write(json.dumps({"text": text}) + "\n")
            continue
        if txt is None or txt_bytes > 8e6:  # several .txt files of about 8 MB
            if txt is not None:
                txt.close()
            txt, txt_bytes, part = open(folder / f"stdlib_{part:02d}.txt", "w", encoding="utf-8"), 0, part + 1
        txt.write(text + EOT)
        txt_bytes += len(text)
    jsonl.close()
    txt.close()
    return sum(f.stat().st_size for f in folder.iterdir())


def corpus_texts(folder):
    """The documents as encode_corpus reads them, for the HF reference."""
    from tinygrad_llm.tokenizer.documents import corpus_files, document_text, iter_documents
    return [document_text(d) for d in iter_documents(corpus_files([folder]))]


def hf_tokenizer(gpt2):
    from tokenizers import Tokenizer
    from tokenizers.decoders import ByteLevel as ByteLevelDecoder
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel
    tok = Tokenizer(BPE.from_file(str(gpt2 / "encoder.json"), str(gpt2 / "vocab.bpe")))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = ByteLevelDecoder()
    return tok


def bench_encode(args):
    gpt2 = Path(args.gpt2)
    tok = BPETokenizer.from_gpt2(gpt2 / "encoder.json", gpt2 / "vocab.bpe")
    work = Path(args.work or tempfile.mkdtemp(prefix="tokenize_corpus_"))
    corpus = work / "corpus"
    t0 = time.perf_counter()
    nbytes = assemble_corpus(corpus, args.mb)
    print(f"corpus: {nbytes / 1e6:.1f} MB in {corpus} (assembled in {time.perf_counter() - t0:.1f} s); "
          f"{os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    rates, reference = {}, None
    for w in args.workers:
        out = work / f"shards_w{w}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        s = encode_corpus(tok, [corpus], out, workers=w, tokenizer_name="gpt2", verbose=False,
                          shard_tokens=args.shard_tokens, val_tokens=args.val_tokens)
        seconds = time.perf_counter() - t0
        rates[w] = nbytes / 1e6 / seconds
        shards = [p.read_bytes() for p in sorted(out.glob("*.bin"))]
        same = "" if reference is None else (", ids identical" if shards == reference else ", IDS DIFFER")
        reference = reference or shards
        print(f"workers {w}: {seconds:6.1f} s, {rates[w]:6.2f} MB/s, {s['tokens']:,} tokens in "
              f"{s['shards']} shards{same}", flush=True)
        if shards != reference:
            raise SystemExit("the shards depend on the worker count")
    if 1 in rates:
        for w in rates:
            if w != 1:
                print(f"speedup with {w} workers: {rates[w] / rates[1]:.2f}x")
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        print("HF tokenizers: not installed (pip install tokenizers) - no reference")
        return
    threads = max(args.workers)
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when its thread pool starts: set it first
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    texts = corpus_texts(corpus)
    hf = hf_tokenizer(gpt2)
    t0 = time.perf_counter()
    encoded = hf.encode_batch(texts)
    seconds = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    for i in rng.choice(len(texts), size=min(200, len(texts)), replace=False):
        if encoded[i].ids != tok.encode_ordinary(texts[i]):
            raise SystemExit(f"HF and ours disagree on document {i}")
    hf_rate = nbytes / 1e6 / seconds
    print(f"HF tokenizers encode_batch ({threads} threads, {tokenizers.__version__}): {seconds:.1f} s, "
          f"{hf_rate:.2f} MB/s (documents already in memory); ours / HF with {threads} workers: "
          f"{rates[threads] / hf_rate:.3f}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------ train-rss
def synthetic_shards(folder, train_tokens, val_tokens=1_000_000, shard_tokens=100_000_000, vocab=8192):
    """A shard folder of random uint16 ids, in encode_corpus's format."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [val_tokens] + [min(shard_tokens, train_tokens - i) for i in range(0, train_tokens, shard_tokens)]
    for index, n in enumerate(sizes):
        path = folder / f"{'val' if index == 0 else 'train'}_{index:06d}.bin"
        with open(path, "wb") as f:
            for lo in range(0, n, 10_000_000):
                rng.integers(0, vocab, size=min(10_000_000, n - lo), dtype=np.uint16).tofile(f)
        meta = {"dtype": "uint16", "vocab_size": vocab, "num_tokens": n, "source_bytes": 4 * n,
                "tokenizer": "synthetic", "split": "val" if index == 0 else "train", "shard": index,
                "eot_id": vocab - 1, "end": [0, 0], "last": index == len(sizes) - 1, "settings": {}}
        Path(str(path) + ".json").write_text(json.dumps(meta))


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from tinygrad_llm.train import TrainConfig, Trainer
mode, folder, steps, out = sys.argv[1:5]
t0 = time.perf_counter()
if mode == "train":
    cfg = TrainConfig(data=folder, out_dir=out, model=dict(block_size=256, n_layer=2, n_head=4, n_embd=64),
                      batch_size=8, max_iters=int(steps), warmup_iters=10, eval_every=0, eval_iters=5,
                      final_eval="sample", log_every=10**9)
    Trainer(cfg, log=lambda m: None).run()
else:
    from tinygrad_llm.shard_data import ShardData
    data = ShardData(folder)
    for _ in range(int(steps)):
        data.get_batch("train", 64, 1024)
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0}}))
"""


def child_peak(mode, folder, steps, out):
    r = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), mode, str(folder), str(steps), str(out)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_train_rss(args):
    work = Path(args.work or tempfile.mkdtemp(prefix="shard_rss_"))
    big, small = work / "big", work / "small"
    train_tokens = int(args.gb * 1e9 / 2)
    t0 = time.perf_counter()
    synthetic_shards(big, train_tokens)
    synthetic_shards(small, 5_000_000)
    print(f"synthetic shards: {train_tokens * 2 / 1e9:.2f} GB and 10 MB of uint16 ids "
          f"({time.perf_counter() - t0:.1f} s to write)", flush=True)
    # loader only: batches of 64 x 1025 ids until the windows drawn add up to --gb of the corpus
    sweep = max(1, int(train_tokens / (64 * 1024)))
    for name, folder in (("10 MB", small), (f"{args.gb:g} GB", big)):
        tr = child_peak("train", folder, args.steps, work / f"run_{folder.name}")
        ld = child_peak("load", folder, sweep, work / "unused")
        print(f"{name:>7} corpus: training {args.steps} steps peak RSS {tr['peak_rss_mb']:7.1f} MB "
              f"({tr['seconds']:.1f} s); loader {sweep} batches of 64 x 1024 peak RSS "
              f"{ld['peak_rss_mb']:7.1f} MB ({ld['seconds']:.1f} s)", flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (the done-when asks >= 50)")
    e.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    e.add_argument("--gpt2", default=str(DATA / "gpt2"), help="folder with encoder.json and vocab.bpe")
    e.add_argument("--shard-tokens", type=int, default=5_000_000)
    e.add_argument("--val-tokens", type=int, default=500_000)
    e.add_argument("--work", help="keep the corpus and shards here (default: a temporary folder)")
    t = sub.add_parser("train-rss")
    t.add_argument("--gb", type=float, default=1.0)
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--work", help="keep the shards here (default: a temporary folder)")
    args = p.parse_args()
    bench_encode(args) if args.what == "encode" else bench_train_rss(args)


if __name__ == "__main__":
    main()
