"""The tokenizer's own errors: one base class, so callers can catch everything we raise.

Both are ValueErrors (the input was bad), and each message names the value at fault:

    >>> raise TokenizerError("vocab_size 200 is below 256 byte tokens + 1 special token")
"""


class TokenizerError(ValueError):
    """Bad input to the tokenizer: a vocab size, pattern, special token or id that cannot work."""


class TokenizerFileError(TokenizerError):
    """A tokenizer or token file that is truncated, corrupt, of another format or version."""
