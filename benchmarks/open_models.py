"""Open-weight models on the CPU: ours (models.from_pretrained) against transformers, measured in
the same run, each side in its own process, interleaved, on the same threads, in float32.

    python benchmarks/open_models.py --shape smollm2-135m --threads 2 --rounds 3
    python benchmarks/open_models.py --shape llama3.2-1b --threads 2 --rounds 3
    python benchmarks/open_models.py --shape tiny --rounds 1            # a quick check that it runs

Each shape is a hand-written config (SmolLM2-135M's, Llama 3.2 1B's) with random weights, written
once into a temporary Hugging Face folder (nothing is downloaded). Per round and side, a fresh
process loads the folder and reports:

    peak RSS      of load + prefill + generate (ru_maxrss)                        target ours <= 1.0x
    prefill       tokens/s of a --prompt-token prompt: the time to the first token target >= 1.0x
    decode        tokens/s of --new greedy tokens at batch 1 after it              target >= 1.2x
    bandwidth     decode tokens/s against copy bandwidth / weight bytes per token  target >= 85%

Both sides use their generate() (greedy, a KV cache, logits of the last position only). The copy
bandwidth is measured here with the same number of threads (each copies a slice of a buffer far
larger than the caches; read + write bytes counted, as STREAM's copy does). Weight bytes per token:
every matrix a decoding step reads (all linear layers and the output head; the embedding's one row
is left out), 4 bytes each.

Timings need a quiet machine: on a shared one the ratios move with the neighbours' load.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import host

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {  # the compute-affecting fields of each model's published config.json
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-05, "rope_theta": 100000.0, "rope_scaling": None, "tie_word_embeddings": True,
        "vocab_size": 49152, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    },
    "llama3.2-1b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True, "vocab_size": 128256, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False,
    },
    "tiny": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": True, "vocab_size": 512,
        "hidden_act": "silu",
    },
}


def write_folder(shape, folder):
    """A Hugging Face folder of the shape with random float32 weights (our writer; transformers
    reads it, as the parity tests show)."""
    import numpy as np
    sys.path.insert(0, str(ROOT))
    from tinygrad_llm.models import Transformer
    from tinygrad_llm.models.families import config_from_hf
    model = Transformer(config_from_hf(SHAPES[shape]), init=False)
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data[...] = 1.0
        else:
            p.data[...] = rng.standard_normal(p.shape, dtype=np.float32) * 0.02
    model.save_pretrained(folder)
    return folder


def weight_bytes_per_token(shape):
    """Bytes of the matrices one decoding step reads (float32)."""
    sys.path.insert(0, str(ROOT))
    from tinygrad_llm.models.families import config_from_hf
    c = config_from_hf(SHAPES[shape])
    C, D, H, Hk = c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads
    per_layer = C * (H + 2 * Hk) * D + H * D * C + 3 * C * c.intermediate_size + 2 * C
    return 4 * (c.num_hidden_layers * per_layer + C + c.vocab_size * C)


def copy_bandwidth(threads, mib=512, reps=5):
    """Bytes per second read + written by a threaded copy of a buffer of mib MiB (best of reps)."""
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor
    a = np.ones(mib << 18, np.float32)
    b = np.empty_like(a)
    parts = np.array_split(np.arange(a.size), threads)
    spans = [(p[0], p[-1] + 1) for p in parts]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            t0 = time.perf_counter()
            list(pool.map(lambda s: np.copyto(b[s[0]:s[1]], a[s[0]:s[1]]), spans))
            best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best


# ------------------------------------------------------------------------------------ the workers
def worker_ours(folder, prompt, new, reps):
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from tinygrad_llm import backend
    from tinygrad_llm.models import from_pretrained
    backend.keep_freed_memory()  # as the CLI and the trainer do
    t0 = time.perf_counter()
    model = from_pretrained(folder)
    load = time.perf_counter() - t0
    idx = np.random.default_rng(1).integers(0, model.config.vocab_size, (1, prompt))

    def generate(n):
        return model.generate(idx, n, temperature=0)

    return _time(generate, load, prompt, new, reps)


def worker_transformers(folder, prompt, new, reps):
    import numpy as np
    import torch
    import transformers
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    load = time.perf_counter() - t0
    idx = torch.tensor(np.random.default_rng(1).integers(0, model.config.vocab_size, (1, prompt)))

    def generate(n):
        with torch.inference_mode():
            return model.generate(idx, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)

    return _time(generate, load, prompt, new, reps)


def _time(generate, load, prompt, new, reps):
    """Prefill: generate(1), the prompt and one token. Decode: generate(new + 1) minus that."""
    import resource
    generate(2)  # warm: BLAS threads, allocator, caches
    first = min(_seconds(generate, 1) for _ in range(reps))
    total = min(_seconds(generate, new + 1) for _ in range(reps))
    return {"load_s": load, "prefill_tok_s": prompt / first, "decode_tok_s": new / max(total - first, 1e-9),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _seconds(fn, n):
    t0 = time.perf_counter()
    fn(n)
    return time.perf_counter() - t0


def run_worker(side, folder, args):
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--worker", side, "--folder", str(folder), "--prompt", str(args.prompt),
           "--new", str(args.new), "--reps", str(args.reps), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode:
        raise RuntimeError(f"the {side} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each side's best is reported")
    p.add_argument("--reps", type=int, default=2, help="timed repetitions inside each worker (best kept)")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--folder", help="an existing folder to use instead of writing one")
    p.add_argument("--worker", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        if args.worker == "transformers":
            import torch
            torch.set_num_threads(args.threads)
        fn = worker_ours if args.worker == "ours" else worker_transformers
        print(json.dumps(fn(args.folder, args.prompt, args.new, args.reps)))
        return
    info = host.machine()
    for k, v in info.items():
        print(f"{k}: {v}")
    try:
        import torch
        blas = [line.strip() for line in torch.__config__.show().splitlines() if "BLAS_INFO" in line or "MKL" in line]
        print(f"torch: {torch.__version__}; {blas[0] if blas else 'BLAS unknown'}")
    except ImportError:
        print("torch: not installed (the transformers side will fail)")
    print(f"shape {args.shape}, prompt {args.prompt}, new {args.new}, threads {args.threads}, float32")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else write_folder(args.shape, Path(tmp) / args.shape)
        results = {"ours": [], "transformers": []}
        for r in range(args.rounds):
            order = ["ours", "transformers"] if r % 2 == 0 else ["transformers", "ours"]
            for side in order:
                results[side].append(run_worker(side, folder, args))
                print(f"round {r + 1} {side:12s} " + ", ".join(f"{k} {v:.1f}" for k, v in results[side][-1].items()),
                      flush=True)
    bandwidth = copy_bandwidth(args.threads)
    per_token = weight_bytes_per_token(args.shape)
    bound = bandwidth / per_token
    best = {side: {"prefill_tok_s": max(x["prefill_tok_s"] for x in rs),
                   "decode_tok_s": max(x["decode_tok_s"] for x in rs),
                   "peak_rss_mb": min(x["peak_rss_mb"] for x in rs)} for side, rs in results.items()}
    o, t = best["ours"], best["transformers"]
    print(f"\ncopy bandwidth {bandwidth / 1e9:.2f} GB/s ({args.threads} threads), {per_token / 1e6:.1f} MB of weights "
          f"per token: bound {bound:.1f} tokens/s")
    print(f"{'':22s}{'ours':>10s}{'transformers':>14s}{'ratio':>8s}  target")
    print(f"{'peak RSS (MB)':22s}{o['peak_rss_mb']:10.0f}{t['peak_rss_mb']:14.0f}"
          f"{o['peak_rss_mb'] / t['peak_rss_mb']:8.2f}  <= 1.0")
    print(f"{'prefill (tokens/s)':22s}{o['prefill_tok_s']:10.1f}{t['prefill_tok_s']:14.1f}"
          f"{o['prefill_tok_s'] / t['prefill_tok_s']:8.2f}  >= 1.0")
    print(f"{'decode (tokens/s)':22s}{o['decode_tok_s']:10.1f}{t['decode_tok_s']:14.1f}"
          f"{o['decode_tok_s'] / t['decode_tok_s']:8.2f}  >= 1.2")
    print(f"{'decode / bound':22s}{o['decode_tok_s'] / bound:10.0%}{t['decode_tok_s'] / bound:14.0%}{'':8s}  >= 85%")


if __name__ == "__main__":
    main()
