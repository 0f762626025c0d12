"""`python -m tinygrad_llm bench`: time a training step (forward, backward, clip, AdamW) of a small GPT,
as the training loop runs it (on the CPU, the batch in one row shard per core: parallel.py).

    python -m tinygrad_llm bench                            # nanoGPT's CPU Shakespeare model
    python -m tinygrad_llm bench --n-layer 6 --n-embd 384 --n-head 6 --block-size 256 --profile

Prints the median ms/step and tokens/s; benchmarks/train_cpu.py compares against PyTorch. On the
GPU it also counts the host syncs of one step that does not log its loss and of one that does,
with the file:line of each (cuda/syncs.py): the training step's target is 0 and 1.
"""
import time

import numpy as np


# numeric flags and the values they accept
LIMITS = {"n_layer": "[1, inf)", "n_head": "[1, inf)", "n_embd": "[1, inf)", "block_size": "[1, inf)",
          "batch_size": "[1, inf)", "vocab_size": "[1, inf)", "steps": "[1, inf)", "warmup": "[0, inf)",
          "shards": "[0, inf)"}


def add_arguments(parser):
    parser.add_argument("--n-layer", type=int, default=4, help="transformer blocks")
    parser.add_argument("--n-head", type=int, default=4, help="attention heads")
    parser.add_argument("--n-embd", type=int, default=128, help="width")
    parser.add_argument("--block-size", type=int, default=64, help="context length T")
    parser.add_argument("--batch-size", type=int, default=12, help="rows per step B")
    parser.add_argument("--vocab-size", type=int, default=65, help="vocabulary size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the step runs")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                        help="bf16: bfloat16 matmuls and attention under autocast (GPU only)")
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"), help="the optimizer stepped")
    parser.add_argument("--shards", type=int, default=0, help="row shards per batch (0: one per core)")
    parser.add_argument("--profile", action="store_true", help="print where the time goes (cProfile)")


def main(args):
    from .common import UsageError, check_flags, user_input
    check_flags(args, LIMITS)
    from .. import backend
    if args.device == "cuda" and not backend.cuda_available():
        raise UsageError("--device cuda: no GPU found (CuPy missing or no device); use --device cpu")
    from ..models import GPT, GPTConfig
    from ..tensor import Tensor
    from ..train import TrainConfig, build_optimizer
    from .. import optim, parallel
    from ..autocast import training_precision
    if args.dtype == "bf16" and args.device != "cuda":
        raise UsageError("--dtype bf16 runs on the GPU only (--device cuda); the CPU trains in float32")
    from ..cuda import syncs
    backend.manual_seed(0)
    with user_input():
        cfg = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                        n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(cfg).to(args.device)
    opt = build_optimizer(model, TrainConfig(optimizer=args.optimizer))
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    B, T = args.batch_size, args.block_size
    x = Tensor(backend.to_device(rng.integers(0, cfg.vocab_size, (B, T)), args.device))
    y = Tensor(backend.to_device(rng.integers(0, cfg.vocab_size, (B, T)), args.device))

    def step(log=True):
        """One training step as the loop runs it; log=False leaves the loss on the device."""
        with syncs.deferred_checks():
            with training_precision(args.dtype, args.device):
                loss = parallel.loss_backward(lambda a, b: model(a, b)[1], x, y, shards=args.shards or None)
            optim.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
        return syncs.read(loss) if log else loss

    def wait():  # the GPU runs behind the host: a step's time ends when its work is done
        if args.device == "cuda":
            backend.cupy().cuda.Device().synchronize()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step(log=False)
        wait()
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    print(f"GPT {cfg.n_layer}x{cfg.n_embd} (heads {cfg.n_head}, T={T}, B={B}, vocab {cfg.vocab_size}, "
          f"{model.num_parameters():,} params) on {args.device} in {args.dtype}: {ms:.1f} ms/step (median of {args.steps}), "
          f"{B * T / ms * 1000:,.0f} tokens/s")
    if args.device == "cuda":
        report_syncs(step, wait, syncs)
    if args.profile:
        import cProfile
        import pstats
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(args.steps):
            step()
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(20)
    return 0


def report_syncs(step, wait, syncs):
    """Print the host syncs of a step that does not log and of one that does, by file:line."""
    wait()
    with syncs.counting() as quiet:
        step(log=False)
    wait()
    with syncs.counting() as logged:
        step(log=True)
    print(f"host syncs per step: {quiet.total} when the loss is not logged, {logged.total} when it "
          "is (target: 0 and 1)")
    for name, count in (("not logged", quiet), ("logged", logged)):
        for line in count.lines():
            print(f"  {name:10s} {line}")
    return quiet, logged
