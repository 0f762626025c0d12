"""Tokens/s of data parallelism over 2 MPI processes (one thread each) against one process whose
batch runs as row shards on 2 threads (parallel.py, the default), same global batch, same run.

    python benchmarks/train_dist.py                        # both configs, 3 alternating rounds
    python benchmarks/train_dist.py --config small --rounds 5 --steps 40
    python benchmarks/train_dist.py --steps 3 --warmup 1 --rounds 1   # a smoke run

Configs (as benchmarks/train_cpu.py): "small" = nanoGPT's CPU Shakespeare model (4 layers, 4
heads, 128 wide, T=64, global batch 12, vocab 65); "medium" = its GPU recipe's model (6 layers,
6 heads, 384 wide, T=256, global batch 12). Both sides time Trainer.train_step, the step the
training loop runs (forward, backward, gradient averaging, clip, AdamW), on the same random
windows of a synthetic token stream. Under MPI each rank has 6 of the 12 rows, BLAS and the
optimizer at one thread; the all-reduce time is that of the gradient all-reduce (and the loss's),
measured on rank 0, waiting for the slower rank included.

Why two processes may win: the thread shards share one GIL, and a shard that waits for it leaves
its core idle; two processes never wait for each other except in the all-reduce.
Ratio = MPI tokens/s / threads tokens/s (> 1: the processes are faster), from the medians of the
rounds. mpirun comes from `pip install ".[dist]"` (MPICH), found beside this Python or on PATH.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),
    "medium": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=12, vocab_size=65),
}


def make_trainer(name, batch_size, shards):
    from tinygrad_llm.data import TokenData
    from tinygrad_llm.train import TrainConfig, Trainer
    c = CONFIGS[name]
    ids = np.random.default_rng(0).integers(0, c["vocab_size"], 200_000).astype(np.uint16)
    data = TokenData(ids, source_bytes=len(ids), seed=0)
    model = {k: c[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}
    cfg = TrainConfig(model={**model, "dropout": 0.0}, batch_size=batch_size, max_iters=10 ** 6,
                      warmup_iters=10, lr=1e-3, beta2=0.99, eval_iters=1, shards=shards, out_dir="unused")
    return Trainer(cfg, data=data, log=lambda m: None)


def time_steps(trainer, steps, warmup):
    """(ms per step, all-reduce ms per step): medians over `steps` after `warmup` steps."""
    world = trainer.world
    comm = []
    sync, mean = trainer.dp.sync_gradients, world.mean

    def timed(fn):
        def run(*a):
            t0 = time.perf_counter()
            out = fn(*a)
            comm[-1] += time.perf_counter() - t0
            return out
        return run
    trainer.dp.sync_gradients, world.mean = timed(sync), timed(mean)
    times = []
    for i in range(warmup + steps):
        comm.append(0.0)
        world.barrier()  # every step starts together: the wait for the slower rank is in the step
        t0 = time.perf_counter()
        trainer.train_step()
        trainer.step += 1
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    world.mean = mean
    return 1000 * float(np.median(times)), 1000 * float(np.median(comm[warmup:]))


def worker(args):
    """One side of one round; prints a JSON line (rank 0)."""
    from tinygrad_llm import distributed
    world = distributed.init()
    c = CONFIGS[args.config]
    rows = c["batch_size"] // world.size
    trainer = make_trainer(args.config, rows, shards=1 if world.size > 1 else 2)
    ms, comm_ms = time_steps(trainer, args.steps, args.warmup)
    tokens = rows * world.size * c["block_size"]
    if world.is_main:
        print(json.dumps({"ranks": world.size, "ms": ms, "allreduce_ms": comm_ms,
                          "tokens_per_s": tokens / (ms / 1000)}), flush=True)


def find_mpirun():
    here = Path(sys.executable).parent / "mpirun"
    return str(here) if here.exists() else shutil.which("mpirun")


def run_side(config, ranks, steps, warmup):
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", "--config", config,
          "--steps", str(steps), "--warmup", str(warmup)]
    env = dict(os.environ)
    if ranks > 1:
        env.update(TINYGRAD_LLM_SHARDS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   TINYGRAD_LLM_OPTIM_THREADS="1")
        mpirun = find_mpirun()
        if mpirun is None:
            raise SystemExit("no mpirun: pip install '.[dist]'")
        if "Open MPI" in subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
            me = ["--oversubscribe"] + me
        me = [mpirun, "-n", str(ranks)] + me
    out = subprocess.run(me, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(me)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=list(CONFIGS) + ["all"], default="all")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two sides")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    for name in (CONFIGS if args.config == "all" else [args.config]):
        c = CONFIGS[name]
        print(f"{name}: {c['n_layer']} layers x {c['n_embd']}, T={c['block_size']}, global batch "
              f"{c['batch_size']}; {args.rounds} rounds of {args.steps} steps", flush=True)
        rows = {1: [], 2: []}
        for r in range(args.rounds):
            for ranks in (1, 2):
                res = run_side(name, ranks, args.steps, args.warmup)
                rows[ranks].append(res)
                label = "1 process, 2 thread shards" if ranks == 1 else "mpirun -n 2, 1 thread each"
                print(f"  round {r + 1} {label:28s} {res['ms']:8.1f} ms/step {res['tokens_per_s']:9,.0f} tok/s"
                      + (f"  all-reduce {res['allreduce_ms']:.2f} ms/step" if ranks > 1 else ""), flush=True)
        tps = {k: float(np.median([x["tokens_per_s"] for x in v])) for k, v in rows.items()}
        comm = float(np.median([x["allreduce_ms"] for x in rows[2]]))
        step = float(np.median([x["ms"] for x in rows[2]]))
        print(f"  median: threads {tps[1]:,.0f} tok/s, MPI {tps[2]:,.0f} tok/s, ratio MPI/threads "
              f"{tps[2] / tps[1]:.2f}; all-reduce {comm:.2f} ms of a {step:.1f} ms step", flush=True)


if __name__ == "__main__":
    main()
