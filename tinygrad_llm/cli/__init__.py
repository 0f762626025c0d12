"""Command-line entry points (`python -m tinygrad_llm <command>`): each module defines
add_arguments(parser) and main(args); the examples/ scripts are thin wrappers over them."""
