"""A training run's folder and its lifetime: what keeps a run whole when a user interrupts it,
starts a second one beside it, or resumes it with other flags.

    lock = open_run_dir(out_dir, resume=False, overwrite=False)   # refuses a busy or finished folder
    with StopOnSignal() as stop:                                  # Ctrl-C sets stop.requested ...
        ...                                                       # ... the loop saves at a step boundary
    trim_metrics(out_dir / "metrics.jsonl", step)                 # on resume: no duplicate records
    lock.release()

- The lock (<out_dir>/run.lock) names its holder (pid, host, start time) for the message a second
  run prints, and rests on flock(2): the kernel drops it when the process ends, however it ends,
  so a lock left by a killed run is taken over (with a note) rather than blocking forever.
- A fresh run into a folder that holds a checkpoint is refused unless resume or overwrite is asked
  for: the old run's checkpoint, tokenizer and metrics belong together.
- resume_changes() compares a checkpoint's config with the one asked for: the model's shape and
  the optimizer cannot change under a checkpoint; the schedule, the cadence of evaluations and
  logs, and the length of the run can.
"""
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the lock file alone, with a pid check
    fcntl = None

LOCK_NAME = "run.lock"
CKPT_NAME = "ckpt.safetensors"
METRICS_NAME = "metrics.jsonl"

# TrainConfig fields a resumed run must share with its checkpoint; every other field may change
# (and each change is logged). The model's config is compared field by field, all fixed.
FIXED_TRAIN_FIELDS = ("optimizer", "device")


class RunError(ValueError):
    """A run folder or a resume that cannot go ahead as asked: the message says why and what to do."""


# ----------------------------------------------------------------------------------------- lock
class RunLock:
    """An exclusive hold on a run folder for this process (re-entrant: acquire twice, release twice)."""

    _held = {}  # real path of the folder -> RunLock held by this process

    def __init__(self, folder, fd, path):
        self.folder, self.fd, self.path, self.count = folder, fd, path, 1

    @classmethod
    def acquire(cls, folder, log=print):
        folder = Path(folder)
        key = os.path.realpath(folder)
        if key in cls._held:
            cls._held[key].count += 1
            return cls._held[key]
        path = folder / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            holder = _read_holder(fd)
            if not _try_flock(fd, holder):
                os.close(fd)
                raise RunError(f"{folder} is in use by another run ({_describe(holder)}); wait for it to "
                               "finish, stop it, or pass another --out-dir")
            # its holder may have removed the file between our open and our flock: lock the new one
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if holder:
            log(f"note: {folder} had a stale lock from {_describe(holder)}, a process that is gone; "
                "taking it over")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        lock = cls._held[key] = cls(folder, fd, path)
        lock.key = key
        return lock

    def release(self):
        self.count -= 1
        if self.count > 0 or self.fd is None:
            return
        del RunLock._held[self.key]
        try:
            os.unlink(self.path)  # while still holding it: a waiting opener then sees another inode
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None
        if getattr(self, "created", False):  # a run that stopped before writing anything leaves no folder
            try:
                self.folder.rmdir()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd):
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return {"pid": None, "host": "?", "started": "? (unreadable lock file)"}


def _try_flock(fd, holder):
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
    if not holder or holder.get("host") != socket.gethostname():  # pragma: no cover
        return True
    try:  # pragma: no cover
        os.kill(int(holder["pid"]), 0)
        return False
    except (OSError, TypeError, ValueError):  # pragma: no cover
        return True


def _describe(holder):
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


# ------------------------------------------------------------------------------ the folder itself
def check_writable(folder):
    """Fail now, not after hours of training, if the checkpoint could not be written."""
    probe = Path(folder) / f".write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
        os.replace(probe, probe)  # the save renames into place: that must work too
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write into {folder} ({e.strerror or e}); pass a writable --out-dir") from None


def open_run_dir(out_dir, resume=False, overwrite=False, log=print):
    """Lock out_dir (creating it), check it is writable and that the run asked for fits what is
    in it: a fresh run must not bury a checkpoint, a resume needs one. Returns the RunLock."""
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other: continue the run, or start over")
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--out-dir {out_dir} is a file, not a folder")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create --out-dir {out_dir} ({e.strerror or e})") from None
    check_writable(out_dir)
    lock = RunLock.acquire(out_dir, log=log)
    lock.created = getattr(lock, "created", False) or created
    try:
        if resume and not (out_dir / CKPT_NAME).exists():
            raise RunError(f"--resume: no checkpoint at {out_dir / CKPT_NAME}")
        if not resume and not overwrite and (out_dir / CKPT_NAME).exists():
            raise RunError(f"{out_dir} already holds a run's checkpoint ({CKPT_NAME}); pass --resume to "
                           "continue it, --overwrite to replace it, or another --out-dir")
    except RunError:
        lock.release()
        raise
    return lock


def clear_old_run(out_dir):
    """A fresh run (--overwrite, or a folder with no checkpoint): drop the old checkpoint and metrics."""
    for name in (CKPT_NAME, METRICS_NAME):
        try:
            (Path(out_dir) / name).unlink()
        except FileNotFoundError:
            pass


# -------------------------------------------------------------------------------------- metrics
def trim_metrics(path, step):
    """Keep the records of steps <= step (the checkpoint's), so a resumed run does not log a step
    twice after a crash that came between a metrics line and its checkpoint. A line cut short by
    a kill is dropped too, and so is any line that is not one of the trainer's records (not
    UTF-8, not JSON, not an object with a whole-number step). Rewritten atomically; returns the
    number of lines dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # cut short, not UTF-8, an integer too long to read
            rec = None
        record_step = rec.get("step") if isinstance(rec, dict) else None
        if not isinstance(record_step, int) or isinstance(record_step, bool) or record_step > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(tmp, path)
    return dropped


# --------------------------------------------------------------------------------------- resume
def resume_changes(saved_train, saved_model, train, model):
    """(refused, allowed): lists of (field, saved value, asked value) where the configs differ."""
    refused, allowed = [], []
    for key in sorted(set(saved_model) | set(model)):
        if saved_model.get(key) != model.get(key):
            refused.append((f"model.{key}", saved_model.get(key), model.get(key)))
    for key in sorted(set(saved_train) | set(train)):
        if key in ("model", "out_dir") or saved_train.get(key) == train.get(key):
            continue
        (refused if key in FIXED_TRAIN_FIELDS else allowed).append((key, saved_train.get(key), train.get(key)))
    return refused, allowed


def check_resume(saved_train, saved_model, train, model, log=print):
    """Refuse a resume whose model or optimizer differs from the checkpoint's, naming each field;
    log each field that may change and did."""
    refused, allowed = resume_changes(saved_train or {}, saved_model or {}, train, model)
    if refused:
        fields = "; ".join(f"{k}: checkpoint {a!r}, asked {b!r}" for k, a, b in refused)
        raise RunError(f"cannot resume with a different model or optimizer ({fields}); drop those flags "
                       "or start a new run (--overwrite, or another --out-dir)")
    for key, a, b in allowed:
        log(f"resume: {key} changes from {a!r} to {b!r}")


# ---------------------------------------------------------------------------------- interrupts
class StopOnSignal:
    """Turn SIGINT (Ctrl-C) and SIGTERM into a request: `requested` becomes True and the training
    loop stops at the next step boundary, where model, optimizer, RNGs and step agree. A second
    Ctrl-C raises KeyboardInterrupt at once (the last checkpoint stays as it was).

    Signals reach Python only in the main thread; elsewhere this does nothing."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.requested = None  # the name of the signal that asked to stop
        self._old = {}

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested and name == "SIGINT":
            raise KeyboardInterrupt
        self.requested = self.requested or name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
