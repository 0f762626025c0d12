"""Files written whole and JSON read with care.

Atomic writes: a crash mid-write leaves the file that was there before, never half of one.

    with atomic_write(path) as f:      # f: a binary file beside path, under a temporary name
        f.write(data)                  # on a clean exit: flushed, fsynced, renamed onto path
    atomic_write_text(path, text)

Every file the package writes (checkpoints, tokenizers, token files and their sidecars, the
downloaded corpus) goes through here.

JSON from a file that may be damaged or hostile (a downloaded model folder, a sidecar, a
checkpoint's metadata): `read_json(path, max_bytes)` / `parse_json(data, where)` end in one
JSONFileError (a ValueError) naming the file for every way the text can be wrong: too big to be
what it claims (checked before reading it), not UTF-8, not JSON, a key given twice (json.loads
would silently keep the last), nesting too deep for the parser, or a number too long to convert.

It needs nothing but the standard library, so the tokenizer, which imports nothing from the
engine, can use it too.
"""
import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Open a temporary file in path's folder; rename it onto path when the block ends cleanly.

    The rename is atomic within one file system, which is why the temporary file sits beside
    path. If the block raises, the temporary file is removed and path is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, encoding=encoding, **({"newline": "\n"} if "b" not in mode else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path, text):
    """Write text to path as UTF-8 (newlines as "\\n"), atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


class JSONFileError(ValueError):
    """JSON that cannot be read: the message names the file (or what held the text) and why."""


def _no_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise JSONFileError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse_json(data, where):
    """json.loads(data) for str or UTF-8 bytes, or one JSONFileError naming `where`."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except JSONFileError as e:
        raise JSONFileError(f"{where}: {e}") from None
    except UnicodeDecodeError as e:
        raise JSONFileError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise JSONFileError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                            "truncated or corrupt?") from None
    except RecursionError:
        raise JSONFileError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise JSONFileError(f"{where}: unreadable JSON ({e})") from None


def read_json(path, max_bytes=16 << 20):
    """The JSON value in the file at path, refusing a file above max_bytes before reading it."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise JSONFileError(f"{path}: {size:,} bytes, more than the {max_bytes:,} such a file may "
                                "hold; not the file it should be")
        return parse_json(f.read(max_bytes + 1), path)
