"""The files a run reads back: metrics.jsonl (runs.trim_metrics on resume, cli/plot.read_metrics
for the plot) and the shard sidecars (read_token_file, ShardData, the encoder's resume), fuzzed:
cut lines, bytes that are not UTF-8, values of the wrong type, huge numbers, NaN; sidecars whose
counts, dtypes or sizes disagree with their file. Metrics readers skip what is damaged and never
fail; shard readers end in one ValueError naming the file and the field."""
import json

import numpy as np
import pytest
from fuzz_helpers import HOSTILE_VALUES, byte_mutations, json_mutations, refused_cleanly, scratch_dir, write_json
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm.cli import plot
from tinygrad_llm.runs import trim_metrics
from tinygrad_llm.shard_data import ShardData
from tinygrad_llm.tokenizer.shards import finished_shards, shard_name

FUZZ = settings(max_examples=40, deadline=None)

# ------------------------------------------------------------------------------------ metrics
RECORDS = [{"step": s, "train_loss": 4.0 - s / 10, "lr": 1e-3, "ms": 12.5, "tokens_per_s": 900.0,
            **({"val_loss": 3.9, "val_bpb": 2.1} if s % 3 == 0 else {}),
            **({"health": {"grad_norm": 1.5, "groups": {"h.0": {"grad_norm": 0.5, "update_ratio": 1e-3}},
                           "activations": {"h.0": {"mean": 0.0, "std": 1.0}}}} if s % 4 == 0 else {})}
           for s in range(1, 9)]
LINES = b"".join(json.dumps(r).encode() + b"\n" for r in RECORDS)


def check_metrics(data, step):
    """trim_metrics then read_metrics on data: neither raises, and what they keep is clean."""
    with scratch_dir() as d:
        path = d / "metrics.jsonl"
        path.write_bytes(data)
        refused_cleanly(lambda: trim_metrics(path, step), errors=())
        for line in path.read_bytes().splitlines():  # every line kept is a record of a step <= step
            rec = json.loads(line)
            assert isinstance(rec["step"], int) and not isinstance(rec["step"], bool) and rec["step"] <= step
        path.write_bytes(data)
        _, records = refused_cleanly(lambda: plot.read_metrics(path), errors=())
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps))  # each step once, in order
    # what the panels draw: finite floats only
    series = [plot._series(records, k) for k in ("train_loss", "val_loss", "val_bpb")]
    series += list(plot._lr_series(records).values()) + list(plot._activation_series(records).values())
    series += [s for f in ("grad_norm", "update_ratio") for s in plot._health_series(records, f).values()]
    for xs, ys in series:
        assert all(isinstance(v, float) and np.isfinite(v) for v in list(xs) + list(ys))
    return records


@FUZZ
@given(data=byte_mutations(LINES), step=st.integers(0, 10))
def test_damaged_metrics_bytes_are_skipped_never_fatal(data, step):
    check_metrics(data, step)


@FUZZ
@given(record=json_mutations(RECORDS[3]), at=st.integers(0, len(RECORDS) - 1), step=st.integers(0, 10))
def test_a_record_of_wrong_types_is_skipped_or_drawn_cleanly(record, at, step):
    lines = LINES.splitlines()
    lines[at] = json.dumps(record, allow_nan=True).encode()
    check_metrics(b"\n".join(lines) + b"\n", step)


@pytest.mark.parametrize("line", [b'{"step": 1e999, "train_loss": 1}', b'{"step": NaN, "train_loss": 1}',
                                  b'{"step": 9, "train_loss": ' + b"9" * 5000 + b"}",
                                  b'{"step": true, "train_loss": 1}', b'{"step": 9, "health": [1]}',
                                  b'{"step": 9, "health": {"groups": {"h.0": 5}, "activations": "x"}}',
                                  b'{"step": 9, "train_loss": 1' + b"0" * 400 + b"}", b"\xff\xfe{}", b"[" * 5000],
                         ids=["inf step", "nan step", "long int", "bool step", "list health", "bad health",
                              "huge loss", "not utf-8", "deep"])
def test_each_hostile_metrics_line_is_harmless(line):
    records = check_metrics(LINES + line + b"\n", 8)
    assert [r["step"] for r in records][:8] == list(range(1, 9))


def test_trim_drops_a_float_step_past_the_checkpoint(tmp_path):
    # a record stepping past the checkpoint under another type would be logged twice on resume
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(LINES + b'{"step": 12.0, "train_loss": 1.0}\n{"step": "9"}\n')
    assert trim_metrics(path, 8) == 2
    assert path.read_bytes() == LINES


def test_the_plot_draws_hostile_metrics(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib")
    lines = LINES + b'{"step": 9, "train_loss": 1e308, "lr": -0.0, "health": {"groups": {"h.0": {}}}}\n'
    (tmp_path / "metrics.jsonl").write_bytes(lines + b'{"step": 10, "lrs": {"muon": 1e-300, "adamw": "x"}}\n')
    records = plot.read_metrics(tmp_path / "metrics.jsonl")
    assert plot.plot(records, tmp_path / "m.png").exists()


# ------------------------------------------------------------------------------------ sidecars
SETTINGS = {"inputs": [["docs.jsonl", 100]], "text_field": "text", "shard_tokens": 40, "val_tokens": 20}


def sidecar(i, n, vocab=300):
    return {"dtype": "uint16", "vocab_size": vocab, "num_tokens": n, "source_bytes": 3 * n, "tokenizer": "t",
            "split": "val" if i == 0 else "train", "shard": i, "eot_id": 256, "end": [i * 10, 0],
            "last": i == 2, "settings": SETTINGS}


SIZES = [20, 40, 33]


def write_shards(folder, metas=None):
    for i, n in enumerate(SIZES):
        ids = np.random.default_rng(i).integers(0, 300, n).astype(np.uint16)
        ids.tofile(folder / shard_name(i))
        write_json(folder / (shard_name(i) + ".json"), (metas or {}).get(i, sidecar(i, n)))


def open_shards(folder):
    data = ShardData(folder)  # (ids past vocab_size are the embedding's to refuse, by id)
    data.get_batch("train", 2, 8)
    data.get_batch("val", 2, 8)
    return data


@FUZZ
@given(meta=json_mutations(sidecar(1, SIZES[1])), which=st.integers(0, 2))
def test_a_damaged_sidecar_is_refused_by_name(meta, which):
    with scratch_dir() as d:
        write_shards(d, {which: meta})
        refused_cleanly(lambda: open_shards(d), names=[d])
        refused_cleanly(lambda: finished_shards(d, SETTINGS), names=[d])


@FUZZ
@given(data=byte_mutations(np.arange(SIZES[1], dtype=np.uint16).tobytes()))
def test_a_shard_whose_size_changed_is_refused_by_name(data):
    with scratch_dir() as d:
        write_shards(d)
        (d / shard_name(1)).write_bytes(data)
        status, _ = refused_cleanly(lambda: open_shards(d), names=[d / shard_name(1)])
        assert status == "refused" or len(data) == 2 * SIZES[1]


@pytest.mark.parametrize("field, value, fault", [
    ("num_tokens", 40.0, "num_tokens must be a whole number"),
    ("num_tokens", True, "num_tokens must be a whole number"),
    ("num_tokens", 41, "promises 41"),
    ("source_bytes", "120", "source_bytes must be a whole number"),
    ("vocab_size", 70000, "vocab_size must be a whole number in [1, 65,536]"),
    ("dtype", ["uint16"], "dtype"),
    ("tokenizer", 5, "tokenizer must be a name"),
    ("eot_id", 300, "eot_id must be null or an id in [0, 300)"),
    ("split", "test", "split must be 'train' or 'val'"),
    ("end", [1], "end must be"),
    ("settings", [1], "settings must be an object"),
])
def test_each_sidecar_fault_is_named(field, value, fault):
    with scratch_dir() as d:
        write_shards(d, {1: {**sidecar(1, SIZES[1]), field: value}})
        status, error = refused_cleanly(lambda: open_shards(d), names=[d / shard_name(1)])
        assert status == "refused" and fault in str(error), error


def test_the_encoders_resume_rewrites_a_shard_whose_sidecar_is_damaged():
    with scratch_dir() as d:
        write_shards(d, {1: {**sidecar(1, SIZES[1]), "end": "x"}})
        assert [m["shard"] for m in finished_shards(d, SETTINGS)] == [0]  # shard 1 is written again
        write_shards(d, {1: {**sidecar(1, SIZES[1]), "settings": [1]}})
        assert [m["shard"] for m in finished_shards(d, SETTINGS)] == [0]


# ------------------------------------------------------------------------------ sampler state
def sampler(folder):
    data = ShardData(folder)
    data.get_batch("train", 2, 8)
    return data


@FUZZ
@given(change=st.sampled_from(["seed", "epoch", "shard", "window", "block_size", "train_tokens", "kind"]),
       value=st.sampled_from(HOSTILE_VALUES) | st.integers(-3, 40))
def test_a_damaged_sampler_state_is_refused_or_resumes(change, value):
    with scratch_dir() as d:
        write_shards(d)
        state = {**sampler(d).state(), change: value}
        data = ShardData(d)
        before = data.state()
        status, _ = refused_cleanly(lambda: data.set_state(state), names=["ShardData.set_state"])
        if status == "refused":
            assert data.state() == before  # nothing changed
        else:
            data.get_batch("train", 3, state["block_size"] or 8)  # it can go on from there
