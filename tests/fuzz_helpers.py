"""Hostile inputs for the loaders, and the one check every loader must pass on them.

A loader meets files it did not write: a model folder from the internet, a checkpoint cut short
by a full disk, a sidecar edited by hand. On any of them it must end in one clear error, a
ValueError (or a subclass: SafetensorsError, CheckpointError, ...) whose message names the file,
and never in a crash (a bare KeyError, IndexError, TypeError or NumPy traceback), a hang, or an
allocation the file does not back. The strategies here damage a valid input in the ways files get
damaged; `refused_cleanly` runs the loader on the result and holds it to that.

    @settings(max_examples=60, deadline=None)
    @given(config=json_mutations(VALID_CONFIG))
    def test_config_json_is_refused_cleanly(config):
        with scratch_dir() as d:
            write_json(d / "config.json", config)
            refused_cleanly(lambda: from_pretrained(d), names=["config.json"])

json_mutations works on any JSON value: a config.json, a sidecar, a checkpoint's metadata, a
safetensors header. byte_mutations damages raw bytes (truncation, flipped and inserted bytes,
garbage at the end).
"""
import contextlib
import json
import signal
import tempfile
import tracemalloc
from pathlib import Path

from hypothesis import strategies as st

# Values a field should never hold, or holds only at its edge: wrong types, signs, sizes, specials
HOSTILE_VALUES = [None, True, False, 0, 1, -1, 2, 3, 7, 2 ** 31, 2 ** 40, 2 ** 63, 2 ** 64 + 1, -2 ** 63,
                  10 ** 30, 0.5, -0.0, 1e308, float("nan"), float("inf"), float("-inf"), "", "12", "x" * 40,
                  "\udcff", [], [1], [-1, 2], [0, 2 ** 70], {}, {"a": 1}, [[[[]]]]]


def hostile_values():
    """One of HOSTILE_VALUES, or a small random JSON value."""
    small = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 65, 2 ** 65) | st.floats()
                         | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
    return st.sampled_from(HOSTILE_VALUES) | small


def _paths(value, prefix=()):
    """Every path (a tuple of keys / indices) to a value inside a JSON value, the root first."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _copy(value):
    return json.loads(json.dumps(value))


def _at(value, path):
    for key in path:
        value = value[key]
    return value


@st.composite
def json_mutations(draw, valid, max_changes=3):
    """A copy of the JSON value `valid` with 1..max_changes changes: a value replaced by a
    hostile one, a key removed, an unknown key added, a list shortened or lengthened."""
    value = _copy(valid)
    for _ in range(draw(st.integers(1, max_changes))):
        paths = list(_paths(value))
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "remove", "add", "resize"]))
        if not path:  # the root itself
            if kind == "replace":
                value = draw(hostile_values())
            continue
        parent, key = _at(value, path[:-1]), path[-1]
        if kind == "replace":
            parent[key] = draw(hostile_values())
        elif kind == "remove":
            del parent[key]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = draw(hostile_values())
        elif kind == "resize" and isinstance(parent[key], list):
            items = parent[key]
            parent[key] = items[:draw(st.integers(0, len(items)))] if draw(st.booleans()) \
                else items + [draw(hostile_values())]
    return value


@st.composite
def byte_mutations(draw, valid):
    """valid (bytes) damaged once or twice: cut short, bytes overwritten, bytes inserted,
    garbage appended."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "append"]))
        at = draw(st.integers(0, len(data)))
        junk = draw(st.binary(min_size=1, max_size=16))
        if kind == "truncate":
            del data[at:]
        elif kind == "overwrite":
            data[at:at + len(junk)] = junk
        elif kind == "insert":
            data[at:at] = junk
        else:
            data += junk
    return bytes(data)


def json_text(value):
    """JSON text of value; NaN and infinities as Python writes them (as a damaged file may)."""
    return json.dumps(value, allow_nan=True)


def write_json(path, value):
    Path(path).write_text(json_text(value), encoding="utf-8", errors="surrogatepass")


@contextlib.contextmanager
def scratch_dir():
    """A fresh folder per hypothesis example (a pytest tmp_path is shared by all of them)."""
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds):
    def stop(signum, frame):
        raise _Hang(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def refused_cleanly(load, names=(), errors=(ValueError,), max_bytes=64 << 20, seconds=20):
    """Run load(); it may succeed (the damage was harmless) or raise one of `errors` whose
    message names each of `names` (the file, the field). Anything else fails the test: another
    exception type, a run past `seconds`, or more than `max_bytes` allocated at once by Python
    and NumPy (tracemalloc sees both). Returns ("ok", result) or ("refused", error)."""
    tracemalloc.start()
    try:
        with _time_limit(seconds):
            try:
                return "ok", load()
            except errors as e:
                message = str(e)
                for name in names:
                    assert str(name) in message, f"the error does not name {name!r}: {message}"
                assert message.count("\n") <= 2, f"not one clear error: {message}"
                return "refused", e
    except _Hang as e:
        raise AssertionError(f"the loader hangs: {e}") from None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= max_bytes, f"the loader allocated {peak:,} bytes at once (bound {max_bytes:,})"
