"""Fine-tune a pretrained GPT to classify text: a new head on the last real token of each text.

The offline demo: which of the most frequent speakers of tiny Shakespeare says a line, starting
from the model `python examples/train_shakespeare.py` wrote to out/shakespeare:

    python examples/train_shakespeare.py
    python examples/finetune_classifier.py --demo shakespeare --init out/shakespeare

Your own labelled file (a header row; .csv comma-separated, .tsv tab-separated), from our run or
from a Hugging Face GPT-2 directory (config.json, model.safetensors, vocab.json + merges.txt):

    python examples/finetune_classifier.py --data reviews.csv --text-col text --label-col label \\
        --init gpt2-dir --train 2 --epochs 3

The spam/ham data of "Build a Large Language Model (from Scratch)", chapter 6: the SMS Spam
Collection (UCI, https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip),
downloaded once to ~/.cache/tinygrad_llm and balanced to as many spam as ham messages:

    python examples/finetune_classifier.py --demo spam --init gpt2-dir

--train picks what trains: head, a number N of last blocks (with the final norm and the head),
or all; --lora-rank R trains LoRA adapters and the head instead. It prints loss and accuracy on
train and val after each epoch, the majority-class baseline, and the wall time.
"""
import argparse
import csv
import io
import json
import os
import re
import sys
import time
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import numpy as np  # noqa: E402

import tinygrad_llm as tl  # noqa: E402
from tinygrad_llm import nn  # noqa: E402
from tinygrad_llm.finetune.classify import LabelledData, fit, read_labelled  # noqa: E402
from tinygrad_llm.models import GPTClassifier  # noqa: E402

SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinygrad_llm"
SPEAKER = re.compile(r"[A-Z][A-Za-z' ]*:")


def load_init(path, tokenizer=None):
    """(GPT, tokenizer) from a Hugging Face GPT-2 directory or one of our runs / checkpoints."""
    from tinygrad_llm.models import GPT
    from tinygrad_llm.tokenizer import BPETokenizer, load_tokenizer
    from tinygrad_llm.train import load_model
    p = Path(path)
    if p.is_dir() and (p / "config.json").exists():  # Hugging Face layout
        model = GPT.from_safetensors(p)
        tdir = Path(tokenizer) if tokenizer else p
        for enc, bpe in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (tdir / enc).exists() and (tdir / bpe).exists():
                return model, BPETokenizer.from_gpt2(tdir / enc, tdir / bpe)
        raise SystemExit(f"--init {p}: no GPT-2 tokenizer files (vocab.json + merges.txt, or encoder.json "
                         f"+ vocab.bpe) in {tdir}; pass --tokenizer DIR")
    ckpt = p / "ckpt.safetensors" if p.is_dir() else p
    if not ckpt.exists():
        raise SystemExit(f"--init {p}: neither a Hugging Face GPT-2 directory (config.json) nor a checkpoint "
                         f"({ckpt} missing); train one first: python examples/train_shakespeare.py")
    tok_path = Path(tokenizer) if tokenizer else ckpt.parent / "tokenizer.json"
    if not tok_path.exists():
        raise SystemExit(f"no tokenizer at {tok_path}; pass --tokenizer")
    model, _ = load_model(ckpt)
    model.train()
    return model, load_tokenizer(tok_path)


def shakespeare_lines(text, speakers=4):
    """(lines, speaker) for every line spoken by the `speakers` most frequent speakers (by lines)."""
    rows = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and SPEAKER.fullmatch(lines[0]):
            rows += [(line.strip(), lines[0][:-1]) for line in lines[1:] if line.strip()]
    top = {name for name, _ in Counter(s for _, s in rows).most_common(speakers)}
    return [t for t, s in rows if s in top], [s for _, s in rows if s in top]


def find_shakespeare(path=None):
    """The path given, else where train_shakespeare.py looks ($TINYGRAD_LLM_DATA, the cache, a download)."""
    from tinygrad_llm.cli.train import find_text
    return find_text(path, log=print)


def download_spam():
    """(texts, labels) of the SMS Spam Collection, cached as a TSV with a header."""
    cached = CACHE_DIR / "sms_spam.tsv"
    if not cached.exists():
        print(f"downloading the SMS Spam Collection from {SPAM_URL} ...", flush=True)
        try:
            with urllib.request.urlopen(SPAM_URL, timeout=60) as r:
                raw = r.read()
        except OSError as e:
            raise SystemExit(f"could not download the spam data ({e}); fetch {SPAM_URL} yourself, unzip "
                             "SMSSpamCollection and pass --data FILE.tsv --text-col text --label-col label "
                             "after adding the header line 'label<TAB>text'") from None
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            body = z.read("SMSSpamCollection").decode("utf-8")
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["label", "text"])
            for line in body.splitlines():
                if "\t" in line:
                    w.writerow(line.split("\t", 1))
        os.replace(tmp, cached)
    return read_labelled(cached, "text", "label")


def balanced(texts, labels, seed):
    """Undersample every class to the smallest one's size (the book does this for spam/ham)."""
    rng = np.random.default_rng(seed)
    by = {}
    for t, y in zip(texts, labels):
        by.setdefault(y, []).append(t)
    n = min(len(v) for v in by.values())
    out = [(t, y) for y, ts in by.items() for t in rng.permutation(ts)[:n].tolist()]
    return [t for t, _ in out], [y for _, y in out]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", choices=("shakespeare", "spam"), help="a built-in dataset instead of --data")
    ap.add_argument("--data", help="labelled .csv or .tsv with a header row")
    ap.add_argument("--text-col", default="text")
    ap.add_argument("--label-col", default="label")
    ap.add_argument("--init", default="out/shakespeare",
                    help="a Hugging Face GPT-2 directory, or our run directory / checkpoint file")
    ap.add_argument("--tokenizer", help="tokenizer.json of our run, or a directory with GPT-2's files")
    ap.add_argument("--speakers", type=int, default=4, help="--demo shakespeare: how many speakers")
    ap.add_argument("--text", help="--demo shakespeare: the text file (default: as train_shakespeare.py finds it)")
    ap.add_argument("--from-scratch", action="store_true",
                    help="re-draw --init's weights at random (same config, same tokenizer): what pretraining is worth")
    ap.add_argument("--train", default="all", help="head | N (last N blocks + final norm + head) | all")
    ap.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (and the head)")
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--max-len", type=int, default=128, help="tokens per text (cut to the model's block size)")
    ap.add_argument("--val-frac", type=float, default=0.15)
    ap.add_argument("--max-examples", type=int, help="use at most this many examples (a quick run)")
    ap.add_argument("--eval-batches", type=int, help="evaluate on at most this many batches per split")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", help="write the metrics as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tl.manual_seed(args.seed)

    if args.demo == "shakespeare":
        texts, labels = shakespeare_lines(find_shakespeare(args.text).read_text(encoding="utf-8"), args.speakers)
    elif args.demo == "spam":
        texts, labels = balanced(*download_spam(), seed=args.seed)
    elif args.data:
        texts, labels = read_labelled(args.data, args.text_col, args.label_col)
    else:
        ap.error("pass --data FILE (with --text-col, --label-col) or --demo shakespeare|spam")
    if args.max_examples:
        keep = np.random.default_rng(args.seed).permutation(len(texts))[:args.max_examples]
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]

    gpt, tok = load_init(args.init, args.tokenizer)
    if args.from_scratch:
        gpt.reset_parameters()
    max_len = min(args.max_len, gpt.config.block_size)
    data = LabelledData.build(texts, labels, tok, max_len=max_len, val_frac=args.val_frac, seed=args.seed)
    counts = Counter(data.classes[i] for i in data.train_y)
    print(f"{len(data.train_x)} train / {len(data.val_x)} val examples, classes {dict(counts)}")
    clf = GPTClassifier(gpt, len(data.classes))
    if args.lora_rank:
        nn.apply_lora(clf.gpt, rank=args.lora_rank, alpha=args.lora_alpha, targets=("c_attn", "c_proj", "c_fc"))
        for p in clf.head.parameters():
            p.requires_grad_(True)
        what = f"LoRA r={args.lora_rank} + head"
    else:
        which = int(args.train) if args.train.isdigit() else args.train
        clf.set_trainable(which)
        what = f"train={args.train}"
    n_train = clf.num_parameters(trainable_only=True)
    print(f"{what}: {n_train:,} of {clf.num_parameters():,} parameters train")
    pad_id = getattr(tok, "eot_id", None) or 0
    history = fit(clf, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  weight_decay=args.weight_decay, seed=args.seed, pad_id=pad_id, eval_batches=args.eval_batches)
    baseline = data.majority_baseline()
    wall = time.perf_counter() - t0
    last = history[-1]
    print(f"val accuracy {last['val_acc']:.3f} vs majority-class baseline {baseline:.3f} "
          f"({len(data.classes)} classes); train accuracy {last['train_acc']:.3f}; wall time {wall:.1f}s")
    if args.out:
        summary = {"init": args.init, "from_scratch": args.from_scratch, "classes": data.classes, "train_examples": len(data.train_x), "val_examples": len(data.val_x),
                   "trainable": what, "val_acc": last["val_acc"], "train_acc": last["train_acc"],
                   "majority_baseline": baseline, "wall_s": wall, "history": history}
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
