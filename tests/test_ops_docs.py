"""Every primitive op's docstring links its derivation in docs/backward.md, and the section exists."""
import inspect
import re

import pytest

from tinygrad_llm.autograd import Function
from tinygrad_llm.ops import broadcast, elementwise, linear, matmul, movement, reduce  # noqa: F401

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
MODULES = [elementwise, reduce, movement, matmul, linear]
OPS = [(m.__name__.rsplit(".", 1)[-1], name, cls) for m in MODULES for name, cls in vars(m).items()
       if inspect.isclass(cls) and issubclass(cls, Function) and cls.__module__ == m.__name__
       and "backward" in cls.__dict__]


def sections():
    text = (ROOT / "docs" / "backward.md").read_text()
    return set(re.findall(r"^## (\S+)\s*$", text, re.M))


def test_every_primitive_is_listed():
    names = {name for _, name, _ in OPS}
    assert {"Add", "MatMul", "GetItem", "Max", "Min", "LogSumExp", "Linear", "PowScalar"} <= names


@pytest.mark.parametrize("module, name, cls", OPS, ids=[n for _, n, _ in OPS])
def test_op_links_its_derivation(module, name, cls):
    anchor = name.lower()
    assert f"docs/backward.md#{anchor}" in (cls.__doc__ or ""), f"{module}.{name} docstring lacks its link"
    assert anchor in sections(), f"docs/backward.md has no '## {anchor}' section"
