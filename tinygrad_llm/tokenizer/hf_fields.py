"""Reading a Hugging Face tokenizer.json field by field, so a bad file ends in one clear error.

Every getter names the field it reads by its path in the file ("pre_tokenizer.pretokenizers[1].
behavior"), so an error says exactly where the file is wrong or asks for what we do not implement:

    >>> get(node, "tokenizer.json: model", "type", str)
    'BPE'
    TokenizerFileError: tokenizer.json: model.type is 'Unigram': not supported (supported: BPE)
"""
import regex

from .errors import TokenizerFileError

MISSING = object()
MAX_DEPTH = 32  # nested Sequence normalizers / pre-tokenizers / decoders; real files use 1 or 2


class _Absent:
    """A getter default that keeps absent and given fields apart."""


ABSENT = _Absent()


def _at(where, key):
    """where + key: 'tokenizer.json:' + 'model' -> 'tokenizer.json: model', 'a' + 'b' -> 'a.b'."""
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def type_name(value):
    return _KIND_NAMES.get(type(value), type(value).__name__)


def get(node, where, key, kind, default=MISSING):
    """node[key], checked to be of kind (a type or tuple of types); default when absent or null."""
    if not isinstance(node, dict):
        raise TokenizerFileError(f"{where} must be an object, got {type_name(node)}")
    value = node.get(key)
    if value is None and default is not MISSING:
        return default
    if value is None and key not in node:
        raise TokenizerFileError(f"{_at(where, key)} is missing")
    # bool is an int in Python; a flag must not pass as an id nor an id as a flag
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _kinds(kind))
    if not ok:
        names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in _kinds(kind))
        raise TokenizerFileError(f"{_at(where, key)} must be {names}, got {type_name(value)}: {_short(value)}")
    return value


_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}


def _kinds(kind):
    return kind if isinstance(kind, tuple) else (kind,)


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def choice(node, where, key, allowed, default=MISSING):
    """A string field that must be one of allowed (a field we do not implement otherwise)."""
    value = get(node, where, key, str, default)
    if value not in allowed:
        raise TokenizerFileError(f"{_at(where, key)} is {_short(value)}: not supported "
                                 f"(supported: {', '.join(allowed)})")
    return value


def refuse_set(node, where, key, unless=(None,)):
    """An option we do not implement: fine while it keeps its neutral value(s), refused otherwise."""
    if isinstance(node, dict) and node.get(key) not in unless:
        raise TokenizerFileError(f"{_at(where, key)} is {_short(node.get(key))}: not supported "
                                 f"(only {' or '.join(repr(u) for u in unless)})")


def items(node, where, key):
    """A list field: [(where[i], item), ...]."""
    values = get(node, where, key, list)
    return [(f"{_at(where, key)}[{i}]", v) for i, v in enumerate(values)]


def objects(node, where, key):
    """A list field whose items are all objects: [(where[i], item), ...]."""
    out = items(node, where, key)
    for w, v in out:
        if not isinstance(v, dict):
            raise TokenizerFileError(f"{w} must be an object, got {type_name(v)}: {_short(v)}")
    return out


def pattern(node, where, key="pattern"):
    """A {"String": s} or {"Regex": r} pattern field -> a compiled regex (strings are escaped)."""
    spec = get(node, where, key, dict)
    here = f"{_at(where, key)}"
    if len(spec) != 1 or next(iter(spec)) not in ("String", "Regex"):
        raise TokenizerFileError(f"{here} must be {{\"String\": ...}} or {{\"Regex\": ...}}, got {_short(spec)}")
    kind = next(iter(spec))
    source = get(spec, here, kind, str)
    if kind == "String":
        return regex.compile(regex.escape(source)) if source else None
    try:
        return regex.compile(source)
    except (regex.error, OverflowError, RecursionError, ValueError) as e:
        raise TokenizerFileError(f"{here}.Regex {_short(source)} is not a valid regex: {e}") from None


def nested(where, depth):
    if depth > MAX_DEPTH:
        raise TokenizerFileError(f"{where}: Sequence nested deeper than {MAX_DEPTH} levels")
