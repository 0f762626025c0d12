"""Command line: `python -m tinygrad_llm <command> ...`.

Each command lives beside the code it drives; this file only routes to it, importing lazily so
`tokenize` never pays for the model code and `train` never pays for the tokenizer trainer.
"""
import argparse
import importlib
import sys

# command -> (module that defines add_arguments(parser) and main(args), one-line help)
COMMANDS = {
    "tokenize": ("tinygrad_llm.tokenizer.cli", "train a BPE tokenizer or encode a corpus into a token file"),
    "train": ("tinygrad_llm.cli.train", "train a GPT (the loop of tinygrad_llm.train)"),
    "sample": ("tinygrad_llm.cli.sample", "generate text from a checkpoint"),
    "plot": ("tinygrad_llm.cli.plot", "draw loss, bits-per-byte, lr and gradient norms of a run as PNG"),
    "bench": ("tinygrad_llm.cli.bench", "time a training step of a small GPT"),
    "eval": ("tinygrad_llm.cli.eval", "score a model on a benchmark file: multiple choice, exact match, bits/byte"),
}


def main(argv=None):
    """Run one command; returns the exit status: 0, 2 for a user error (one `error:` line on
    stderr), 130 when Ctrl-C stopped it, or the command's own status."""
    from .cli.common import DefaultsHelpFormatter, UsageError
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m tinygrad_llm")
    sub = parser.add_subparsers(dest="command", metavar="|".join(COMMANDS))
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)} "
              "(python -m tinygrad_llm --help)", file=sys.stderr)
        return 2
    from . import backend
    backend.keep_freed_memory()  # a process of our own: the malloc setting is ours to make
    try:
        module = importlib.import_module(COMMANDS[argv[0]][0])
    except KeyboardInterrupt:  # Ctrl-C while the command's code loads: nothing has started
        print("interrupted", file=sys.stderr)
        return 130
    command_parser = argparse.ArgumentParser(prog=f"python -m tinygrad_llm {argv[0]}",
                                             formatter_class=DefaultsHelpFormatter)
    module.add_arguments(command_parser)
    command_parser.add_argument("--debug", action="store_true",
                                help="show the full traceback of an error instead of one line")
    args = command_parser.parse_args(argv[1:])
    try:
        return module.main(args) or 0
    except UsageError as e:
        if args.debug:
            raise
        return _fail(2, f"error: {e}")
    except KeyboardInterrupt:
        if args.debug:
            raise
        return _fail(130, "interrupted")


def _fail(status, message):
    """Print the one-line message and return the status; under mpirun, end every rank with it
    (a rank that returned alone would leave the others waiting in a collective forever)."""
    from . import distributed
    distributed.end_job_on_failure(status, message)  # returns only in a world of one
    print(message, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
