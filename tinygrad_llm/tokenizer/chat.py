"""Rendering a Hugging Face chat template: the folder's Jinja text, as transformers renders it.

A template in a downloaded folder is untrusted code, so it runs in Jinja's immutable sandbox:
no attribute starting with "_" (no way from a string to Python's internals; reaching for one is
an error here, not an empty string), no changing the messages passed in, no loader (so no
{% include %} of a file), and namespace() refuses "_" names.
The environment is transformers' own: trim_blocks, lstrip_blocks, loop controls, a `tojson`
that does not escape HTML, `raise_exception`, `strftime_now`, and a {% generation %} tag that
renders its body.  Jinja2 is the `chat` extra: pip install "tinygrad-llm[chat]".

    >>> render_chat_template("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\\n{% endfor %}",
    ...                      [{"role": "user", "content": "Hi"}])
    '<|user|>Hi\\n'
"""
import json
from datetime import datetime
from functools import lru_cache

from .errors import TokenizerError


class ChatTemplateError(TokenizerError):
    """A chat template that does not compile, raises, or reaches for what the sandbox forbids."""


def _jinja():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError:
        raise ChatTemplateError("chat templates need jinja2, the `chat` extra: "
                                "pip install 'tinygrad-llm[chat]' (or pip install jinja2)") from None
    version = tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit())
    if version < (3, 1, 6):  # earlier versions have known sandbox escapes
        raise ChatTemplateError(f"chat templates need jinja2 >= 3.1.6 (found {jinja2.__version__}, which has "
                                "known sandbox escapes): pip install -U 'tinygrad-llm[chat]'")
    return jinja2


@lru_cache(maxsize=16)
def compile_chat_template(source):
    """The template compiled in the sandbox (cached by its text)."""
    jinja2 = _jinja()

    class GenerationTag(jinja2.ext.Extension):
        # transformers' {% generation %} marks assistant text for masks; rendering, it is its body
        tags = frozenset({"generation"})

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class TemplateDict:
        # dict() without the dict type itself, whose attributes would lead out of the sandbox
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with '_'")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
        # Jinja hands back an empty Undefined for a forbidden attribute, which prints as "": a
        # template reaching for one is hostile or broken, so it fails here, by name, instead.
        def unsafe_undefined(self, obj, attribute):
            raise jinja2.exceptions.SecurityError(
                f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    env = Sandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template does not compile: {_first_line(e)}") from None


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def render_chat_template(source, messages, add_generation_prompt=False, tools=None, documents=None, **kwargs):
    """The rendered conversation: str.  messages is a list of {"role", "content", ...} dicts."""
    if not isinstance(source, str):
        raise ChatTemplateError(f"chat template must be a string, got {type(source).__name__}")
    template = compile_chat_template(source)
    jinja2 = _jinja()
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages must be a list of dicts, got {type(messages).__name__}")
    chat = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatTemplateError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r:.60}")
        m = {k: _plain(v) for k, v in m.items() if v is not None}  # as transformers: None keys dropped
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        chat.append(m)
    try:
        return template.render(messages=chat, tools=_plain(tools), documents=_plain(documents),
                               add_generation_prompt=add_generation_prompt, **_plain(kwargs))
    except jinja2.exceptions.SecurityError as e:
        raise ChatTemplateError(f"chat template refused: it reaches outside the sandbox ({_first_line(e)})") from None
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {_first_line(e)}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError,
            OverflowError, RecursionError) as e:
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {_first_line(e)}") from None


def _plain(value):
    """Only JSON-like data reaches the template (rich objects carry methods the sandbox cannot vet)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
