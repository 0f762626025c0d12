"""Train a small GPT on tiny Shakespeare on the CPU, then print its bits per byte and a sample.

    python examples/train_shakespeare.py                   # about 90 s on two cores
    python examples/train_shakespeare.py --tokenizer char  # nanoGPT's character-level setup
    python examples/train_shakespeare.py --device cuda     # nanoGPT's GPU recipe (6 x 384, T=256)
    python examples/train_shakespeare.py --resume          # continue from out/shakespeare
    mpirun -n 2 python examples/train_shakespeare.py       # data parallel over 2 MPI ranks (".[dist]")

Same as `python -m tinygrad_llm train`; all flags: --help.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tinygrad_llm.cli import train  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_arguments(parser)
    sys.exit(train.main(parser.parse_args()))
