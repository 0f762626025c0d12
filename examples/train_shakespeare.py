"""Train a small GPT on tiny Shakespeare on the CPU, then print its bits per byte and a sample.

    python examples/train_shakespeare.py                   # about 90 s on two cores
    python examples/train_shakespeare.py --tokenizer char  # nanoGPT's character-level setup
    python examples/train_shakespeare.py --device cuda     # nanoGPT's GPU recipe (6 x 384, T=256)
    python examples/train_shakespeare.py --resume          # continue from out/shakespeare
    mpirun -n 2 python examples/train_shakespeare.py       # data parallel over 2 MPI ranks (".[dist]")

Same as `python -m tinygrad_llm train`; all flags: --help.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tinygrad_llm.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
