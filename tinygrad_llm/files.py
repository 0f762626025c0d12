"""Atomic file writes: a crash mid-write leaves the file that was there before, never half of one.

    with atomic_write(path) as f:      # f: a binary file beside path, under a temporary name
        f.write(data)                  # on a clean exit: flushed, fsynced, renamed onto path
    atomic_write_text(path, text)

Every file the package writes (checkpoints, tokenizers, token files and their sidecars, the
downloaded corpus) goes through here. It needs nothing but the standard library, so the
tokenizer, which imports nothing from the engine, can use it too.
"""
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
