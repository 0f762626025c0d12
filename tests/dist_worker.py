"""What each MPI rank runs for tests/test_distributed.py: `mpirun -n 2 python tests/dist_worker.py
<scenario> <out_dir> [args]`. Rank 0 writes the results the test reads back."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinygrad_llm import distributed  # noqa: E402
from tinygrad_llm.train import TrainConfig, Trainer  # noqa: E402
from train_helpers import make_data  # noqa: E402 (this script's own folder)

MODEL = dict(block_size=8, n_layer=1, n_head=2, n_embd=16)
GRAD_MODEL = dict(block_size=8, n_layer=2, n_head=2, n_embd=16, vocab_size=13, dropout=0.0)
GRAD_ROWS = 6  # the global batch of the gradient check; each of 2 ranks takes 3 rows


def train_config(out_dir, **kw):
    base = dict(out_dir=str(out_dir), model=MODEL, batch_size=2, max_iters=8, warmup_iters=2,
                eval_every=4, eval_iters=4, log_every=1, seed=3, final_eval="sample", shards=1)
    base.update(kw)
    return TrainConfig(**base)


def grad_batch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 13, (GRAD_ROWS, 8))
    return x, np.roll(x, -1, axis=1)


def gradients(out, device="cpu"):
    """The float64 gradient of the mean loss over GRAD_ROWS rows, the rows split over the ranks
    (on the GPU the all-reduce goes through NCCL)."""
    from tinygrad_llm import backend, optim
    from tinygrad_llm.data_parallel import DataParallel
    from tinygrad_llm.models import GPT, GPTConfig
    from tinygrad_llm.tensor import Tensor
    world = distributed.init(device)
    backend.manual_seed(0)
    model = GPT(GPTConfig.from_dict(GRAD_MODEL), dtype=np.float64)
    if device != "cpu":
        model.to(device)
    opt = optim.AdamW(model.parameters())
    dp = DataParallel(world, model, opt)
    x, y = grad_batch()
    share = GRAD_ROWS // world.size
    rows = slice(world.rank * share, (world.rank + 1) * share)
    dev = (lambda a: Tensor(backend.to_device(a, device))) if device != "cpu" else Tensor
    _, loss = model(dev(x[rows]), dev(y[rows]))
    loss.backward()
    dp.sync_gradients()
    if world.is_main:
        np.savez(out / "grads.npz", **{n: backend.to_numpy(p.grad.data) for n, p in model.named_parameters()})


def nccl(out):
    """2 GPUs: each NCCL collective against its definition, then the gradient check over NCCL."""
    import cupy as cp
    world = distributed.init("cuda")
    r = world.rank
    buf = cp.full(5, r + 1.0, dtype=cp.float32)
    world.allreduce_(buf)
    assert buf.tolist() == [3.0] * 5, buf
    b = cp.arange(5, dtype=cp.float64) * (r + 1)  # sum over ranks: 3 x arange
    block = cp.empty(3 if r == 0 else 2, cp.float64)
    world.reduce_scatter(b, [3, 2], block)  # unequal blocks: the all-reduce fallback
    expected = [0.0, 3.0, 6.0] if r == 0 else [9.0, 12.0]
    assert block.tolist() == expected, block
    g = cp.where(cp.arange(4) // 2 == r, 10.0 + r, -1.0).astype(cp.float32)  # rank r owns 2 slots
    world.allgather_(g, [2, 2])
    assert g.tolist() == [10.0, 10.0, 11.0, 11.0], g
    w = cp.full(3, float(r), cp.float32)
    world.broadcast_(w, 1)
    assert w.tolist() == [1.0] * 3, w
    loss = cp.asarray(float(r), dtype=cp.float32)  # a device scalar, as the GPU step's loss is
    mean = world.mean(loss)
    assert isinstance(mean, cp.ndarray) and float(mean) == 0.5 and float(loss) == r, mean
    gradients(out, device="cuda")


def train(out, **kw):
    return Trainer(train_config(out, **kw), data=make_data(sampler_seed=kw.get("seed", 3))).run()


def main():
    scenario, out = sys.argv[1], Path(sys.argv[2])
    world = distributed.init()
    if scenario == "main":  # the checks that need no second launch, in one job
        gradients(out)
        train(out / "dp", final_eval="full")
        for opt in ("adamw", "muon"):
            for zero in (0, 1):
                t = Trainer(train_config(out / f"{opt}_zero{zero}", optimizer=opt, zero=zero, max_iters=5,
                                         eval_every=5), data=make_data(3))
                t.run()
                mem = world.allgather_json(t.dp.optimizer_memory()[0])
                if world.is_main:
                    (out / f"{opt}_zero{zero}" / "memory.json").write_text(json.dumps(mem))
        # a run with dropout whose step-4 checkpoint is kept aside for the resume test
        t = Trainer(train_config(out / "full", model={**MODEL, "dropout": 0.1}), data=make_data(3))
        save = t.save

        def save_and_keep():
            save()
            if t.step == 4 and world.is_main:
                (out / "resume").mkdir()
                shutil.copy(t.ckpt_path, out / "resume" / t.ckpt_path.name)
                shutil.copy(t.out_dir / "metrics.jsonl", out / "resume" / "metrics.jsonl")
        t.save = save_and_keep
        t.run()
    elif scenario == "nccl":
        nccl(out)
    elif scenario == "resume":
        Trainer(train_config(out / "resume", model={**MODEL, "dropout": 0.1}), data=make_data(99)).run(resume=True)
    elif scenario == "crash":  # rank 1 raises in its third step; rank 0 is then waiting in a collective
        t = Trainer(train_config(out, max_iters=50), data=make_data(3))
        step = t.train_step

        def failing_step():
            if world.rank == 1 and t.step == 2:
                raise RuntimeError("injected failure in the data pipeline")
            return step()
        t.train_step = failing_step
        t.run()
    elif scenario == "save_fails":  # rank 0's checkpoint write hits a full disk at the first evaluation
        import errno
        t = Trainer(train_config(out, max_iters=50), data=make_data(3))

        def full_disk():
            raise OSError(errno.ENOSPC, "No space left on device")
        if world.is_main:
            t.save = full_disk
        t.run()
    elif scenario == "quit":  # rank 1 leaves by sys.exit (no exception hook runs for that)
        with distributed.abort_on_exit(world):
            if world.rank == 1:
                sys.exit("rank 1 found no data")
            world.allreduce_(np.ones(3, np.float32))
    elif scenario == "mismatch":  # each rank is started with its own --seed
        Trainer(train_config(out, seed=int(sys.argv[3])), data=make_data(3)).run()
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
