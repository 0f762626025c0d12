"""A Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json) with the library's ids.

    >>> tok = from_pretrained("SmolLM2-135M-Instruct/")
    >>> tok.encode("Hello world")                    # the same ids as the `tokenizers` library
    >>> tok.decode(tok.encode("Hello world"))
    'Hello world'
    >>> tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)

Encoding follows the library's order: added tokens are cut out of the raw text (those marked
"normalized" out of the normalized text), each remaining piece is normalized and pre-tokenized,
the BPE model turns each pre-token into ids, and the post-processor adds bos/eos.  What a file
asks for that is not implemented here (another model type, a normalizer we lack, dropout, ...)
is refused by field and value when loading, never approximated.
"""
import json
from pathlib import Path

import regex

from .errors import TokenizerError, TokenizerFileError
from .hf_bpe import HFBPE
from .hf_fields import choice, get, items, nested, objects, refuse_set, type_name
from .hf_pipeline import build_decoder, build_normalizer, build_pre_tokenizer

_MAX_FILE_BYTES = 1 << 30  # the largest tokenizer.json on the hub is tens of MB


def from_pretrained(folder):
    """The tokenizer of a Hugging Face model folder: tokenizer.json, plus tokenizer_config.json
    (bos/eos, add_bos_token, chat_template) and chat_template.jinja where present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerFileError(f"{folder}: no such folder (a Hugging Face model folder with tokenizer.json)")
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenizerFileError(f"{path}: not found (only tokenizer.json folders are supported; "
                                 "a tokenizer.model alone is SentencePiece's format)")
    spec = read_json(path)
    config_path = folder / "tokenizer_config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    template_path = folder / "chat_template.jinja"
    template = None
    if template_path.is_file():
        try:
            template = template_path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            raise TokenizerFileError(f"{template_path}: cannot be read as UTF-8 text: {e}") from None
    return HFTokenizer(spec, config, chat_template=template, name=str(folder))


def read_json(path):
    """A JSON object from path; anything else is one TokenizerFileError naming the file."""
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise TokenizerFileError(f"{path} is {size:,} bytes, more than any tokenizer file ({_MAX_FILE_BYTES:,})")
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        if isinstance(e, TokenizerFileError):
            raise
        raise TokenizerFileError(f"{path} is not valid JSON (truncated or corrupt?): {str(e)[:200]}") from None
    except OSError as e:
        raise TokenizerFileError(f"{path}: cannot be read: {e}") from None
    if not isinstance(value, dict):
        raise TokenizerFileError(f"{path} must hold a JSON object, got {type_name(value)}")
    return value


class AddedToken:
    __slots__ = ("content", "id", "lstrip", "normalized", "rstrip", "single_word", "special")

    def __init__(self, node, where):
        self.id = get(node, where, "id", int)
        self.content = get(node, where, "content", str)
        if not self.content or not 0 <= self.id < 1 << 31:
            raise TokenizerFileError(f"{where}: an added token needs content and an id in 0..2**31-1, "
                                     f"got {self.content!r} with id {self.id}")
        self.special = get(node, where, "special", bool, False)
        self.normalized = get(node, where, "normalized", bool, not self.special)
        self.lstrip = get(node, where, "lstrip", bool, False)
        self.rstrip = get(node, where, "rstrip", bool, False)
        self.single_word = get(node, where, "single_word", bool, False)


class HFTokenizer:
    """encode / decode / chat template, as the `tokenizers` library and transformers do them."""

    def __init__(self, spec, config=None, chat_template=None, name="tokenizer"):
        config = {} if config is None else config
        where = f"{name}/tokenizer.json:"
        try:
            self._build(spec, where)
            self._configure(config, f"{name}/tokenizer_config.json:", chat_template)
        except RecursionError:
            raise TokenizerFileError(f"{where} nested too deeply") from None

    # ------------------------------------------------------------------------------------ loading

    def _build(self, spec, where):
        if not isinstance(spec, dict):
            raise TokenizerFileError(f"{where} must hold a JSON object, got {type_name(spec)}")
        refuse_set(spec, where, "truncation")
        model = get(spec, where, "model", dict)
        choice(model, f"{where} model", "type", ["BPE"], default="BPE")
        self.normalizer = build_normalizer(spec.get("normalizer"), f"{where} normalizer")
        self.pre_tokenizer = build_pre_tokenizer(spec.get("pre_tokenizer"), f"{where} pre_tokenizer")
        self.decoder = build_decoder(spec.get("decoder"), f"{where} decoder")
        self.model = HFBPE(model, f"{where} model", self.pre_tokenizer.final_map)
        self.added = [AddedToken(n, w) for w, n in objects(spec, where, "added_tokens")] \
            if spec.get("added_tokens") is not None else []
        self._post = _post_processor(spec.get("post_processor"), f"{where} post_processor", 0)

        self.id_of = dict(self.model.vocab)  # str -> int, added tokens included
        self.token_of = {i: t for t, i in self.model.vocab.items()}  # int -> str
        for a in self.added:
            self.id_of[a.content] = a.id
            # as the library does, a normalized added token reads back (id_to_token, decode) in
            # its normalized form: "Hello" after a Prepend("▁") normalizer is "▁Hello"
            normalize = a.normalized and self.normalizer is not None
            self.token_of[a.id] = self.normalizer(a.content) if normalize else a.content
        self.special_ids = {a.id for a in self.added if a.special}
        raw = [a for a in self.added if not a.normalized]
        normed = [a for a in self.added if a.normalized]
        self._raw_lookup = {a.content: a for a in raw}  # str -> AddedToken
        # normalized tokens are matched in normalized text, so by their normalized content
        self._norm_lookup = {self.token_of[a.id]: a for a in normed}
        self._raw_matcher = _matcher(self._raw_lookup)
        self._norm_matcher = _matcher(self._norm_lookup)
        self._vocab_size = max(self.token_of, default=-1) + 1

    def _configure(self, config, where, chat_template):
        if not isinstance(config, dict):
            raise TokenizerFileError(f"{where} must hold a JSON object, got {type_name(config)}")
        self.bos_token = _token_text(config, where, "bos_token")
        self.eos_token = _token_text(config, where, "eos_token")
        self.unk_token = _token_text(config, where, "unk_token")
        self.pad_token = _token_text(config, where, "pad_token")
        self.bos_token_id = self.id_of.get(self.bos_token) if self.bos_token is not None else None
        self.eos_token_id = self.id_of.get(self.eos_token) if self.eos_token is not None else None
        # transformers (5.x) drops add_bos_token/add_eos_token when there is a tokenizer.json: its
        # post-processor alone says what encode adds, and so it is here.  The flags are kept to read.
        self.add_bos_token = get(config, where, "add_bos_token", bool, None)
        self.add_eos_token = get(config, where, "add_eos_token", bool, None)
        self.chat_template = _chat_template(config, where) if chat_template is None else chat_template

    # ----------------------------------------------------------------------------------- encoding

    @property
    def vocab_size(self):
        """One more than the largest id (the size an embedding table needs)."""
        return self._vocab_size

    @property
    def adds_bos(self):
        """Whether encode(text) (add_special_tokens=True) starts with bos_token_id."""
        return self.bos_token_id is not None and self._post([])[:1] == [self.bos_token_id]

    def token_to_id(self, token):
        return self.id_of.get(token)

    def id_to_token(self, i):
        return self.token_of.get(i)

    def encode(self, text, add_special_tokens=True):
        """str -> [int]: the library's `Tokenizer.encode(text, add_special_tokens).ids`."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a str, got {type(text).__name__}")
        ids = []
        for part, start in _split_added(text, self._raw_matcher, self._raw_lookup, 0):
            if isinstance(part, int):
                ids.append(part)
                continue
            normalized = self.normalizer(part) if self.normalizer is not None else part
            for piece, offset in _split_added(normalized, self._norm_matcher, self._norm_lookup, start):
                if isinstance(piece, int):
                    ids.append(piece)
                elif piece:
                    pieces = self.pre_tokenizer([(piece, offset == 0)])
                    ids.extend(self.model.encode_pieces([p for p, _ in pieces]))
        return self._post(ids) if add_special_tokens else ids

    def encode_batch(self, texts, add_special_tokens=True):
        return [self.encode(t, add_special_tokens) for t in texts]

    # ----------------------------------------------------------------------------------- decoding

    def decode(self, ids, skip_special_tokens=False):
        """[int] -> str: the library's `Tokenizer.decode`; an id it does not know is skipped, as there."""
        tolist = getattr(ids, "tolist", None)
        ids = tolist() if tolist is not None else list(ids)
        tokens = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TokenizerError(f"decode takes ints, got {i!r}")
            t = self.token_of.get(i)
            if t is not None and not (skip_special_tokens and i in self.special_ids):
                tokens.append(t)
        if self.decoder is None:
            return " ".join(tokens)
        return "".join(self.decoder(tokens))

    def decode_stream(self, skip_special_tokens=False):
        """A DecodeStream: feed it ids one at a time as they are sampled, print what it returns."""
        return DecodeStream(self, skip_special_tokens)

    # ------------------------------------------------------------------------------ chat template

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False, **kwargs):
        """The folder's Jinja chat template rendered as transformers renders it (see chat.py);
        tokenize=True: its ids, without bos/eos added again (as transformers does)."""
        from .chat import render_chat_template
        if self.chat_template is None:
            raise TokenizerError("this tokenizer has no chat template (tokenizer_config.json has no "
                                 "chat_template and there is no chat_template.jinja)")
        specials = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                    "unk_token": self.unk_token, "pad_token": self.pad_token}
        specials = {k: v for k, v in specials.items() if v is not None}
        text = render_chat_template(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                    **{**specials, **kwargs})
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self):
        return (f"HFTokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
                f"added_tokens={len(self.added)})")


class DecodeStream:
    """Text as ids arrive, as the library's tokenizers.decoders.DecodeStream gives it.

    step(id) returns the new text, or None while the ids so far end inside a character (the
    decode ends in U+FFFD) or add nothing.  Only the last few ids are decoded again each step:

        >>> stream = tok.decode_stream()
        >>> for i in ids: print(stream.step(i) or "", end="", flush=True)
    """

    def __init__(self, tokenizer, skip_special_tokens=False):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids, self.prefix, self.prefix_index = [], "", 0

    def step(self, token_id):
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, self.skip)
        if len(text) <= len(self.prefix) or text.endswith("\ufffd"):
            return None
        new_text = text[len(self.prefix):]
        new_index = len(self.ids) - self.prefix_index
        self.ids = self.ids[self.prefix_index:]
        self.prefix = self.tokenizer.decode(self.ids, self.skip)
        self.prefix_index = new_index
        return new_text


def _token_text(config, where, key):
    """A special token in tokenizer_config.json: a string, or an AddedToken object {"content": ...}."""
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, dict):
        return get(value, f"{where} {key}", "content", str)
    if not isinstance(value, str):
        raise TokenizerFileError(f"{where} {key} must be a string or {{\"content\": ...}}, got {type_name(value)}")
    return value


def _chat_template(config, where):
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {}
        for w, t in items(config, where, "chat_template"):
            named[get(t, w, "name", str)] = get(t, w, "template", str)
        if "default" not in named:
            raise TokenizerFileError(f"{where} chat_template lists {sorted(named)} but no 'default'")
        return named["default"]
    raise TokenizerFileError(f"{where} chat_template must be a string or a list, got {type_name(value)}")


def _matcher(contents):
    """A regex finding the added tokens leftmost-longest, as the library's Aho-Corasick does."""
    contents = sorted({c for c in contents if c}, key=len, reverse=True)  # "" would match everywhere
    return regex.compile("|".join(regex.escape(c) for c in contents)) if contents else None


# Unicode's White_Space, which Rust's char::is_whitespace tests (str.isspace also takes U+001C..1F)
_WHITE_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
                         "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def _is_word(c):
    return c.isalnum() or c == "_"


def _split_added(text, matcher, lookup, base):
    """[(id or text, offset of the text in the input)]: the library's AddedVocabulary.find_matches
    (single_word, lstrip, rstrip), with the text between tokens kept as it is."""
    if matcher is None or not text:
        return [(text, base)]
    out, done = [], 0
    for m in matcher.finditer(text):
        start, stop = m.span()
        token = lookup[m.group()]
        if token.single_word and ((start > 0 and _is_word(text[start - 1])) or
                                  (stop < len(text) and _is_word(text[stop]))):
            continue
        if token.lstrip:
            s = start
            while s > 0 and text[s - 1] in _WHITE_SPACE:
                s -= 1
            start = max(s, done)
        if token.rstrip:
            while stop < len(text) and text[stop] in _WHITE_SPACE:
                stop += 1
        if done < start:
            out.append((text[done:start], base + done))
        out.append((token.id, base + start))
        done = stop
    if done < len(text):
        out.append((text[done:], base + done))
    return out


def _post_processor(node, where, depth):
    """ids -> ids with the processor's special tokens (single sequences only)."""
    if node is None:
        return lambda ids: ids
    nested(where, depth)
    kind = choice(node, where, "type", ["TemplateProcessing", "ByteLevel", "Sequence", "BertProcessing",
                                        "RobertaProcessing"])
    if kind == "ByteLevel":  # offsets only
        return lambda ids: ids
    if kind == "Sequence":
        steps = [_post_processor(n, w, depth + 1) for w, n in objects(node, where, "processors")]

        def sequence(ids):
            for f in steps:
                ids = f(ids)
            return ids
        return sequence
    if kind in ("BertProcessing", "RobertaProcessing"):
        ends = []
        for key in ("cls", "sep"):
            pair = get(node, where, key, list)
            if len(pair) != 2 or not isinstance(pair[1], int) or isinstance(pair[1], bool):
                raise TokenizerFileError(f"{where}.{key} must be [token, id], got {pair!r:.60}")
            ends.append(pair[1])
        return lambda ids: [ends[0]] + ids + [ends[1]]
    specials = get(node, where, "special_tokens", dict, {})
    template = []  # [int] pieces and None for the sequence
    for w, piece in items(node, where, "single"):
        if not isinstance(piece, dict) or len(piece) != 1:
            raise TokenizerFileError(f"{w} must be {{\"SpecialToken\": ...}} or {{\"Sequence\": ...}}")
        (key, value), = piece.items()
        if key == "Sequence":
            choice(value, f"{w}.Sequence", "id", ["A"])
            template.append(None)
        elif key == "SpecialToken":
            name = get(value, f"{w}.SpecialToken", "id", str)
            entry = specials.get(name)
            ids = get(entry, f"{where}.special_tokens[{name!r}]", "ids", list) if isinstance(entry, dict) else None
            if ids is None or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 31
                                      for i in ids):
                raise TokenizerFileError(f"{w}: special token {name!r} has no ids in {where}.special_tokens")
            template.append(list(ids))
        else:
            raise TokenizerFileError(f"{w}: {key!r} is not SpecialToken or Sequence")

    def apply(ids):
        out = []
        for piece in template:
            out.extend(ids if piece is None else piece)
        return out
    return apply
