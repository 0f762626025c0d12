"""The training loop shared by examples/train_shakespeare.py and `python -m tinygrad_llm train`.

    cfg = TrainConfig(data="shakespeare.bin", out_dir="out/run", model={"n_layer": 4, ...})
    summary = Trainer(cfg).run()          # or .run(resume=True) to continue from out_dir

Per step: B x T windows (times grad_accum micro-batches), forward, backward, clip the global
gradient norm, optimizer step with the scheduled learning rate. Every log_every steps a line
(step, loss, lr, ms/step, tokens/s) and a JSON line in <out_dir>/metrics.jsonl; every
eval_every steps the loss on a fixed set of validation batches and its bits per byte
(loss in nats x tokens / (bytes x ln 2)), which compares runs across tokenizers.

Checkpoints (<out_dir>/ckpt.safetensors, see checkpoint.py) hold the weights, the optimizer
state, the RNG state of initialisation/dropout, the data sampler's state (its RNG state, or its
position in a shard folder: shard_data.py) and the step, so a resumed run draws the same batches
and produces bit-identical losses. Ctrl-C (or SIGTERM) stops the run at the next step boundary
and saves one; a non-finite loss stops the run and leaves the last good checkpoint untouched.
The run folder's lock, its guards and the resume checks live in runs.py.

Under `mpirun -n N` (distributed.py, data_parallel.py) each rank draws batch_size windows of its
own (its sampler seeded by rank), so the global batch is N x batch_size; the gradients are
averaged over ranks before clipping, evaluation batches are shared out and their losses averaged,
and rank 0 alone prints, writes metrics.jsonl and the checkpoint, which holds every rank's RNG
states (a resumed N-rank run is exact). A world of one is the single-process run, unchanged.
"""
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import backend, distributed, parallel
from .autocast import check_training_dtype, training_precision
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DictConfig, check_range
from .cuda import syncs
from .data import bits_per_byte, document_segments, open_token_data
from .data_parallel import DataParallel, seed_rank, share_cores
from .models import GPT, GPTConfig
from .runs import (CKPT_NAME, METRICS_NAME, RunError, StopOnSignal, check_resume, clear_old_run,
                   open_run_dir, trim_metrics)
from .tensor import Tensor


@dataclass
class TrainConfig(DictConfig):
    data: str = ""               # token file (.bin + .bin.json) or shard folder (tokenize encode)
    out_dir: str = "out/run"     # checkpoints and metrics.jsonl
    model: dict = field(default_factory=dict)  # GPTConfig fields; vocab_size defaults to the data's
    batch_size: int = 12
    grad_accum: int = 1          # micro-batches per optimizer step (their gradients add up)
    max_iters: int = 2000
    max_seconds: float = 0.0     # >0: also stop after this much wall time in the loop; the schedule
                                 # then runs on whichever of steps or time is further along
    optimizer: str = "adamw"     # or "muon": Muon on the blocks' matrices, AdamW on the rest
    lr: float = 1e-3             # peak learning rate (AdamW's; the AdamW part under "muon")
    muon_lr: float = 0.02        # Muon's peak learning rate
    muon_momentum: float = 0.95
    muon_ns_schedule: str = "jordan"  # Newton-Schulz coefficients: "jordan" or "polar_express"
    min_lr_ratio: float = 0.1    # the schedule ends at lr * min_lr_ratio
    warmup_iters: int = 100
    schedule: str = "cosine"     # "cosine" (warmup + cosine), "wsd" (warmup, stable, decay), "constant"
    decay_frac: float = 0.2      # wsd: the fraction of steps spent decaying (linearly) at the end
    weight_decay: float = 0.1    # on matrices only: biases and norm gains are not decayed
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0       # 0 turns clipping off
    eval_every: int = 250
    eval_iters: int = 20         # validation batches per evaluation (the same batches each time)
    final_eval: str = "full"     # "full": the last evaluation covers the whole val split; "sample"
    log_every: int = 10
    checkpoint_every: int = 0    # 0: a checkpoint at each evaluation and at the end
    seed: int = 1337
    device: str = "cpu"
    dtype: str = "fp32"          # "bf16": bfloat16 matmuls and attention under autocast (GPU only)
    val_fraction: float = 0.1
    health_every: int = 0        # >0: study.health.gradient_health every N steps, in metrics["health"]
    shards: int = 0              # CPU: each micro-batch's rows in this many shards on their own
                                 # threads (parallel.py); 0: one per core
    zero: int = 0                # under mpirun: 1 shards the optimizer state across ranks (ZeRO-1)
    doc_mask: bool = False       # attention stays within each document (<|endoftext|> separates
                                 # them; the data must say its id: a shard folder does)
    eval_task: str = ""          # a benchmark file (evaluate.py: multiple choice, exact match) ...
    eval_task_every: int = 0     # ... scored every this many steps (0: never), with the tokenizer
                                 # Trainer.eval_tokenizer or <out_dir>/tokenizer.json

    # field -> the interval validate() accepts (the CLI checks its numeric flags against it too)
    LIMITS = {"batch_size": "[1, inf)", "grad_accum": "[1, inf)", "max_iters": "[1, inf)",
              "max_seconds": "[0, inf)", "lr": "(0, inf)", "muon_lr": "(0, inf)", "muon_momentum": "[0, 1)",
              "min_lr_ratio": "[0, 1]", "warmup_iters": "[0, inf)", "decay_frac": "[0, 1]",
              "weight_decay": "[0, inf)", "beta1": "[0, 1)", "beta2": "[0, 1)", "grad_clip": "[0, inf)",
              "eval_every": "[0, inf)", "eval_iters": "[1, inf)", "log_every": "[1, inf)",
              "checkpoint_every": "[0, inf)", "val_fraction": "(0, 1)", "health_every": "[0, inf)",
              "shards": "[0, inf)", "eval_task_every": "[0, inf)"}

    def validate(self):
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"TrainConfig: optimizer={self.optimizer!r}; expected 'adamw' or 'muon'")
        if self.muon_ns_schedule not in ("jordan", "polar_express"):
            raise ValueError(f"TrainConfig: muon_ns_schedule={self.muon_ns_schedule!r}; expected 'jordan' "
                             "or 'polar_express'")
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ValueError(f"TrainConfig: schedule={self.schedule!r}; expected cosine, wsd or constant")
        if self.final_eval not in ("full", "sample"):
            raise ValueError(f"TrainConfig: final_eval={self.final_eval!r}; expected 'full' or 'sample'")
        for name, interval in self.LIMITS.items():
            check_range(f"TrainConfig.{name}", getattr(self, name), interval)
        if self.eval_task_every and not self.eval_task:
            raise ValueError("TrainConfig: eval_task_every needs eval_task, the benchmark file to score")
        if self.zero not in (0, 1):
            raise ValueError(f"TrainConfig: zero must be 0 (off) or 1 (ZeRO-1), got {self.zero}")
        try:
            check_training_dtype(self.dtype, self.device)
        except ValueError as e:
            raise ValueError(f"TrainConfig: {e}") from None
        if self.schedule == "wsd" and not (0.0 <= self.decay_frac < 1.0 or self.warmup_iters == 0):
            raise ValueError(f"TrainConfig: wsd with a warmup needs 0 <= decay_frac < 1, got {self.decay_frac}")


def lr_schedule(cfg):
    """The step -> multiplier-of-the-peak-lr function of cfg.schedule, from optim/schedules.py.

    A run shorter than its warmup never leaves the warmup: the schedule is stretched to fit it.
    """
    from .optim import schedules
    w = cfg.warmup_iters
    if cfg.schedule == "constant":
        return schedules.constant(w)
    total = max(cfg.max_iters, w + 1)
    if cfg.schedule == "wsd":
        while total - round(cfg.decay_frac * total) < w:  # the decay may not start inside the warmup
            total += 1
        return schedules.wsd(w, total, decay=cfg.decay_frac, floor=cfg.min_lr_ratio)
    return schedules.warmup_cosine(w, total, floor=cfg.min_lr_ratio)


def lr_factor(step, cfg, time_frac=0.0, schedule=None):
    """The multiple of the peak lr at `step` (0-based): lr_schedule(cfg), or `schedule` if given.

    time_frac (the part of cfg.max_seconds used) moves the decay along as if max_iters were
    spread over the time budget, so a run cut short by time still ends at the minimum lr.
    """
    if step >= cfg.warmup_iters:
        step = max(step, time_frac * cfg.max_iters)
    return (schedule or lr_schedule(cfg))(step)


def build_optimizer(model, cfg):
    """AdamW (weight decay on matrices only), or Muon on the hidden matrices + AdamW on the rest.

    Every param group remembers its peak lr as "base_lr"; the schedule scales it each step.
    """
    from . import optim
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        opt = optim.AdamW(optim.param_groups_for_weight_decay(model, cfg.weight_decay),
                          lr=cfg.lr, betas=betas)
    else:
        opt = optim.muon_hybrid(model, muon_lr=cfg.muon_lr, adamw_lr=cfg.lr, momentum=cfg.muon_momentum,
                                adamw_betas=betas, adamw_weight_decay=cfg.weight_decay,
                                ns_schedule=cfg.muon_ns_schedule,
                                map_fn=parallel.on_cores)  # Newton-Schulz: one matrix per core
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return opt


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Trainer:
    def __init__(self, cfg, data=None, decode_bytes=None, log=None):
        """cfg: TrainConfig (or dict). data: a TokenData (else cfg.data is opened). decode_bytes:
        ids -> bytes, to count the validation split's bytes exactly for bits per byte."""
        self.cfg = cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        cfg.validate()
        self.world = distributed.init(cfg.device)
        distributed.check_same(self.world, cfg.to_dict())
        share_cores(self.world)
        self.log = log or (lambda msg: print(msg, flush=True))
        if not self.world.is_main:  # rank 0 alone prints
            self.log = lambda msg: None
        backend.keep_freed_memory()  # a step's temporaries stay mapped between steps (see backend)
        self.lr_schedule = lr_schedule(cfg)
        backend.manual_seed(cfg.seed)
        self.data = data if data is not None else open_token_data(
            cfg.data, cfg.val_fraction, seed=cfg.seed, rank=self.world.rank, world_size=self.world.size)
        model_cfg = dict(cfg.model)
        if "vocab_size" not in model_cfg:
            model_cfg["vocab_size"] = int(self.data.meta.get("vocab_size") or 0) or None
            if model_cfg["vocab_size"] is None:
                raise ValueError("TrainConfig.model needs vocab_size (the data does not say)")
        self.model_config = GPTConfig.from_dict(model_cfg)
        self.eot_id = self.data.meta.get("eot_id")
        if cfg.doc_mask and self.eot_id is None:
            raise ValueError("doc_mask needs the id of <|endoftext|>, which this data does not give; "
                             "encode the corpus into shards (`tokenize encode --out DIR`)")
        self.model = GPT(self.model_config)
        if cfg.device != "cpu":
            self.model.to(cfg.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.params = list(self.model.parameters())
        self.dp = DataParallel(self.world, self.model, self.optimizer, zero=cfg.zero)
        self.dp.broadcast_parameters()
        seed_rank(self.world, cfg.seed, self.data)
        self.out_dir = Path(cfg.out_dir)
        self.bytes_per_token = self.data.bytes_per_token("val", decode=decode_bytes)
        self.decode_bytes = decode_bytes
        self.step = 0
        self.elapsed = 0.0  # training seconds, carried across resumes
        self.wall = 0.0  # wall seconds in the loop (evaluations included), carried across resumes
        self._run_start = time.perf_counter()
        self.last_val = None
        self.run_info = {}  # JSON-able facts the caller wants in each checkpoint (the tokenizer's digest)
        self.eval_tokenizer = None  # for cfg.eval_task; None: <out_dir>/tokenizer.json, read when first needed
        if cfg.eval_task and not Path(cfg.eval_task).exists():
            raise ValueError(f"TrainConfig.eval_task: no file at {cfg.eval_task}")
        # the evaluation batches are the same at every evaluation, drawn from their own generator
        T = self.model_config.block_size
        eval_rng = np.random.default_rng(cfg.seed + 1)
        self.eval_batches = [self.data.get_batch("val", cfg.batch_size, T, rng=eval_rng)
                             for _ in range(cfg.eval_iters)]

    # ------------------------------------------------------------------------------ checkpoints
    @property
    def ckpt_path(self):
        return self.out_dir / CKPT_NAME

    def save(self):
        """Every rank calls it (the RNG states and ZeRO's optimizer blocks are gathered); rank 0 writes."""
        rng = {"global": backend.get_rng_state(), "data": self.data.state()}
        if self.cfg.device == "cuda":  # the GPU's dropout stream (seed and counter)
            rng["cuda"] = backend.get_cuda_rng_state()
        if self.world.size > 1:  # every rank's, so a resumed N-rank run draws what it would have
            rng["ranks"] = self.world.allgather_json(rng)
        optim_state = self.dp.optimizer_state_dict()
        if not self.world.is_main:
            return
        wall = self.wall + time.perf_counter() - self._run_start
        extra = {"train_config": self.cfg.to_dict(), "elapsed_s": self.elapsed, "wall_s": wall,
                 "last_val": self.last_val, **self.run_info}
        save_checkpoint(self.ckpt_path, self.model.state_dict(), optim_state,
                        step=self.step, config=self.model_config.to_dict(), rng=rng, extra=extra)

    def load(self, path=None):
        """Continue from a checkpoint: refused (naming each field) if its model or optimizer
        differs from this run's; other changed settings (lr, max_iters, ...) are logged."""
        ck = load_checkpoint(path or self.ckpt_path)
        check_resume((ck["extra"] or {}).get("train_config"), ck["config"], self.cfg.to_dict(),
                     self.model_config.to_dict(), log=self.log)
        self.model.load_state_dict(ck["model"])
        self.dp.load_optimizer_state_dict(ck["optimizer"])
        rng = ck["rng"]
        ranks = rng.get("ranks", [rng])
        if len(ranks) != self.world.size:
            raise RunError(f"checkpoint written by {len(ranks)} rank(s), resumed on {self.world.size}: "
                             f"each rank's data order is in the checkpoint; resume on {len(ranks)}")
        backend.set_rng_state(ranks[self.world.rank]["global"])
        if "cuda" in ranks[self.world.rank]:
            backend.set_cuda_rng_state(ranks[self.world.rank]["cuda"])
        self.data.set_state(ranks[self.world.rank]["data"])
        self.step = ck["step"]
        self.elapsed = ck["extra"].get("elapsed_s", 0.0)
        self.wall = ck["extra"].get("wall_s", 0.0)
        self.last_val = ck["extra"].get("last_val")

    # ------------------------------------------------------------------------------- evaluation
    def evaluate(self, full=False):
        """Mean validation loss (nats/token) and bits per byte."""
        from .autograd import no_grad
        self.model.eval()
        T, B = self.model_config.block_size, self.cfg.batch_size
        losses, weights = [], []
        with no_grad(), training_precision(self.cfg.dtype, self.cfg.device):
            if full:
                val = self.data.splits["val"]  # may be a memmap far larger than memory: read by rows
                n = (len(val) - 1) // T
                for i in range(self.world.rank * B, n, self.world.size * B):  # this rank's share
                    rows = min(B, n - i)
                    chunk = np.asarray(val[i * T:(i + rows) * T + 1], dtype=np.int64)
                    x, y = chunk[:-1].reshape(rows, T), chunk[1:].reshape(rows, T)  # (rows, T)
                    loss = self._loss(self._dev(x), self._dev(y))
                    losses.append(loss.item())
                    weights.append(rows)
            else:
                for x, y in self.eval_batches[self.world.rank::self.world.size]:
                    loss = self._loss(self._dev(x), self._dev(y))
                    losses.append(loss.item())
                    weights.append(1)
        self.model.train()
        if self.world.size > 1:  # the mean over every rank's batches: the same as one process's
            loss_sum, weight_sum = self.world.sum([float(np.dot(losses, weights)), float(sum(weights))])
            val_loss = loss_sum / weight_sum
        else:
            val_loss = float(np.average(losses, weights=weights))
        if full and self.decode_bytes is not None:  # the bytes of exactly the tokens scored, by pieces
            piece = 1 << 20
            n_bytes = sum(len(self.decode_bytes(np.asarray(val[lo + 1:min(lo + piece, n * T) + 1]).tolist()))
                          for lo in range(0, n * T, piece))
            return val_loss, bits_per_byte(val_loss, n * T, n_bytes)
        return val_loss, val_loss / (self.bytes_per_token * math.log(2))

    def evaluate_task(self):
        """cfg.eval_task's metrics (accuracy, acc_norm or exact match, and the count) for the model now."""
        from .evaluate import evaluate_task
        if self.eval_tokenizer is None:
            from .tokenizer import load_tokenizer
            self.eval_tokenizer = load_tokenizer(self.out_dir / "tokenizer.json")
        self.model.eval()
        try:
            results = evaluate_task(self.model, self.eval_tokenizer, self.cfg.eval_task)
        finally:
            self.model.train()
        return {k: results[k] for k in ("acc", "acc_norm", "exact_match", "bits_per_byte", "n") if k in results}

    def _loss(self, x, y):
        """The model's mean loss on (x, y); with doc_mask each document attends only to itself."""
        if not self.cfg.doc_mask:
            return self.model(x, y)[1]
        ids = x.data if isinstance(x, Tensor) else x
        return self.model(x, y, segment_ids=document_segments(ids, self.eot_id))[1]

    def _dev(self, arr):
        return Tensor(backend.to_device(arr, self.cfg.device) if self.cfg.device != "cpu" else arr)

    # ----------------------------------------------------------------------------------- the loop
    def _log_data_parallel(self):
        mine, full = self.dp.optimizer_memory()
        line = (f"data parallel: {self.world.size} rank(s) x {self.cfg.batch_size} rows"
                f"{' x ' + str(self.cfg.grad_accum) + ' micro-batches' if self.cfg.grad_accum > 1 else ''}")
        if self.cfg.zero:
            per_rank = self.world.allgather_json(mine)
            line += (f"; ZeRO-1 optimizer state per rank {', '.join(f'{m / 2**20:.2f}' for m in per_rank)} MiB "
                     f"(without ZeRO {full / 2**20:.2f} MiB each)")
        self.log(line)

    def _health(self):
        try:
            from .study.health import gradient_health
        except ImportError:
            return None
        try:
            return gradient_health(self.model, self.optimizer)
        except Exception as e:  # noqa: BLE001 - a diagnostic must never kill a run
            return {"error": f"{type(e).__name__}: {e}"}

    def train_step(self):
        """One optimizer step; returns (loss, health): the mean loss of its micro-batches (a float,
        the same on every rank) and gradient_health's report on steps that take one, else None."""
        cfg, T = self.cfg, self.model_config.block_size
        factor = lr_factor(self.step, cfg, self._time_frac(), self.lr_schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        total = 0.0
        for _ in range(cfg.grad_accum):
            x, y = self.data.get_batch("train", cfg.batch_size, T)
            with training_precision(cfg.dtype, cfg.device):
                lv = parallel.loss_backward(self._loss, self._dev(x), self._dev(y),
                                            shards=cfg.shards or None, scale=1.0 / cfg.grad_accum)
            total += lv
        loss = self.world.mean(total / cfg.grad_accum)  # over ranks: every rank sees the same value
        if isinstance(loss, float):
            # a non-finite loss stops every rank here, before the optimizer can apply its gradients
            self._check_finite(loss)
        # else on GPUs: the loss stays a device scalar (averaged over NCCL; a host read here would
        # stall every step); it is read, and checked, when it is logged, on every rank at the same
        # step, and no checkpoint is saved before that
        self.dp.sync_gradients()
        health = self._health() if cfg.health_every and self.step % cfg.health_every == 0 else None
        if cfg.grad_clip > 0:
            self.dp.clip_(cfg.grad_clip)
        self.dp.step()
        self.optimizer.zero_grad()
        return loss, health

    def _check_finite(self, loss):
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss} at step {self.step}: training diverged (try a "
                                   f"lower lr than {self.cfg.lr}); the last good checkpoint is kept")

    def _time_frac(self):
        if not self.cfg.max_seconds:
            return 0.0
        frac = (self.wall + time.perf_counter() - self._run_start) / self.cfg.max_seconds
        if self.world.size > 1:  # rank 0's clock for all: the lr and the stopping step must agree
            frac = self.world.sum(frac if self.world.is_main else 0.0)
        return frac

    def run(self, resume=False, overwrite=False):
        """Train to max_iters; returns a summary dict (status, step, val_loss, val_bpb, ...).

        The run folder is locked for the run (runs.py). A fresh run refuses a folder that holds a
        checkpoint unless overwrite; resume continues from it. Ctrl-C or SIGTERM stop the run at
        the next step boundary with a checkpoint (status "interrupted"); a second Ctrl-C stops it
        at once without one (status "aborted"), the last checkpoint left as it was.
        """
        lock = self._open_run_dir(resume, overwrite)
        try:
            self._start(resume)
            with StopOnSignal() as stop:
                return self._loop(stop)
        finally:
            if lock is not None:
                lock.release()

    def _open_run_dir(self, resume, overwrite):
        """Rank 0 locks and checks the folder; under mpirun every rank learns whether it may go on."""
        lock, error = None, None
        if self.world.is_main:
            try:
                lock = open_run_dir(self.out_dir, resume=resume, overwrite=overwrite, log=self.log)
            except RunError as e:
                if self.world.size == 1:
                    raise
                error = str(e)
        if self.world.size > 1:
            error = self.world.allgather_json(error)[0]
            if error is not None:
                if lock is not None:
                    lock.release()
                raise RunError(error)
        return lock

    def _start(self, resume):
        metrics_path = self.out_dir / METRICS_NAME
        if resume:
            self.load()
            dropped = trim_metrics(metrics_path, self.step) if self.world.is_main else 0
            self.log(f"resumed from {self.ckpt_path} at step {self.step}"
                     + (f" ({dropped} metrics records past it dropped)" if dropped else ""))
        elif self.world.is_main:
            clear_old_run(self.out_dir)
        T = self.model_config.block_size
        self.log(f"model: {self.model.num_parameters():,} parameters, {self.model_config.n_layer} layers, "
                 f"{self.model_config.n_embd} wide, vocab {self.model_config.vocab_size}, T={T}; "
                 f"{self._tokens_per_step():,} tokens/step, {self.cfg.max_iters} steps, {self.cfg.optimizer}")
        if self.dp.active:
            self._log_data_parallel()
        if self.step >= self.cfg.max_iters:
            self.log(f"nothing to train: the checkpoint is at step {self.step} and max_iters is "
                     f"{self.cfg.max_iters} (raise --max-iters to train further)")

    def _tokens_per_step(self):
        cfg = self.cfg
        return cfg.batch_size * self.model_config.block_size * cfg.grad_accum * self.world.size  # the global batch

    def _stop_requested(self, stop):
        """Whether to stop now; under mpirun the ranks agree (a signal may reach them at different steps)."""
        if self.world.size == 1:
            return stop.requested is not None
        return self.world.sum(1.0 if stop.requested else 0.0) > 0

    def _loop(self, stop):
        cfg = self.cfg
        tokens_per_step = self._tokens_per_step()
        status, window, window_t = "done", [], time.perf_counter()
        self._run_start = window_t
        saved_step = None
        # rank 0 alone writes
        with open(self.out_dir / METRICS_NAME if self.world.is_main else os.devnull, "a") as metrics:
            def emit(record):
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
            try:
                while self.step < cfg.max_iters:
                    t0 = time.perf_counter()
                    with syncs.deferred_checks():  # device value checks wait for the logged read
                        loss, health = self.train_step()
                    dt = time.perf_counter() - t0
                    self.elapsed += dt
                    self.step += 1
                    window.append(dt)
                    last = self.step == cfg.max_iters or self._time_frac() >= 1.0
                    do_eval = (cfg.eval_every and self.step % cfg.eval_every == 0) or last
                    val_loss = val_bpb = None
                    if do_eval:
                        val_loss, val_bpb = self.evaluate(full=last and cfg.final_eval == "full")
                        self.last_val = {"step": self.step, "val_loss": val_loss, "val_bpb": val_bpb}
                    task = self.evaluate_task() if cfg.eval_task_every and (
                        self.step % cfg.eval_task_every == 0 or last) else None
                    if self.step % cfg.log_every == 0 or do_eval or health is not None or task:
                        t_read = time.perf_counter()
                        loss = syncs.read(loss)  # on the GPU the step's one host sync
                        self._check_finite(loss)
                        # on the GPU the steps' time ends when the queued work does: the read's
                        # wait is theirs, so the window is averaged, not its median taken
                        waited = time.perf_counter() - t_read
                        if window and self.cfg.device != "cpu":
                            window[-1] += waited
                            self.elapsed += waited
                        average = np.mean if self.cfg.device != "cpu" else np.median
                        ms = 1000 * float(average(window)) if window else 0.0
                        tps = tokens_per_step / (ms / 1000) if ms else 0.0
                        lrs = self._learning_rates()
                        lr = self.optimizer.param_groups[0]["lr"]
                        line = (f"step {self.step:5d} | loss {loss:.4f} | lr {lr:.2e} | "
                                f"{ms:6.1f} ms/step | {tps:8,.0f} tok/s")
                        if val_loss is not None:
                            line += f" | val {val_loss:.4f} ({val_bpb:.3f} bits/byte)"
                        if task:
                            line += " | " + ", ".join(f"{k} {v:.4f}" for k, v in task.items() if k != "n")
                        self.log(line)
                        record = {"step": self.step, "train_loss": loss, "val_loss": val_loss,
                                  "val_bpb": val_bpb, "lr": lr, "lrs": lrs, "tokens_per_s": tps,
                                  "ms_per_step": ms, "elapsed_s": round(self.elapsed, 3)}
                        if health is not None:
                            record["health"] = health
                        if task:
                            record["eval_task"] = task
                        emit(record)
                        window = []
                    if do_eval or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                        if not isinstance(loss, float):  # never save a step whose loss is unread
                            loss = syncs.read(loss)
                            self._check_finite(loss)
                        self.save()
                        saved_step = self.step
                    if last:
                        break
                    if self._stop_requested(stop):  # the step is whole: weights, optimizer, RNGs, counter agree
                        if saved_step != self.step:
                            if not isinstance(loss, float):  # never save a step whose loss is unread
                                loss = syncs.read(loss)
                                self._check_finite(loss)
                            self.save()
                        self.log(f"interrupted ({stop.requested or 'another rank'}): checkpoint saved at step "
                                 f"{self.step} to {self.ckpt_path} (continue with --resume)")
                        status = "interrupted"
                        break
            except KeyboardInterrupt:
                if self.world.size > 1:  # the ranks stopped at different points: no collective save
                    self.log(f"aborted: the last checkpoint in {self.out_dir} stands")
                    self.world.abort(130)
                self.log(f"aborted by a second Ctrl-C: no checkpoint written for step {self.step}; "
                         f"{self.ckpt_path} holds the last one saved")
                status = "aborted"
            except TrainingDiverged as e:
                self.log(f"stopped: {e}")
                status = "diverged"
        last_val = self.last_val or {}
        return {"status": status, "step": self.step, "elapsed_s": self.elapsed,
                "val_loss": last_val.get("val_loss"), "val_bpb": last_val.get("val_bpb"),
                "val_step": last_val.get("step"), "checkpoint": str(self.ckpt_path),
                "wall_s": time.perf_counter() - window_t}

    def _learning_rates(self):
        """{optimizer name: its current lr}: Muon and AdamW under "muon" run at their own rates."""
        parts = getattr(self.optimizer, "optimizers", None) or [self.optimizer]
        return {type(o).__name__: o.param_groups[0]["lr"] for o in parts if o is not None and o.param_groups}


def load_model(path, device="cpu", pos=None, block_size=None, rope_scaling=None):
    """(GPT, checkpoint dict) from a training checkpoint, ready for generation. pos: the scheme the
    caller expects (an error unless it is the checkpoint's); block_size, rope_scaling: run at a
    longer context than trained (GPT.extend_context)."""
    from .models.positions import check_checkpoint_pos
    ck = load_checkpoint(path)
    check_checkpoint_pos(ck["config"].get("pos", "learned"), pos)
    model = GPT(GPTConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    if block_size is not None or rope_scaling is not None:
        model.extend_context(block_size or model.config.block_size, rope_scaling)
    if device != "cpu":
        model.to(device)
    model.eval()
    return model, ck


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `python -m tinygrad_llm train` or examples/train_shakespeare.py")
