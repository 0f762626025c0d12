"""Tokenizer speed on tiny Shakespeare: our trainer and encoder against a naive trainer, and
against Hugging Face `tokenizers` and `tiktoken` when they are installed, all in this one run.

    python benchmarks/tokenizer.py [--data tinyshakespeare.txt] [--gpt2 DIR] [--naive-prefix 65536]

Training: vocab 512, 1024, 4096, 16384 with the GPT-2 pattern (what HF's ByteLevel pre-tokenizer
uses) and the GPT-4 pattern.  The naive trainer (minbpe's RegexTokenizer loop: recount every
pair of every chunk per merge, with our tie rule) takes minutes on the whole text, so it runs on
a prefix; its whole-text time is that scaled by the size ratio (its cost is linear in the text),
and beyond vocab 1024 extrapolated from its per-merge cost between 512 and 1024.  Both are marked.
Encoding: GPT-2 on the whole text as one string; ours cold (empty chunk cache) and warm.
`tokenizers` and `tiktoken` are benchmark-only: pip install tokenizers tiktoken.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import regex

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinygrad_llm.tokenizer import BPETokenizer, bytes_to_unicode  # noqa: E402
from tinygrad_llm.tokenizer.patterns import GPT2_PATTERN  # noqa: E402
from tinygrad_llm.tokenizer.trainer import merge_word  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
VOCABS = (512, 1024, 4096, 16384)


def best_of(fn, repeat):
    """(min seconds over repeat calls, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def naive_train(text, vocab_sizes, pattern):
    """minbpe-style: every merge recounts all pairs of all chunk occurrences.  Returns
    ({vocab_size: seconds so far}, merges); the tie rule is ours, so the merges must agree."""
    t0 = time.perf_counter()
    ids = [list(c.encode("utf-8")) for c in regex.findall(pattern, text)]
    merges, times = [], {}
    for idx in range(256, max(vocab_sizes)):
        stats = {}
        for chunk in ids:
            for p in zip(chunk, chunk[1:]):
                stats[p] = stats.get(p, 0) + 1
        pair = min(stats, key=lambda p: (-stats[p], p))
        ids = [merge_word(chunk, pair[0], pair[1], idx) for chunk in ids]
        merges.append(pair)
        if idx + 1 in vocab_sizes:
            times[idx + 1] = time.perf_counter() - t0
    return times, merges


def hf_train(text, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([text], trainer)
    return tk


def gpt2_tiktoken(gpt2_dir):
    import tiktoken
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    encoder = json.loads((gpt2_dir / "encoder.json").read_text(encoding="utf-8"))
    ranks = {bytes(byte_decoder[c] for c in k): v for k, v in encoder.items() if k != "<|endoftext|>"}
    # tiktoken's own "gpt2" pattern; built from local files so nothing is downloaded
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding(name="gpt2-local", pat_str=pat, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def gpt2_hf(gpt2_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tk = Tokenizer(models.BPE.from_file(str(gpt2_dir / "encoder.json"), str(gpt2_dir / "vocab.bpe")))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return tk


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA / "tinyshakespeare.txt")
    ap.add_argument("--gpt2", type=Path, default=DATA / "gpt2", help="folder with encoder.json, vocab.bpe")
    ap.add_argument("--naive-prefix", type=int, default=1 << 16, help="characters the naive trainer sees")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs for the fast timings")
    args = ap.parse_args()
    text = args.data.read_text(encoding="utf-8")
    nbytes = len(text.encode("utf-8"))
    mb = nbytes / 1e6
    try:
        import tokenizers
    except ImportError:
        tokenizers = None
    try:
        import tiktoken
    except ImportError:
        tiktoken = None
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    say(f"# tokenizer benchmark: {args.data.name}, {nbytes:,} bytes; python {platform.python_version()}, "
        f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at start; regex {regex.__version__}; "
        f"tokenizers {getattr(tokenizers, '__version__', 'not installed')}; "
        f"tiktoken {getattr(tiktoken, '__version__', 'not installed') if tiktoken else 'not installed'}")

    # ------------------------------------------------------------------------------ training
    prefix = text[: args.naive_prefix]
    scale = len(text) / len(prefix)
    say(f"\n## training (seconds; best of {args.repeat}; naive on a {len(prefix):,}-char prefix, x{scale:.1f})")
    naive_times, naive_merges = naive_train(prefix, (512, 1024), GPT2_PATTERN)
    ours_prefix = BPETokenizer.train(prefix, 1024, pattern="gpt2")
    assert list(ours_prefix.merges) == naive_merges, "fast and naive trainers disagree"
    per_merge = (naive_times[1024] - naive_times[512]) / 512 * scale  # whole-text seconds per merge
    say(f"naive vs ours on the prefix itself: vocab 512 {naive_times[512]:.2f} s vs "
        f"{best_of(lambda: BPETokenizer.train(prefix, 512, pattern='gpt2'), args.repeat)[0]:.3f} s, "
        f"vocab 1024 {naive_times[1024]:.2f} s vs "
        f"{best_of(lambda: BPETokenizer.train(prefix, 1024, pattern='gpt2'), args.repeat)[0]:.3f} s "
        "(same merges)")
    say(f"{'vocab':>6} | {'ours gpt2':>9} | {'ours gpt4':>9} | {'naive gpt2 (whole text)':>27} | "
        f"{'HF tokenizers':>13} | {'ours/naive':>10} | {'ours/HF':>7}")
    for v in VOCABS:
        ours2, tok2 = best_of(lambda: BPETokenizer.train(text, v, pattern="gpt2"), args.repeat)
        ours4, _ = best_of(lambda: BPETokenizer.train(text, v, pattern="gpt4"), args.repeat)
        if v in naive_times:
            naive, how = naive_times[v] * scale, "scaled"
        else:
            naive, how = naive_times[1024] * scale + per_merge * (v - 1024), "extrapolated"
        if tokenizers is not None:
            hf, _ = best_of(lambda: hf_train(text, v), args.repeat)
            hf_s, ratio_hf = f"{hf:13.3f}", f"{ours2 / hf:6.1f}x"
        else:
            hf_s, ratio_hf = f"{'-':>13}", f"{'-':>7}"
        say(f"{v:>6} | {ours2:9.3f} | {ours4:9.3f} | {naive:12.1f} ({how:>12}) | {hf_s} | "
            f"{naive / ours2:9.0f}x | {ratio_hf}")
    say("ours/naive: how many times faster ours is; ours/HF: our time over HF's, below 1 means "
        "ours is faster (HF may use every core)")

    # ------------------------------------------------------------------------------ encoding
    if not (args.gpt2 / "encoder.json").is_file():
        say(f"\n(no GPT-2 files in {args.gpt2}: encoding benchmark skipped)")
    else:
        say(f"\n## GPT-2 encoding of the whole text as one string (MB/s; best of {args.repeat})")
        gpt2 = BPETokenizer.from_gpt2(args.gpt2 / "encoder.json", args.gpt2 / "vocab.bpe")

        def cold():
            gpt2.clear_cache()
            return gpt2.encode(text)

        t_cold, ids = best_of(cold, args.repeat)
        t_warm, ids_warm = best_of(lambda: gpt2.encode(text), args.repeat)
        assert ids == ids_warm, "warm and cold encodings differ"
        if nbytes == 1_115_394:  # tiny Shakespeare's check value
            assert len(ids) == 338_025, f"tiny Shakespeare gave {len(ids)} GPT-2 tokens, not 338,025"
        rows = [("ours, cold cache", t_cold, ids), ("ours, warm cache", t_warm, ids_warm)]
        if tiktoken is not None:
            enc = gpt2_tiktoken(args.gpt2)
            t, tids = best_of(lambda: enc.encode_ordinary(text), args.repeat)
            rows.append(("tiktoken", t, tids))
        if tokenizers is not None:
            hf = gpt2_hf(args.gpt2)
            t, hids = best_of(lambda: hf.encode(text).ids, args.repeat)
            rows.append(("HF tokenizers", t, hids))
        ref = dict((name, t) for name, t, _ in rows)
        say(f"{'encoder':<18} | {'MB/s':>6} | {'tokens':>8} | same ids as ours")
        for name, t, out in rows:
            say(f"{name:<18} | {mb / t:6.2f} | {len(out):8,} | {out == ids}")
        if "tiktoken" in ref:
            say(f"ours warm / tiktoken = {ref['tiktoken'] / t_warm:.2f}x throughput")
        if "HF tokenizers" in ref:
            say(f"ours cold / HF tokenizers = {ref['HF tokenizers'] / t_cold:.2f}x throughput")
    return lines


if __name__ == "__main__":
    main()
