"""Reading a Hugging Face config.json with care: the file comes from a downloaded folder.

    hf = read_config(path)                                    # a dict, or ConfigError naming the file
    n_embd = positive_int(hf, "n_embd", path)                 # required
    block = positive_int(hf, "n_positions", path, default=1024)
    eps = positive_float(hf, "layer_norm_epsilon", path, default=1e-5)
    tied = boolean(hf, "tie_word_embeddings", path, default=True)
    act = one_of(hf, "activation_function", ("gelu_new", "gelu"), path, default="gelu_new")

Each reader returns the field's value or raises one ConfigError (a ValueError) that names the
file, the field and what it holds: never a KeyError for a missing key, never a size of the
wrong type or sign passed on to allocate a model. The file itself is refused before it is read
when it is bigger than any config.json (MAX_CONFIG_BYTES).
"""
import math

from ..files import JSONFileError, read_json

MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB; anything near this is not one
REQUIRED = object()


class ConfigError(ValueError):
    """A config.json that cannot describe a model: the message names the file and the field."""


def read_config(path):
    """The JSON object in config.json at path."""
    try:
        hf = read_json(path, MAX_CONFIG_BYTES)
    except JSONFileError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{path}: holds a JSON {type(hf).__name__}, not an object of model fields")
    return hf


def _shown(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _get(hf, key, path, default):
    if key in hf and hf[key] is not None:
        return hf[key], True
    if default is REQUIRED:
        raise ConfigError(f"{path}: the field {key!r} is missing" if key not in hf else
                          f"{path}: the field {key!r} is null")
    return default, False


def positive_int(hf, key, path, default=REQUIRED, at_most=1 << 40):
    """A whole number in [1, at_most] (JSON true is not a number here; 12.0 is 12)."""
    value, given = _get(hf, key, path, default)
    if not given:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= at_most:
        raise ConfigError(f"{path}: {key} must be a whole number in [1, {at_most:,}], got {_shown(value)}")
    return value


def positive_float(hf, key, path, default=REQUIRED):
    """A finite number > 0."""
    value, given = _get(hf, key, path, default)
    if not given:
        return value
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or value <= 0):
        raise ConfigError(f"{path}: {key} must be a finite number > 0, got {_shown(value)}")
    return float(value)


def boolean(hf, key, path, default=REQUIRED):
    value, given = _get(hf, key, path, default)
    if given and not isinstance(value, bool):
        raise ConfigError(f"{path}: {key} must be true or false, got {_shown(value)}")
    return value


def one_of(hf, key, allowed, path, default=REQUIRED):
    value, given = _get(hf, key, path, default)
    if given and (not isinstance(value, str) or value not in allowed):
        raise ConfigError(f"{path}: {key} is {_shown(value)}; this model reads {', '.join(map(repr, allowed))}")
    return value
