"""BPETokenizer: byte-level BPE with regex pre-splitting and special tokens.

What a tokenizer is, in full:

    byte_order      # [int] * 256: the byte value of ids 0..255 (identity, except for GPT-2)
    merges          # (int, int) -> int: merge (a, b) makes id 256 + rank; lower id = applied first
    pattern         # regex source that cuts text into chunks (or None: the text is one chunk)
    special_tokens  # str -> int, ids after the last merge: {"<|endoftext|>": 50256}

Encoding splits text at special tokens, cuts each piece into chunks with the pattern, turns a
chunk into its UTF-8 bytes, and applies merges by rank (lowest id first) until none applies:

    >>> tok = BPETokenizer.train("aaab aaab", vocab_size=258, pattern=None)
    >>> tok.merges      # 'aa' first (count 4); then 'ab' and 'aa'+'a' tie at 2: the smaller pair wins
    {(97, 97): 256, (97, 98): 257}
    >>> tok.encode("aaab")
    [256, 257]
    >>> tok.decode([256, 257])
    'aaab'

Each distinct chunk is worked out once and cached (chunk -> ids), so encoding text that repeats
its words is a regex split plus one dict lookup per chunk.
"""
import collections
import itertools
import sys
import time
import warnings

import regex

from .errors import TokenizerError
from .patterns import pattern_name, resolve_pattern
from .trainer import merge_word, train_merges

_CACHE_LIMIT = 1 << 20  # distinct chunks kept; past that the cache starts over (memory bound)


class BPETokenizer:
    def __init__(self, merges=(), pattern="gpt4", special_tokens=None, byte_order=None):
        """Build from parts: merges [(a, b), ...] in rank order (merge i makes id 256 + i),
        a pattern (name, regex or None), special tokens (str -> id, or a list of str given ids
        after the merges) and, for GPT-2, the order of the 256 byte ids."""
        self.pattern = resolve_pattern(pattern)
        self._regex = regex.compile(self.pattern) if self.pattern is not None else None
        if byte_order is None:
            byte_order = range(256)
        byte_order = [int(b) for b in byte_order]
        if sorted(byte_order) != list(range(256)):
            raise TokenizerError("byte_order must be a permutation of the 256 byte values")
        self.byte_order = byte_order  # id -> byte value, for ids 0..255
        self._byte_ids = [0] * 256  # byte value -> id
        for i, b in enumerate(byte_order):
            self._byte_ids[b] = i
        self.merges = {}  # (int, int) -> int
        self.vocab = {i: bytes([b]) for i, b in enumerate(byte_order)}  # int -> bytes
        for rank, (a, b) in enumerate(merges):
            a, b, idx = int(a), int(b), 256 + rank
            if not (0 <= a < idx and 0 <= b < idx):
                raise TokenizerError(f"merge {rank} ({a}, {b}) uses an id that does not exist yet "
                                     f"(ids so far: 0..{idx - 1})")
            if (a, b) in self.merges:
                raise TokenizerError(f"merge {rank} ({a}, {b}) repeats merge {self.merges[(a, b)] - 256}")
            self.merges[(a, b)] = idx
            self.vocab[idx] = self.vocab[a] + self.vocab[b]
        first_special = 256 + len(self.merges)
        if special_tokens is None:
            special_tokens = {}
        if not isinstance(special_tokens, dict):
            special_tokens = {s: first_special + i for i, s in enumerate(special_tokens)}
        self.special_tokens = {}  # str -> int
        for s, i in special_tokens.items():
            if not isinstance(s, str) or not s:
                raise TokenizerError(f"special token {s!r} must be a non-empty string")
            if not isinstance(i, int) or i < first_special or i in self.vocab:
                raise TokenizerError(f"special token {s!r} has id {i!r}, which is taken or below "
                                     f"the first free id {first_special}")
            self.special_tokens[s] = i
            self.vocab[i] = s.encode("utf-8")
        self.inverse_special_tokens = {i: s for s, i in self.special_tokens.items()}  # int -> str
        self._vocab_size = max(self.vocab) + 1
        self._special_regex = self._compile_specials(self.special_tokens)
        self._cache = {}  # str -> [int]

    # ----------------------------------------------------------------------------------- training

    @classmethod
    def train(cls, text_or_iterable, vocab_size, pattern="gpt4", special_tokens=(), verbose=False,
              strict=False):
        """Learn vocab_size - 256 - len(special_tokens) merges from text (a str, or an iterable of
        str such as documents or lines).  Special tokens found in the text are cut out first,
        so no merge spans one.  A text that runs out of pairs first cannot reach vocab_size: the
        vocabulary comes out smaller, with a warning naming its size (strict=True: an error).

        pattern=None makes each text one chunk: right for the plain byte-level tokenizer
        (vocab_size=256) and for small texts, slow for many merges on a big one, since every
        merge then rewrites that one chunk."""
        special_tokens = list(special_tokens)
        if len(set(special_tokens)) != len(special_tokens):
            raise TokenizerError(f"special_tokens has duplicates: {special_tokens!r}")
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise TokenizerError(f"vocab_size {vocab_size!r} is below 256 byte tokens + "
                                 f"{len(special_tokens)} special tokens = {256 + len(special_tokens)}")
        source = resolve_pattern(pattern)
        num_merges = vocab_size - 256 - len(special_tokens)
        chunk_counts = count_chunks(text_or_iterable, source, special_tokens, verbose)  # str -> int
        if verbose:
            print(f"training BPE: {sum(chunk_counts.values()):,} chunks, {len(chunk_counts):,} distinct, "
                  f"{num_merges:,} merges", file=sys.stderr, flush=True)
        # surrogateescape: text read from a file with invalid UTF-8 keeps its exact bytes
        words = [list(cls._chunk_bytes(c)) for c in chunk_counts]
        freqs = list(chunk_counts.values())
        vocab = {i: bytes([i]) for i in range(256)} if verbose else None
        merges = train_merges(words, freqs, num_merges, verbose=verbose, vocab=vocab)
        if len(merges) < num_merges:
            reachable = 256 + len(merges) + len(special_tokens)
            message = (f"vocab_size {vocab_size} cannot be reached: the text runs out of pairs to merge "
                       f"after {len(merges)} merges, a vocabulary of {reachable}")
            if strict:
                raise TokenizerError(f"{message}; ask for at most {reachable} or give more text")
            warnings.warn(f"{message}; the tokenizer has {reachable} tokens", stacklevel=2)
        return cls(merges, pattern=source, special_tokens=special_tokens)

    @classmethod
    def from_gpt2(cls, encoder_json, vocab_bpe):
        """OpenAI's GPT-2 tokenizer from its encoder.json and vocab.bpe (see gpt2.py)."""
        from .gpt2 import from_gpt2
        return from_gpt2(cls, encoder_json, vocab_bpe)

    def save(self, path):
        """Write path (versioned JSON) and a sibling .vocab file to read by eye (see io.py)."""
        from .io import save
        return save(self, path)

    @classmethod
    def load(cls, path):
        """Read a file written by save(); a truncated, corrupt or other-version file is refused."""
        from .io import load
        return load(cls, path)

    # ----------------------------------------------------------------------------------- encoding

    @property
    def vocab_size(self):
        """One more than the largest id: 256 bytes + merges + special tokens, unless the special
        ids were given with gaps (the size an embedding table needs)."""
        return self._vocab_size

    @property
    def eot_id(self):
        """Id of <|endoftext|> (the document separator), or None if the tokenizer has none."""
        return self.special_tokens.get("<|endoftext|>")

    def encode(self, text, allowed_special="none_raise"):
        """str -> [int].  allowed_special says what a special token in the text means:
        "none_raise" (default) refuses text that contains one, naming it; "all" encodes each as
        its id; "none" encodes them as ordinary text; a set of strings makes only those special."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a str, got {type(text).__name__}; "
                                 "use encode_bytes for bytes")
        special = self._allowed(allowed_special, text)
        if not special:
            return self.encode_ordinary(text)
        splitter = self._special_regex if special is self.special_tokens else self._compile_specials(special)
        ids = []
        for i, part in enumerate(splitter.split(text)):  # split keeps the specials at odd indices
            if i % 2:
                ids.append(special[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_ordinary(self, text):
        """str -> [int], special tokens treated as plain text."""
        chunks = self._regex.findall(text) if self._regex is not None else ([text] if text else [])
        return self._encode_chunks(chunks)

    def encode_bytes(self, data):
        """bytes -> [int] for any bytes, valid UTF-8 or not; decode_bytes gives them back."""
        # surrogateescape maps each invalid byte to one lone surrogate and back, so the pattern
        # sees the text around it and every byte survives the round trip.
        return self.encode_ordinary(bytes(data).decode("utf-8", "surrogateescape"))

    def encode_batch(self, texts, allowed_special="none_raise"):
        """[str] -> [[int]], sharing one chunk cache across the batch."""
        return [self.encode(t, allowed_special) for t in texts]

    def clear_cache(self):
        """Forget the chunk -> ids cache (to time cold encoding, or to free its memory)."""
        self._cache.clear()

    def _encode_chunks(self, chunks):
        cache = self._cache
        missing = set(chunks).difference(cache) if chunks else ()
        if missing:
            if len(cache) + len(missing) > _CACHE_LIMIT:
                cache.clear()  # then every chunk of this text is missing, not only the new ones
                missing = set(chunks)
            for c in missing:
                cache[c] = self._bpe(self._chunk_bytes(c))
        return list(itertools.chain.from_iterable(map(cache.__getitem__, chunks)))

    @staticmethod
    def _chunk_bytes(chunk):
        try:
            return chunk.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as e:
            bad = chunk[e.start]
            raise TokenizerError(f"cannot encode lone surrogate U+{ord(bad):04X} in {chunk!r}: "
                                 "it is not a character and has no UTF-8 bytes") from None

    def _bpe(self, data):
        """bytes -> [int]: apply merges by rank, lowest first, until none applies.  For short
        chunks a rescan of the few pairs per step is cheaper than any bookkeeping."""
        byte_ids, merges = self._byte_ids, self.merges
        ids = [byte_ids[b] for b in data]
        if not merges:  # the plain byte-level tokenizer: nothing to merge, however long the chunk
            return ids
        big = 1 << 62
        while len(ids) >= 2:
            best = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, big))
            idx = merges.get(best)
            if idx is None:
                break
            ids = merge_word(ids, best[0], best[1], idx)
        return ids

    # ----------------------------------------------------------------------------------- decoding

    def decode_bytes(self, ids):
        """[int] -> the exact bytes they stand for.  An id outside the vocabulary is refused, by value."""
        vocab = self.vocab
        try:
            return b"".join([vocab[i] for i in _as_list(ids)])
        except (KeyError, TypeError):
            for i in _as_list(ids):
                try:
                    known = i in vocab  # numpy integers hash like ints: np.int64(5) is id 5
                except TypeError:  # unhashable, e.g. a nested list
                    known = False
                if not known:
                    raise TokenizerError(f"id {i!r} is not in the vocabulary "
                                         f"(valid ids: 0..{self.vocab_size - 1})") from None
            raise

    def decode(self, ids):
        """[int] -> str.  Ids that cut a UTF-8 character in half decode to U+FFFD, not an error."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------------------------ helpers

    def _allowed(self, allowed_special, text):
        """The specials (str -> int) to honour in this text; refuses one under "none_raise"."""
        if allowed_special == "all":
            return self.special_tokens
        if allowed_special == "none":
            return {}
        if allowed_special == "none_raise":
            if self._special_regex is not None:
                m = self._special_regex.search(text)
                if m:
                    raise TokenizerError(
                        f"text contains the special token {m.group()!r} at character {m.start()}; "
                        "pass allowed_special='all' to encode it as a special id or 'none' to "
                        "encode it as plain text")
            return {}
        if isinstance(allowed_special, (set, frozenset, list, tuple)):
            unknown = [s for s in allowed_special if s not in self.special_tokens]
            if unknown:
                raise TokenizerError(f"allowed_special names {unknown!r}, which are not special "
                                     f"tokens of this tokenizer ({sorted(self.special_tokens)})")
            return {s: self.special_tokens[s] for s in allowed_special}
        raise TokenizerError(f"allowed_special must be 'all', 'none', 'none_raise' or a set of "
                             f"special tokens, got {allowed_special!r}")

    @staticmethod
    def _compile_specials(specials):
        if not specials:
            return None
        # longest first, so "<|a|><|b|>"-style overlaps prefer the longer token
        alternatives = sorted(specials, key=len, reverse=True)
        return regex.compile("(" + "|".join(regex.escape(s) for s in alternatives) + ")")

    def __repr__(self):
        name = pattern_name(self.pattern) or ("none" if self.pattern is None else "custom")
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"pattern={name}, special_tokens={self.special_tokens})")

    def __eq__(self, other):
        return (isinstance(other, BPETokenizer) and self.pattern == other.pattern
                and self.merges == other.merges and self.special_tokens == other.special_tokens
                and self.byte_order == other.byte_order)

    __hash__ = None


def _as_list(ids):
    """Lists, tuples, numpy arrays and other iterables of ints -> list of Python ints."""
    tolist = getattr(ids, "tolist", None)
    return tolist() if tolist is not None else list(ids)


def count_chunks(text_or_iterable, source, special_tokens=(), verbose=False):
    """Distinct chunks of the text and how often each occurs: str -> int.

    Special tokens are cut out first (they are added to the vocabulary whole, never learned).
    With verbose, a progress line every few seconds while an iterable of texts is read.
    """
    texts = [text_or_iterable] if isinstance(text_or_iterable, str) else text_or_iterable
    split_specials = BPETokenizer._compile_specials({s: 0 for s in special_tokens})
    pat = regex.compile(source) if source is not None else None
    counts = collections.Counter()  # str -> int
    t0 = last = time.perf_counter()
    nchars = 0
    for n, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise TokenizerError(f"training text must be str or an iterable of str, got an item "
                                 f"of type {type(text).__name__}")
        pieces = split_specials.split(text)[::2] if split_specials is not None else [text]
        for piece in pieces:
            if pat is not None:
                counts.update(pat.findall(piece))
            elif piece:
                counts[piece] += 1
        nchars += len(text)
        if verbose and time.perf_counter() - last > 5.0:
            last = time.perf_counter()
            print(f"counting chunks: {n:,} texts, {nchars / 1e6:,.1f} M characters, "
                  f"{len(counts):,} distinct chunks ({last - t0:.0f} s)", file=sys.stderr, flush=True)
    return counts
