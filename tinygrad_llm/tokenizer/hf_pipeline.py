"""The text stages of a Hugging Face tokenizer.json: normalizers, pre-tokenizers and decoders.

Each stage is built from its JSON object and behaves as the `tokenizers` library's does:

    normalizer      str -> str                 NFC, NFKC, NFD, NFKD, Lowercase, Prepend, Replace, Sequence
    pre-tokenizer   [Piece] -> [Piece]          ByteLevel, Split, Metaspace, Digits, Sequence
    decoder         [str] -> [str]              ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, Sequence

A Piece is (text, at_start): at_start says the piece begins at the first character of the input
text, which Metaspace's prepend_scheme "first" asks about.  A type or option we do not implement
is refused by name, never approximated.
"""
import unicodedata

import regex

from .errors import TokenizerFileError
from .gpt2 import bytes_to_unicode
from .hf_fields import choice, get, nested, objects, pattern
from .patterns import GPT2_PATTERN

_BYTE_CHARS = bytes_to_unicode()  # byte -> printable char
BYTE_LEVEL_TABLE = str.maketrans({chr(b): c for b, c in _BYTE_CHARS.items()})  # latin-1 char -> char
CHAR_BYTES = {c: b for b, c in _BYTE_CHARS.items()}  # printable char -> byte
_GPT2_REGEX = regex.compile(GPT2_PATTERN)


def byte_level(text):
    """Text -> its UTF-8 bytes as GPT-2's printable characters: ' hi' -> 'Ġhi'."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1").translate(BYTE_LEVEL_TABLE)


# ------------------------------------------------------------------------------------ normalizers

def build_normalizer(node, where, depth=0):
    """A tokenizer.json normalizer -> a function str -> str (None: no normalizer)."""
    if node is None:
        return None
    nested(where, depth)
    kind = choice(node, where, "type", ["NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Prepend",
                                        "Replace", "Sequence"])
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return lambda s: unicodedata.normalize(kind, s)
    if kind == "Lowercase":  # character by character, as the library: no final-sigma rule ("ΟΔΟΣ" -> "οδοσ")
        return lambda s: "".join(map(str.lower, s))
    if kind == "Prepend":
        prefix = get(node, where, "prepend", str)
        return lambda s: prefix + s if s else s  # the library prepends nothing to an empty string
    if kind == "Replace":
        return _replacer(node, where)
    steps = [build_normalizer(n, w, depth + 1) for w, n in objects(node, where, "normalizers")]
    steps = [f for f in steps if f is not None]

    def sequence(s):
        for f in steps:
            s = f(s)
        return s
    return sequence


def _replacer(node, where):
    pat = pattern(node, where)
    content = get(node, where, "content", str)
    if pat is None:  # an empty String pattern matches nothing in the library
        return lambda s: s
    return lambda s: pat.sub(lambda m: content, s)


# --------------------------------------------------------------------------------- pre-tokenizers

_BEHAVIORS = ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]


def split_spans(text, pat, behavior, invert=False):
    """The library's Split: cut text at pat's matches and keep them as behavior says.

    Returns [(start, end)], empty spans dropped.  E.g. "a-b" cut at "-": Isolated ["a", "-", "b"],
    Removed ["a", "b"], MergedWithPrevious ["a-", "b"], MergedWithNext ["a", "-b"]."""
    if not text:
        return []
    marks, prev = [], 0  # [((start, end), is_match)], covering the whole text
    for m in pat.finditer(text):
        s, e = m.span()
        if prev != s:
            marks.append(((prev, s), False))
        marks.append(((s, e), True))
        prev = e
    if prev != len(text):
        marks.append(((prev, len(text)), False))
    if invert:
        marks = [(span, not is_match) for span, is_match in marks]
    if behavior == "Isolated":
        spans = [span for span, _ in marks]
    elif behavior == "Removed":
        spans = [span for span, is_match in marks if not is_match]
    elif behavior == "MergedWithPrevious":
        spans, previous = [], False
        for (s, e), is_match in marks:
            if is_match and not previous and spans:
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
            previous = is_match
    elif behavior == "MergedWithNext":
        spans, previous = [], False
        for (s, e), is_match in reversed(marks):
            if is_match and not previous and spans:
                spans[-1] = (s, spans[-1][1])
            else:
                spans.append((s, e))
            previous = is_match
        spans.reverse()
    else:  # Contiguous
        spans, previous = [], False
        for (s, e), is_match in marks:
            if is_match == previous and spans:
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
            previous = is_match
    return [(s, e) for s, e in spans if e > s]


def _splitter(pat, behavior, invert=False):
    """[Piece] -> [Piece] by split_spans, with a fast path for a pattern that covers the text."""
    def split(pieces):
        out = []
        for text, at_start in pieces:
            if behavior == "Isolated" and not invert:
                found = pat.findall(text)
                if sum(map(len, found)) == len(text):  # matches tile the text: nothing in between
                    out.extend((t, at_start and i == 0) for i, t in enumerate(found) if t)
                    continue
            out.extend((text[s:e], at_start and s == 0) for s, e in split_spans(text, pat, behavior, invert))
        return out
    return split


class PreTokenizer:
    """The pre-tokenizer steps, plus the byte-level mapping when it is the last step.

    The last ByteLevel's mapping is left to the model (`final_map`), so that a piece already in the
    model's cache skips it: encoding repeated words is then a regex split and one dict lookup each."""

    def __init__(self, steps, final_map=None):
        self.steps, self.final_map = steps, final_map

    def __call__(self, pieces):
        for step in self.steps:
            pieces = step(pieces)
        return pieces


def build_pre_tokenizer(node, where):
    steps = _pre_steps(node, where, 0)
    final_map = None
    if steps and steps[-1][0] == "ByteLevel":
        final_map = byte_level
        steps[-1] = ("ByteLevel", steps[-1][2])  # keep its prefix space and regex, defer its mapping
    return PreTokenizer([s[1] for s in steps], final_map)


def _pre_steps(node, where, depth):
    """[(type, step, step_without_byte_mapping)] for one pre-tokenizer (a Sequence flattens)."""
    if node is None:
        return []
    nested(where, depth)
    kind = choice(node, where, "type", ["ByteLevel", "Split", "Metaspace", "Digits", "Sequence"])
    if kind == "Sequence":
        steps = []
        for w, n in objects(node, where, "pretokenizers"):
            steps.extend(_pre_steps(n, w, depth + 1))
        return steps
    if kind == "ByteLevel":
        add_prefix_space = get(node, where, "add_prefix_space", bool, True)
        use_regex = get(node, where, "use_regex", bool, True)
        get(node, where, "trim_offsets", bool, True)  # offsets only: no effect on ids

        def unmapped(pieces):
            if add_prefix_space:
                pieces = [(t if t.startswith(" ") else " " + t, a) for t, a in pieces]
            if use_regex:
                pieces = _splitter(_GPT2_REGEX, "Isolated")(pieces)
            return pieces

        def mapped(pieces):
            return [(byte_level(t), a) for t, a in unmapped(pieces)]
        return [(kind, mapped, unmapped)]
    if kind == "Split":
        pat = pattern(node, where)
        behavior = choice(node, where, "behavior", _BEHAVIORS)
        invert = get(node, where, "invert", bool, False)
        if pat is None:
            raise TokenizerFileError(f"{where}.pattern is an empty string: nothing to split at")
        step = _splitter(pat, behavior, invert)
        return [(kind, step, step)]
    if kind == "Digits":
        individual = get(node, where, "individual_digits", bool, False)
        step = _splitter(regex.compile(r"\p{N}" if individual else r"\p{N}+"), "Isolated")
        return [(kind, step, step)]
    # Metaspace: spaces become the replacement character, a prefix one is added as prepend_scheme says
    replacement = get(node, where, "replacement", str)
    if len(replacement) != 1:
        raise TokenizerFileError(f"{where}.replacement must be one character, got {replacement!r}")
    if "prepend_scheme" in node:
        scheme = choice(node, where, "prepend_scheme", ["always", "first", "never"])
    else:  # files written before prepend_scheme existed
        scheme = "always" if get(node, where, "add_prefix_space", bool, True) else "never"
    split = get(node, where, "split", bool, True)
    sep = regex.compile(regex.escape(replacement))

    def metaspace(pieces):
        out = []
        for text, at_start in pieces:
            text = text.replace(" ", replacement)
            if text and not text.startswith(replacement) and (
                    scheme == "always" or (scheme == "first" and at_start)):
                text = replacement + text
            if split:
                out.extend((text[s:e], at_start and s == 0) for s, e in split_spans(text, sep, "MergedWithNext"))
            elif text:
                out.append((text, at_start))
        return out
    return [(kind, metaspace, metaspace)]


# -------------------------------------------------------------------------------------- decoders

def build_decoder(node, where, depth=0):
    """A tokenizer.json decoder -> a function [str] -> [str] (None: tokens joined by spaces)."""
    if node is None:
        return None
    nested(where, depth)
    kind = choice(node, where, "type", ["ByteLevel", "Metaspace", "ByteFallback", "Fuse", "Strip",
                                        "Replace", "Sequence"])
    if kind == "ByteLevel":
        return lambda tokens: [_byte_level_decode(tokens)]
    if kind == "Fuse":
        return lambda tokens: ["".join(tokens)]
    if kind == "ByteFallback":
        return _byte_fallback_decode
    if kind == "Replace":
        replace = _replacer(node, where)
        return lambda tokens: [replace(t) for t in tokens]
    if kind == "Strip":
        content = get(node, where, "content", str)
        start, stop = get(node, where, "start", int), get(node, where, "stop", int)
        if len(content) != 1 or start < 0 or stop < 0:
            raise TokenizerFileError(f"{where}: Strip needs one content character and start, stop >= 0, "
                                     f"got {content!r}, {start}, {stop}")
        return lambda tokens: [_strip(t, content, start, stop) for t in tokens]
    if kind == "Metaspace":
        replacement = get(node, where, "replacement", str)
        if "prepend_scheme" in node:
            scheme = choice(node, where, "prepend_scheme", ["always", "first", "never"])
        else:
            scheme = "always" if get(node, where, "add_prefix_space", bool, True) else "never"
        drop_first = scheme != "never"

        def metaspace(tokens):
            # as the library does: in the first token every replacement character is dropped
            return [t.replace(replacement, "") if i == 0 and drop_first else t.replace(replacement, " ")
                    for i, t in enumerate(tokens)]
        return metaspace
    steps = [build_decoder(n, w, depth + 1) for w, n in objects(node, where, "decoders")]

    def sequence(tokens):
        for f in steps:
            tokens = f(tokens)
        return tokens
    return sequence


def _byte_level_decode(tokens):
    data = bytearray()
    for t in tokens:
        try:
            data.extend(CHAR_BYTES[c] for c in t)
        except KeyError:  # a token not in the byte alphabet (an added token): its own UTF-8
            data.extend(t.encode("utf-8", "surrogatepass"))
    return data.decode("utf-8", errors="replace")


_HEX = frozenset("0123456789abcdefABCDEF")


def _fallback_byte(token):
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        h = token[3:5]
        if all(c in _HEX for c in h) or (h[0] == "+" and h[1] in _HEX):  # Rust's from_str_radix
            return int(h, 16)
    return None


def _byte_fallback_decode(tokens):
    out, pending = [], bytearray()

    def flush():
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:  # the library: one U+FFFD per byte of an invalid run
                out.extend("\ufffd" * len(pending))
            pending.clear()
    for t in tokens:
        b = _fallback_byte(t)
        if b is not None:
            pending.append(b)
        else:
            flush()
            out.append(t)
    flush()
    return out


def _strip(token, content, start, stop):
    n = len(token)
    lo = 0
    while lo < min(start, n) and token[lo] == content:
        lo += 1
    hi = n
    while n - hi < stop and hi > lo and token[hi - 1] == content:
        hi -= 1
    return token[lo:hi]

