"""Pre-splitting: the regex that cuts text into chunks before BPE ever sees it.

Merges never cross a chunk boundary, so "dog." and "dog!" share the token " dog" instead of
learning "dog." and "dog!" separately.  GPT-2 and GPT-4 (cl100k) differ mainly in how they cut
numbers (GPT-4: at most 3 digits per chunk), case-insensitive contractions and newlines:

    >>> import regex
    >>> regex.findall(GPT2_PATTERN, "Hello world's 12345!!")
    ['Hello', ' world', "'s", ' 12345', '!!']
    >>> regex.findall(GPT4_PATTERN, "Hello world's 12345!!")
    ['Hello', ' world', "'s", ' ', '123', '45', '!!']
"""
import regex

from .errors import TokenizerError

# OpenAI's GPT-2 encoder.py, verbatim.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# cl100k_base (GPT-3.5/4) as tiktoken ships it; possessive quantifiers (?+ ++) stop backtracking.
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}  # name -> regex source


def resolve_pattern(pattern):
    """A pattern name ("gpt2", "gpt4"), a regex source string, or None (no pre-splitting).

    Returns the regex source (or None).  A string that is neither a known name nor a valid
    regex is refused, naming it, rather than failing later inside training.
    """
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise TokenizerError(f"pattern must be 'gpt2', 'gpt4', None or a regex string, got {pattern!r}")
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    # A bare lowercase word is almost surely a mistyped name, not a regex meant to match that word.
    if pattern.isalnum() and pattern.islower():
        raise TokenizerError(f"unknown pattern name {pattern!r}; known: {sorted(PATTERNS)} "
                             "(or pass a regex source string, or None)")
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise TokenizerError(f"pattern {pattern!r} is not a valid regex: {e}") from None
    return pattern


def pattern_name(source):
    """The built-in name of a regex source, or None: 'gpt4' for GPT4_PATTERN."""
    for name, src in PATTERNS.items():
        if src == source:
            return name
    return None
