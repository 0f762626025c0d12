"""A corpus of many documents -> fixed-size token shards, encoded on every core, resumably.

    python -m tinygrad_llm tokenize encode --gpt2 gpt2/ --input 'corpus/*.jsonl' --out shards/
    >>> encode_corpus(tok, ["corpus/"], "shards/", workers=2)

Every document's ids follow an <|endoftext|>, so the separator stands between any two documents
(and opens the first). The stream of ids is cut into shards, llm.c's layout:

    shards/val_000000.bin        the first --val-tokens ids (default: one shard's worth): validation
    shards/train_000001.bin      then --shard-tokens ids each (default 100M); the last one is shorter
    shards/<shard>.bin.json      the token-file sidecar (see corpus.py: read_token_file opens a shard)
                                 plus "split", "shard", "eot_id", "end" (where in the corpus the
                                 shard stops: [document index, ids of that document already in]),
                                 "last", and the "settings" that made it

A shard's source_bytes are the bytes of text its ids stand for (the inserted separators count
none), so bits per byte can be read off any shard.

Parallel: the main process reads the files and cuts them into batches of documents; a pool of
`workers` processes encodes the batches (decoding, JSON parsing and BPE all happen there); the
results are taken in submission order, so the ids are the same whatever the worker count. A
document that fails is reported by name; a worker process that dies is traced to its document
by encoding that batch again one document at a time.

Resumable and atomic: a shard is written under a temporary name, fsynced and renamed, and its
sidecar (written last) marks it finished. Re-running the same command keeps the finished
shards, reads past the documents they hold without encoding them, and goes on from there.
"""
import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from itertools import count
from pathlib import Path

import numpy as np

from .corpus import read_token_file, sidecar_path, token_dtype
from .documents import BATCH_BYTES, EOT, DocumentError, corpus_files, document_batches, document_text
from .errors import TokenizerError, TokenizerFileError
from ..files import atomic_write, atomic_write_text

SHARD_TOKENS = 100_000_000


def default_workers():
    """The cores this process may run on (a container or taskset may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def shard_name(index):
    """Shard 0 is the validation shard, the rest train: val_000000.bin, train_000001.bin, ..."""
    return f"{'val' if index == 0 else 'train'}_{index:06d}.bin"


def tokenizer_fingerprint(tok):
    """sha256 over what decides the ids: pattern, specials, byte order, merges."""
    merges = sorted((idx, a, b) for (a, b), idx in tok.merges.items())
    parts = [tok.pattern, sorted(tok.special_tokens.items()), tok.byte_order, merges]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


# ------------------------------------------------------------------------------------ encoding
def encode_documents(tok, docs, text_field="text", allowed_special="all"):
    """(ids, lengths) of a batch: each document's [eot] + ids, back to back; ids per document."""
    eot = tok.eot_id
    flat, lengths = [], []
    for doc in docs:
        try:
            ids = tok.encode(document_text(doc, text_field), allowed_special)
        except DocumentError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised naming the document
            raise DocumentError(f"{doc.label}: {type(e).__name__}: {e}") from None
        flat.append(eot)
        flat.extend(ids)
        lengths.append(len(ids) + 1)
    return np.array(flat, dtype=token_dtype(tok.vocab_size)), np.array(lengths, dtype=np.int64)


_WORKER = {}


def _init_worker(tok, text_field, allowed_special):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _WORKER.update(tok=tok, text_field=text_field, allowed_special=allowed_special)


def _encode_in_worker(docs):
    return encode_documents(_WORKER["tok"], docs, _WORKER["text_field"], _WORKER["allowed_special"])


def _pool(workers, tok, text_field, allowed_special):
    # spawn: a fresh interpreter per worker, the same on every platform and safe in a process
    # that already runs threads (fork would copy their locks mid-use)
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker, initargs=(tok, text_field, allowed_special))


def _culprit(batch, tok, text_field, allowed_special):
    """The label of the document that kills a worker process, found by encoding one per task."""
    for doc in batch.docs:
        with _pool(1, tok, text_field, allowed_special) as pool:
            try:
                pool.submit(_encode_in_worker, [doc]).result()
            except cf.process.BrokenProcessPool:
                return doc.label
            except DocumentError:
                return doc.label
    return f"one of {batch.docs[0].label} .. {batch.docs[-1].label} (it did not happen again alone)"


def encoded_batches(batches, tok, workers, text_field="text", allowed_special="all"):
    """(batch, ids, lengths) for each batch, in order; workers > 1 encode in a process pool."""
    if workers <= 1:
        for batch in batches:
            yield (batch, *encode_documents(tok, batch.docs, text_field, allowed_special))
        return
    in_flight = deque()  # (batch, future), at most 2 per worker: memory stays bounded
    with _pool(workers, tok, text_field, allowed_special) as pool:
        try:
            for batch in batches:
                in_flight.append((batch, pool.submit(_encode_in_worker, batch.docs)))
                while len(in_flight) >= 2 * workers or (in_flight and in_flight[0][1].done()):
                    yield _result(*in_flight.popleft(), tok, text_field, allowed_special)
            while in_flight:
                yield _result(*in_flight.popleft(), tok, text_field, allowed_special)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _result(batch, future, tok, text_field, allowed_special):
    try:
        return (batch, *future.result())
    except cf.process.BrokenProcessPool:
        label = _culprit(batch, tok, text_field, allowed_special)
        raise DocumentError(f"a worker process died while encoding {label}") from None


# ------------------------------------------------------------------------------------- writing
class ShardWriter:
    """Appends ids to the open shard (a temporary file), closing it once it is full and more follow."""

    def __init__(self, out_dir, tok, tokenizer_name, settings, index, position):
        self.out_dir, self.settings, self.tokenizer_name = Path(out_dir), settings, tokenizer_name
        self.vocab_size, self.eot_id = tok.vocab_size, tok.eot_id
        self.dtype = token_dtype(tok.vocab_size)
        # bytes of text per id, for source_bytes; special tokens stand for no text of the document
        self.token_bytes = np.zeros(tok.vocab_size, dtype=np.int64)
        for i, b in tok.vocab.items():
            if i not in tok.inverse_special_tokens:
                self.token_bytes[i] = len(b)
        self.index, self.position = index, list(position)  # next shard; next id's [doc, offset]
        self.file = self.writing = None
        self.written = self.nbytes = 0
        self.tokens = 0  # written in this run

    def capacity(self, index):
        return self.settings["val_tokens"] if index == 0 else self.settings["shard_tokens"]

    def add(self, first_doc, ids, lengths, skip=0):
        """Write ids[skip:] (the batch of documents first_doc, first_doc + 1, ...)."""
        ends = np.cumsum(lengths)
        pos = skip
        while pos < len(ids):
            if self.file is not None and self.written == self.capacity(self.index):
                self._close(last=False)  # full, and more ids follow: not the last shard
            if self.file is None:
                self._open()
            n = min(self.capacity(self.index) - self.written, len(ids) - pos)
            piece = ids[pos:pos + n]
            piece.tofile(self.file)
            self.written += n
            self.nbytes += int(self.token_bytes[piece].sum())
            pos += n
            doc = int(np.searchsorted(ends, pos, side="right"))  # the document of the next id
            self.position = [first_doc + doc, int(pos - (ends[doc - 1] if doc else 0))]
        self.tokens += len(ids) - skip

    def _open(self):
        # files.atomic_write: a temporary file beside the shard, renamed onto it when closed cleanly
        self.writing = atomic_write(self.out_dir / shard_name(self.index))
        self.file = self.writing.__enter__()
        self.written = self.nbytes = 0

    def _close(self, last):
        self.writing.__exit__(None, None, None)  # flushed, fsynced, renamed into place
        path = self.out_dir / shard_name(self.index)
        meta = {"dtype": np.dtype(self.dtype).name, "vocab_size": self.vocab_size,
                "num_tokens": self.written, "source_bytes": self.nbytes, "tokenizer": self.tokenizer_name,
                "split": "val" if self.index == 0 else "train", "shard": self.index,
                "eot_id": self.eot_id, "end": self.position, "last": last, "settings": self.settings}
        atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2) + "\n")
        self.file = self.writing = None
        self.index += 1

    def finish(self):
        """Close the open shard as the last one."""
        if self.file is None:
            if self.index == 0:
                raise DocumentError("the corpus holds no documents")
            return
        if self.index == 0:
            n = self.written
            self.abort()
            raise ValueError(f"the corpus encodes to {n:,} tokens, no more than the validation shard's "
                             f"{self.capacity(0):,}: nothing would be left to train on; pass a smaller "
                             "--val-tokens")
        self._close(last=True)

    def abort(self):
        """Drop the unfinished shard (its temporary file); finished shards stay."""
        if self.file is not None:
            stop = InterruptedError("the shard is not finished")
            self.writing.__exit__(type(stop), stop, None)  # as if the block raised: file removed
            self.file = self.writing = None


def check_shard_sidecar(meta, side, index=None):
    """Raise TokenizerFileError naming the sidecar and the field unless meta (read_token_file's,
    whose own fields are already checked) holds the fields a shard's sidecar adds, well formed:
    split, shard (= index when given), eot_id, end, last and settings."""
    def bad(field, what):
        raise TokenizerFileError(f"{side}: {field} must be {what}, got {meta.get(field)!r:.60}")

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if meta.get("split") not in ("train", "val"):
        bad("split", "'train' or 'val'")
    if not whole(meta.get("shard")) or (index is not None and meta["shard"] != index):
        bad("shard", f"this shard's number{'' if index is None else f' ({index})'}")
    eot = meta.get("eot_id")
    if eot is not None and not (whole(eot) and eot < meta["vocab_size"]):
        bad("eot_id", f"null or an id in [0, {meta['vocab_size']})")
    end = meta.get("end")
    if not (isinstance(end, list) and len(end) == 2 and all(whole(v) for v in end)):
        bad("end", "[document, tokens into it], two whole numbers")
    if not isinstance(meta.get("last"), bool):
        bad("last", "true or false")
    if not isinstance(meta.get("settings"), dict):
        bad("settings", "an object")


def finished_shards(out_dir, settings):
    """Sidecars of the shards a previous run finished with the same settings, in order."""
    out_dir = Path(out_dir)
    for stale in out_dir.glob(".*.bin.tmp*"):  # left by a run that was killed outright
        stale.unlink(missing_ok=True)
    metas = []
    for i in count():
        path = out_dir / shard_name(i)
        if not sidecar_path(path).exists():
            break
        try:
            _, meta = read_token_file(path)
            check_shard_sidecar(meta, sidecar_path(path), i)
        except (TokenizerFileError, FileNotFoundError):
            break  # not finished after all (or its sidecar is damaged): written again
        if meta["settings"] != settings:
            theirs = meta["settings"]
            differ = sorted(k for k in set(settings) | set(theirs) if settings.get(k) != theirs.get(k))
            raise ValueError(f"{out_dir} holds shards made with other settings (differing: {differ}); "
                             "to start over, delete them or pass another --out")
        metas.append(meta)
        if meta.get("last"):
            break
    return metas


# ------------------------------------------------------------------------------------ progress
class Progress:
    """Documents, MB, MB/s and ETA: one line redrawn on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, total_bytes, stream=None, enabled=True):
        self.stream = stream or sys.stderr
        self.enabled, self.total = enabled, total_bytes
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = 0.25 if self.tty else 5.0
        self.t0 = self.last = time.perf_counter()
        self.docs = self.done = self.encoded = 0

    def update(self, docs, done_bytes, encoded_bytes, tokens, shards, final=False):
        self.docs, self.done, self.encoded = docs, done_bytes, encoded_bytes
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.every and not final):
            return
        self.last = now
        rate = encoded_bytes / max(now - self.t0, 1e-9)
        left = max(self.total - done_bytes, 0)
        eta = "done" if final else (f"ETA {_duration(left / rate)}" if rate > 0 else "ETA ?")
        line = (f"{docs:,} documents | {done_bytes / 1e6:,.1f}/{self.total / 1e6:,.1f} MB | "
                f"{rate / 1e6:.2f} MB/s | {tokens:,} tokens | {shards} shards | {eta}")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ---------------------------------------------------------------------------------- the command
def encode_corpus(tok, inputs, out_dir, workers=None, tokenizer_name=None, text_field="text",
                  allowed_special="all", shard_tokens=SHARD_TOKENS, val_tokens=None, verbose=True,
                  batch_bytes=BATCH_BYTES):
    """Encode the documents of inputs (files, folders, globs) into shards in out_dir.

    Returns a summary: {"shards", "tokens" (all shards), "new_tokens" (this run), "documents"
    (this run), "seconds", "mb_per_s" (this run's input over its wall time), "resumed_at"}.
    """
    if tok.eot_id is None:
        raise TokenizerError(f"the tokenizer has no {EOT} token to put between documents; train one "
                             f"with it (tokenize train --special '{EOT}') or use GPT-2's")
    val_tokens = shard_tokens if val_tokens is None else val_tokens
    if shard_tokens < 1 or val_tokens < 1:
        raise ValueError(f"--shard-tokens and --val-tokens must be >= 1, got {shard_tokens}, {val_tokens}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    workers = workers or default_workers()
    files = corpus_files(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps({
        "inputs": [[str(f.resolve()), f.stat().st_size] for f in files], "text_field": text_field,
        "allowed_special": allowed_special, "tokenizer_sha256": tokenizer_fingerprint(tok),
        "shard_tokens": shard_tokens, "val_tokens": val_tokens}))
    done = finished_shards(out_dir, settings)
    name = str(tokenizer_name) if tokenizer_name is not None else "unnamed"
    summary = {"shards": len(done), "tokens": sum(m["num_tokens"] for m in done), "new_tokens": 0,
               "documents": 0, "seconds": 0.0, "mb_per_s": 0.0,
               "resumed_at": done[-1]["end"] if done else None}
    if done and done[-1]["last"]:
        if verbose:
            print(f"{out_dir}: all {len(done)} shards are already written", file=sys.stderr)
        return summary
    start_doc, skip = done[-1]["end"] if done else (0, 0)
    if verbose and done:
        print(f"resuming: {len(done)} shards kept; going on from document {start_doc}", file=sys.stderr)
    writer = ShardWriter(out_dir, tok, name, settings, len(done), (start_doc, skip))
    total = sum(f.stat().st_size for f in files)
    progress = Progress(total, enabled=verbose)
    t0 = time.perf_counter()
    docs = done_bytes = encoded = 0
    try:
        batches = document_batches(files, start_doc, batch_bytes)
        for batch, ids, lengths in encoded_batches(batches, tok, workers, text_field, allowed_special):
            first = batch.docs[0].index
            writer.add(first, ids, lengths, skip if first == start_doc else 0)
            docs += len(batch.docs)
            encoded += batch.nbytes
            done_bytes = batch.done_bytes
            progress.update(docs, done_bytes, encoded, writer.tokens, writer.index)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - t0
    progress.update(docs, total, encoded, writer.tokens, writer.index, final=True)
    summary.update(shards=writer.index, tokens=summary["tokens"] + writer.tokens, new_tokens=writer.tokens,
                   documents=docs, seconds=seconds, mb_per_s=encoded / 1e6 / max(seconds, 1e-9))
    return summary
