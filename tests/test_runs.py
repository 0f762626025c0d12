"""Runs that survive their users: Ctrl-C at any instant, two runs on one folder, kill -9 during a
save, resuming with other flags, and one clean `error:` line for every mistake (runs.py, cli/)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinygrad_llm.__main__ import main as cli
from tinygrad_llm.checkpoint import load_checkpoint
from tinygrad_llm.runs import LOCK_NAME, RunError, RunLock, trim_metrics
from tinygrad_llm.train import TrainConfig, Trainer
from train_helpers import make_data

ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.1)  # dropout: the global RNG matters too
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40
# a short CLI run: every step logged, evaluations (and checkpoints) every 4 steps
FLAGS = ["--tokenizer", "char", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16",
         "--batch-size", "4", "--eval-every", "4", "--eval-iters", "2", "--log-every", "1",
         "--warmup-iters", "2", "--max-seconds", "0", "--sample-tokens", "0"]


def trainer(out_dir, **kw):
    base = dict(out_dir=str(out_dir), model=MODEL, batch_size=4, max_iters=10, warmup_iters=2, eval_every=4,
                eval_iters=2, log_every=1, seed=3, final_eval="full", optimizer="muon")
    base.update(kw)
    return Trainer(TrainConfig(**base), data=make_data(), log=lambda m: None)


def records(out_dir):
    return [json.loads(line) for line in open(Path(out_dir) / "metrics.jsonl")]


def assert_same_run(ref_dir, out_dir):
    """Every step logged exactly once, with the reference run's train loss to the last bit."""
    ref, got = records(ref_dir), records(out_dir)
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for a, b in zip(ref, got):
        assert a["train_loss"] == b["train_loss"], (a["step"], a["train_loss"], b["train_loss"])
        assert a["val_loss"] == b["val_loss"], a["step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert trainer(out).run()["status"] == "done"
    return out


def sigint():
    os.kill(os.getpid(), signal.SIGINT)


# ------------------------------------------------------------------ Ctrl-C at the chosen instants
def _after_batch_draw(t, at):
    draw = t.data.get_batch

    def get_batch(*a, **kw):
        out = draw(*a, **kw)
        if t.step == at and a[0] == "train":
            sigint()
        return out
    t.data.get_batch = get_batch


def _after_optimizer_step(t, at):
    step = t.optimizer.step

    def stepped():
        step()
        if t.step == at:  # the update is applied but the step counter has not moved yet
            sigint()
    t.optimizer.step = stepped


def _during_eval(t, at):
    evaluate = t.evaluate

    def evaluating(full=False):
        if t.step == at:
            sigint()
        return evaluate(full)
    t.evaluate = evaluating


def _during_save(t, at):
    save = t.save

    def saving():
        if t.step == at:
            sigint()
        return save()
    t.save = saving


@pytest.mark.parametrize("point,at", [(_after_batch_draw, 2), (_after_optimizer_step, 5), (_during_eval, 4),
                                      (_during_eval, 10), (_during_save, 8)],
                         ids=["after-batch-draw", "after-optimizer-step", "during-eval", "during-final-eval",
                              "during-save"])
def test_ctrl_c_at_a_chosen_instant_resumes_bit_identically(tmp_path, reference, point, at):
    t = trainer(tmp_path)
    point(t, at)
    summary = t.run()
    stopped = summary["step"]
    # the step in progress completes; a signal in the final evaluation lets the run finish
    assert (summary["status"], stopped) == (("done", 10) if at == 10 else ("interrupted", at + 1 if point in (
        _after_batch_draw, _after_optimizer_step) else at))
    ck = load_checkpoint(tmp_path / "ckpt.safetensors")
    assert ck["step"] == stopped
    if point is _during_eval:  # the evaluation finished and was saved with its own step
        assert ck["extra"]["last_val"]["step"] == at and summary["val_step"] == at
    if stopped < 10:
        resumed = Trainer(t.cfg, data=make_data(sampler_seed=99), log=lambda m: None)  # state from the file
        assert resumed.run(resume=True)["status"] == "done"
    assert_same_run(reference, tmp_path)


def test_sigterm_stops_at_a_step_boundary_too(tmp_path, reference):
    t = trainer(tmp_path)
    step = t.optimizer.step

    def stepped():
        step()
        if t.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends before it kills a job
    t.optimizer.step = stepped
    assert (t.run()["status"], load_checkpoint(tmp_path / "ckpt.safetensors")["step"]) == ("interrupted", 7)
    Trainer(t.cfg, data=make_data(), log=lambda m: None).run(resume=True)
    assert_same_run(reference, tmp_path)


def test_each_optimizers_learning_rate_is_logged(reference):
    rates = records(reference)[-1]["lrs"]  # muon: Muon on the matrices, AdamW on the rest
    assert set(rates) == {"Muon", "AdamW"} and rates["Muon"] != rates["AdamW"]


def test_second_ctrl_c_aborts_without_touching_the_checkpoint(tmp_path):
    t = trainer(tmp_path)
    step = t.optimizer.step

    def twice():
        if t.step == 5:
            sigint()
            sigint()  # the second one raises at once, in the middle of the step
        step()
    t.optimizer.step = twice
    assert t.run()["status"] == "aborted"
    assert load_checkpoint(tmp_path / "ckpt.safetensors")["step"] == 4
    assert not (tmp_path / LOCK_NAME).exists()


def _cli_run(out_dir, *extra, text=None, env=None):
    return subprocess.Popen([sys.executable, "-m", "tinygrad_llm", "train", "--data", str(text),
                             "--out-dir", str(out_dir), *FLAGS, *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)


@pytest.mark.slow
def test_ctrl_c_at_twenty_random_instants(tmp_path):
    """SIGINT to the real command at random instants: four while it starts (imports, tokenizer),
    sixteen while it trains; each run, resumed, logs the uninterrupted run's losses bit for bit."""
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    ref, iters = tmp_path / "ref", "80"
    t0 = time.perf_counter()
    p = _cli_run(ref, "--max-iters", iters, text=text)
    _wait_for(ref / "metrics.jsonl", p)
    startup = time.perf_counter() - t0
    assert p.wait() == 0, p.stderr.read()
    training = time.perf_counter() - t0 - startup
    rng = np.random.default_rng(17)
    outcomes = []
    for k in range(20):
        out = tmp_path / f"run{k}"
        p = _cli_run(out, "--max-iters", iters, text=text)
        if k < 4:
            delay = rng.uniform(0.0, startup)
        else:
            _wait_for(out / "metrics.jsonl", p)
            delay = rng.uniform(0.0, training)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        rc = p.wait()
        ck = out / "ckpt.safetensors"
        step = load_checkpoint(ck)["step"] if ck.exists() else None
        outcomes.append(("startup" if k < 4 else "training", round(delay, 2), rc, step))
        again = _cli_run(out, "--max-iters", iters, *(["--resume"] if step is not None else []), text=text)
        assert again.wait() == 0, (outcomes[-1], again.stderr.read())
        assert_same_run(ref, out)
    print("\nphase, instant (s), exit status, checkpoint step when interrupted:")
    for o in outcomes:
        print(*o)
    assert sum(step is not None and step < int(iters) for *_, step in outcomes) >= 10  # most stopped mid-run


# ------------------------------------------------------------------------------ the run folder
def test_two_runs_on_one_folder(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "run"
    first = _cli_run(out, "--max-iters", "120", text=text)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read()
    for extra in ([], ["--resume"], ["--overwrite"]):
        assert cli(["train", "--data", str(text), "--out-dir", str(out), *FLAGS, "--max-iters", "5", *extra]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another run (pid {first.pid} on " in err and err.count("\n") == 1, err
    assert first.wait() == 0, first.stderr.read()
    assert [r["step"] for r in records(out)] == list(range(1, 121))  # nothing lost
    assert load_checkpoint(out / "ckpt.safetensors")["step"] == 120
    assert not (out / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "yesterday"}))
    notes = []
    lock = RunLock.acquire(tmp_path, log=notes.append)
    assert "stale lock from pid 999999 on elsewhere, started yesterday" in notes[0]
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_live_lock_is_refused_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tinygrad_llm.runs import RunLock; "
                               f"RunLock.acquire({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"in use by another run \\(pid {holder.pid} on .*, started "):
            RunLock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    RunLock.acquire(tmp_path, log=lambda m: None).release()  # its holder is gone: the lock is free again


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def test_a_fresh_run_never_breaks_the_run_in_its_folder(tmp_path, capsys):
    text, empty = tmp_path / "t.txt", tmp_path / "empty.txt"
    text.write_text(TEXT)
    empty.write_text("")
    out = tmp_path / "run"
    train = ["train", "--data", str(text), "--out-dir", str(out), *FLAGS]
    assert cli(train + ["--max-iters", "4"]) == 0
    before = _digests(out)
    capsys.readouterr()
    cases = [(train + ["--max-iters", "4"], "already holds a run's checkpoint"),
             (train + ["--max-iters", "4", "--tokenizer", "bpe", "--vocab-size", "300"], "already holds"),
             (train + ["--max-iters", "0", "--overwrite"], "--max-iters 0: must be"),
             (["train", "--data", str(empty), "--out-dir", str(out), *FLAGS, "--overwrite"], "is empty"),
             (train + ["--block-size", "4000", "--overwrite"], "fewer than block_size + 1"),
             (train + ["--resume", "--overwrite"], "contradict")]
    for argv, message in cases:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (argv, err)
        assert _digests(out) == before, argv  # not one byte of the old run changed
    assert cli(["sample", "--out-dir", str(out), "--max-new-tokens", "5", "--prompt", "First"]) == 0
    assert cli(train + ["--max-iters", "3", "--overwrite"]) == 0  # asked for: the old run is replaced
    assert [r["step"] for r in records(out)] == [1, 2, 3]


def test_a_resume_into_an_unwritable_folder_fails_before_training(tmp_path, capsys, monkeypatch):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "run"
    assert cli(["train", "--data", str(text), "--out-dir", str(out), *FLAGS, "--max-iters", "4"]) == 0
    before = _digests(out)
    capsys.readouterr()
    real_open = open

    def read_only_open(path, mode="r", *a, **kw):  # as the folder of a root-owned run would be
        if Path(path).parent == out and any(c in mode for c in "wax"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *a, **kw)
    monkeypatch.setattr("builtins.open", read_only_open)
    assert cli(["train", "--data", str(text), "--out-dir", str(out), *FLAGS, "--max-iters", "8", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write into {out} (Permission denied); pass a writable --out-dir\n"
    monkeypatch.undo()
    assert _digests(out) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    assert cli(["train", "--data", str(text), "--out-dir", str(out), *FLAGS, "--max-iters", "2"]) == 2
    assert "cannot write into" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- resume
def test_resume_names_each_field_it_refuses_and_logs_those_it_allows(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "run"
    train = ["train", "--data", str(text), "--out-dir", str(out), *FLAGS]
    assert cli(train + ["--max-iters", "4", "--optimizer", "muon"]) == 0
    capsys.readouterr()
    refused = [(["--optimizer", "adamw"], "optimizer: checkpoint 'muon', asked 'adamw'"),
               (["--n-layer", "2"], "model.n_layer: checkpoint 1, asked 2"),
               (["--n-embd", "32", "--n-head", "4"], "model.n_embd: checkpoint 16, asked 32; model.n_head: "
                                                       "checkpoint 2, asked 4"),
               (["--tokenizer", "bpe"], "--tokenizer bpe: this run's tokenizer"),
               (["--vocab-size", "99"], "--vocab-size 99: this run's tokenizer"),
               (["--device", "cuda"], "--device cuda")]
    for flags, message in refused:
        assert cli(train + ["--max-iters", "8", "--resume", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "{" not in err, (flags, err)
    assert load_checkpoint(out / "ckpt.safetensors")["step"] == 4
    # the flags not given take the run's own values; the ones that may change are logged
    assert cli(["train", "--data", str(text), "--out-dir", str(out), "--resume", "--max-iters", "8",
                "--lr", "0.002", "--eval-every", "2", "--sample-tokens", "0"]) == 0
    printed = capsys.readouterr().out
    for line in ("resume: max_iters changes from 4 to 8", "resume: lr changes from 0.003 to 0.002",
                 "resume: eval_every changes from 4 to 2"):
        assert line in printed
    assert "optimizer changes" not in printed and "n_layer" not in printed
    assert [r["step"] for r in records(out)] == list(range(1, 9))


def test_resume_trims_metrics_past_the_checkpoint(tmp_path):
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 8)) + '{"step": 8, "tr')
    assert trim_metrics(m, 4) == 4
    assert [json.loads(line)["step"] for line in m.read_text().splitlines()] == [1, 2, 3, 4]
    assert trim_metrics(m, 4) == 0


KILL_DURING_SECOND_SAVE = """
import os, signal, sys
real_replace = os.replace
saves = []
def replace(src, dst):
    if str(dst).endswith("ckpt.safetensors"):
        saves.append(dst)
        if len(saves) == 2:  # the new checkpoint is written under its temporary name: the power goes
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)
os.replace = replace
from tinygrad_llm.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_during_a_save_keeps_the_last_checkpoint_and_resume_logs_each_step_once(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert _cli_run(ref, "--max-iters", "12", text=text).wait() == 0
    args = ["train", "--data", str(text), "--out-dir", str(out), *FLAGS, "--max-iters", "12"]
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_SAVE, *args], cwd=ROOT, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "ckpt.safetensors")["step"] == 4  # the first save, whole
    assert [r["step"] for r in records(out)] == list(range(1, 9))  # logged up to the save that died
    resumed = subprocess.run([sys.executable, "-m", "tinygrad_llm", *args, "--resume"], cwd=ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "stale lock" in resumed.stdout and "4 metrics records past it dropped" in resumed.stdout
    assert_same_run(ref, out)


# ----------------------------------------------------------------------- one line per mistake
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("cases")
    (base / "t.txt").write_text(TEXT)
    assert cli(["train", "--data", str(base / "t.txt"), "--out-dir", str(base / "run"), *FLAGS,
                "--max-iters", "2"]) == 0
    return base


def _train(base, *flags):
    return ["train", "--data", str(base / "t.txt"), "--out-dir", str(base / "new"), *FLAGS, "--max-iters", "2",
            *flags]


@pytest.mark.parametrize("argv,message", [
    (lambda b: _train(b, "--log-every", "0"), "--log-every 0: must be a finite number in [1, inf)"),
    (lambda b: _train(b, "--max-seconds", "-1"), "--max-seconds -1.0: must be"),
    (lambda b: _train(b, "--weight-decay", "nan"), "--weight-decay nan: must be"),
    (lambda b: _train(b, "--muon-lr", "nan"), "--muon-lr nan: must be"),
    (lambda b: _train(b, "--max-iters", "0"), "--max-iters 0: must be"),
    (lambda b: _train(b, "--dropout", "1.5"), "--dropout 1.5: must be a finite number in [0, 1)"),
    (lambda b: _train(b, "--eval-iters", "0"), "--eval-iters 0: must be"),
    (lambda b: _train(b, "--n-embd", "10", "--n-head", "3"), "n_embd=10 is not divisible by n_head=3"),
    (lambda b: _train(b, "--tokenizer", "bpe", "--vocab-size", "5000"),
     "vocab_size 5000 cannot be reached: the text runs out of pairs"),
    (lambda b: _train(b, "--vocab-size", "300"), "--vocab-size sets a BPE vocabulary"),
    (lambda b: ["train", "--data", str(b / "empty.txt"), "--out-dir", str(b / "new"), *FLAGS], "is empty"),
    (lambda b: ["train", "--data", str(b), "--out-dir", str(b / "new"), *FLAGS], "is a folder without shards"),
    (lambda b: ["train", "--data", str(b / "nope.txt"), "--out-dir", str(b / "new")], "no such file"),
    (lambda b: ["train", "--data", str(b / "t.txt"), "--out-dir", str(b / "t.txt")], "is a file, not a folder"),
    (lambda b: ["sample", "--out-dir", str(b / "run"), "--num-samples", "0"], "--num-samples 0: must be"),
    (lambda b: ["sample", "--out-dir", str(b / "run"), "--temperature", "nan"], "--temperature nan: must be"),
    (lambda b: ["sample", "--out-dir", str(b / "run"), "--max-new-tokens", "-5"], "--max-new-tokens -5: must"),
    (lambda b: ["sample", "--out-dir", str(b / "run"), "--top-p", "0"], "--top-p 0.0: must be"),
    (lambda b: ["sample", "--out-dir", str(b / "none")], "no checkpoint file at"),
    (lambda b: ["sample", "--out-dir", str(b / "run"), "--tokenizer-file", str(b / "cut.json")],
     "cut.json is not valid JSON"),
    (lambda b: ["sample", "--out-dir", str(b / "run"), "--tokenizer-file", str(b / "other.json")],
     "is not the tokenizer"),
    (lambda b: ["plot", str(b / "run"), "--dpi", "0"], "--dpi 0: must be"),
    (lambda b: ["bench", "--steps", "-1"], "--steps -1: must be"),
], ids=["log-every-0", "max-seconds-negative", "weight-decay-nan", "muon-lr-nan", "max-iters-0", "dropout",
        "eval-iters-0", "heads", "unreachable-vocab", "vocab-with-char", "empty-data", "data-folder",
        "missing-data", "out-dir-file", "num-samples-0", "temperature-nan", "max-new-tokens-negative", "top-p",
        "no-checkpoint", "truncated-tokenizer", "other-tokenizer", "plot-dpi", "bench-steps"])
def test_each_user_mistake_is_one_error_line_and_exit_2(run_dir, capsys, argv, message):
    (run_dir / "empty.txt").write_text("")
    tok = (run_dir / "run" / "tokenizer.json").read_text()
    (run_dir / "cut.json").write_text(tok[:len(tok) // 2])
    (run_dir / "other.json").write_text(tok.replace('"a"', '"@"'))  # same size, other characters
    assert cli(argv(run_dir)) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    assert not (run_dir / "new").exists()  # nothing written for a run that never started


def test_a_truncated_tokenizer_on_resume_names_its_path(run_dir, capsys):
    run = run_dir / "trunc"
    run.mkdir(exist_ok=True)
    for name in ("ckpt.safetensors", "tokens.bin", "tokens.bin.json", "tokenizer.json"):
        (run / name).write_bytes((run_dir / "run" / name).read_bytes())
    tok = run / "tokenizer.json"
    tok.write_text(tok.read_text()[:40])
    assert cli(["train", "--data", str(run_dir / "t.txt"), "--out-dir", str(run), "--resume", "--max-iters", "3",
                "--sample-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{tok} is not valid JSON" in err and err.count("\n") == 1


def test_debug_keeps_the_traceback_and_unknown_commands_are_named(run_dir, capsys):
    with pytest.raises(Exception, match="--log-every 0"):
        cli(_train(run_dir, "--log-every", "0", "--debug"))
    assert cli(["fooo"]) == 2
    assert "unknown command 'fooo'" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "tinygrad_llm", "train", "--help"], cwd=ROOT, capture_output=True,
                       text=True)
    shown = " ".join(r.stdout.split())
    assert "optimizer steps (default: 2000 on cpu, 5000 on cuda" in shown  # --max-iters
    assert "(default: 1337" in shown and "(default: out/shakespeare)" in shown


def test_library_refuses_what_is_not_a_number():
    from tinygrad_llm import Tensor
    from tinygrad_llm.models import GPT, GPTConfig
    for bad in (None, "abc", np.array(["a", "b"]), [1, "a"], np.array([None, 1])):
        with pytest.raises(TypeError, match="Tensor: "):
            Tensor(bad)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        model.generate(np.zeros((1, 2), dtype=np.int64), 3, temperature=float("nan"))
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got -5"):
        model.generate(np.zeros((1, 2), dtype=np.int64), -5)
    with pytest.raises(ValueError, match="TrainConfig.log_every 0: must be"):
        TrainConfig(log_every=0).validate()
