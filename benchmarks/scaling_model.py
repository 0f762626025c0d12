"""The cost model of docs/scaling.md: step time of data-parallel GPT-2 training against the number
of GPUs, compute from a single-GPU throughput and the all-reduce from the ring formula.

    python benchmarks/scaling_model.py                          # the tables in docs/scaling.md
    python benchmarks/scaling_model.py --tflops 120             # another achieved single-GPU rate
    python benchmarks/scaling_model.py --tokens-per-s 95000 --model 124M   # a measured 124M step

step(N) = compute(N) + allreduce(N) without overlap; with overlap (each bucket's all-reduce
launched as backward finishes its gradients) forward + max(backward, allreduce) + one bucket's
all-reduce (the last bucket is ready only when backward ends); backward = 2/3 of compute. Where
    compute(N)   = flops_per_token x global_batch / N / achieved FLOP/s
    allreduce(N) = 2 (N - 1) / N x gradient bytes / bus bandwidth + 2 (N - 1) x latency
flops_per_token = 6 x params + 12 x layers x T x width (nanoGPT's estimate_mfu, PaLM's appendix B).
"""
import argparse

MODELS = {  # params, layers, width, T, global batch in tokens per optimizer step
    "124M": dict(params=124.4e6, layers=12, width=768, T=1024, batch=524_288),
    "1.5B": dict(params=1558e6, layers=48, width=1600, T=1024, batch=1_048_576),
}
# NCCL all-reduce bus bandwidth (nccl-tests' busbw column, large messages), GB/s, and per-hop latency
FABRICS = {
    "NVLink (8x H100 SXM, NVSwitch)": dict(busbw=360e9, latency=5e-6, max_gpus=8),
    "InfiniBand, 8x 400 Gb/s per node": dict(busbw=360e9, latency=10e-6, max_gpus=None),
    "InfiniBand, 1x 400 Gb/s per node": dict(busbw=45e9, latency=10e-6, max_gpus=None),
}
GPUS = (1, 2, 4, 8, 16, 32, 64, 128)


def flops_per_token(m):
    return 6 * m["params"] + 12 * m["layers"] * m["T"] * m["width"]


def allreduce_s(n, grad_bytes, fabric):
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * grad_bytes / fabric["busbw"] + 2 * (n - 1) * fabric["latency"]


def table(name, flops, grad_bytes_per_param, buckets):
    m = MODELS[name]
    grad_bytes = m["params"] * grad_bytes_per_param
    one_gpu = flops_per_token(m) * m["batch"] / flops
    print(f"\n{name}: {m['params'] / 1e6:,.0f}M parameters, {grad_bytes / 1e9:.2f} GB of gradients, "
          f"global batch {m['batch']:,} tokens, {flops / 1e12:.0f} TFLOP/s per GPU "
          f"(one GPU: {one_gpu:.2f} s/step)")
    print("| GPUs | fabric | compute ms | all-reduce ms | step ms, no overlap | comm share | "
          "step ms, overlap | gain |")
    print("|---|---|---|---|---|---|---|---|")
    for fname, fabric in FABRICS.items():
        for n in GPUS:
            if n == 1 or (fabric["max_gpus"] and n > fabric["max_gpus"]) or (not fabric["max_gpus"] and n <= 8):
                continue
            compute = one_gpu / n
            comm = allreduce_s(n, grad_bytes, fabric)
            plain = compute + comm
            overlap = compute / 3 + max(2 * compute / 3, comm) + allreduce_s(n, grad_bytes / buckets, fabric)
            print(f"| {n} | {fname} | {1e3 * compute:.1f} | {1e3 * comm:.1f} | {1e3 * plain:.1f} | "
                  f"{comm / plain:.1%} | {1e3 * overlap:.1f} | {plain / overlap - 1:.1%} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tflops", type=float, default=400.0,
                   help="achieved TFLOP/s of one GPU's step (default: 40%% of an H100's dense bf16 peak)")
    p.add_argument("--tokens-per-s", type=float, help="measured single-GPU tokens/s of --model (overrides --tflops)")
    p.add_argument("--model", choices=list(MODELS), help="the model --tokens-per-s was measured on")
    p.add_argument("--grad-bytes", type=int, default=4, help="bytes per gradient element (4: float32, 2: bf16)")
    p.add_argument("--buckets", type=int, default=12, help="buckets the overlapped all-reduce uses")
    args = p.parse_args()
    flops = args.tflops * 1e12
    if args.tokens_per_s:
        if not args.model:
            raise SystemExit("--tokens-per-s needs --model (which model was measured)")
        flops = args.tokens_per_s * flops_per_token(MODELS[args.model])
    for name in ([args.model] if args.model else MODELS):
        table(name, flops, args.grad_bytes, args.buckets)


if __name__ == "__main__":
    main()
