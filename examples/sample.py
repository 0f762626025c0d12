"""Generate text from a checkpoint written by examples/train_shakespeare.py.

    python examples/sample.py --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8

Same as `python -m tinygrad_llm sample`; all flags: --help.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tinygrad_llm.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
