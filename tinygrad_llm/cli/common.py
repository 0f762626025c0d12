"""What every command shares: the user-error type, numeric flag checks and --help with defaults.

A mistake of the user's (a flag out of range, a missing file, a busy run folder) is a UsageError:
`python -m tinygrad_llm` prints it as one `error: ...` line and exits 2. Anything else is a bug
and keeps its traceback (so does a UsageError under --debug).
"""
import argparse
from contextlib import contextmanager

from ..config import check_range


class UsageError(Exception):
    """Bad input from the command line: the message names the flag, value, file or field."""


@contextmanager
def user_input(what=None):
    """Turn the errors that bad input raises while it is read or checked (ValueError, OSError, and
    their subclasses such as CheckpointError, TokenizerError, RunError) into a UsageError."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, OSError) as e:
        text = str(e) if not isinstance(e, OSError) or not e.filename else \
            f"{e.filename}: {e.strerror or e}"
        raise UsageError(f"{what}: {text}" if what else text) from e


def check_flags(args, limits):
    """limits: {dest: interval}. Each flag given (not None) must lie in its interval."""
    for dest, interval in limits.items():
        value = getattr(args, dest, None)
        if value is not None:
            try:
                check_range("--" + dest.replace("_", "-"), value, interval)
            except ValueError as e:
                raise UsageError(str(e)) from None


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """--help shows each flag's default, except where it is None (the help then says what applies)
    or a switch's False."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "default" in text or action.default in (None, False, argparse.SUPPRESS) \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()


def file_digest(path):
    """sha256 of a file's bytes: a checkpoint records its tokenizer's, so `sample` can tell a stranger."""
    import hashlib
    from pathlib import Path
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
