"""docs/backward.md and the code point at each other: every op with a backward has a section there,
its docstring links that section, and the section names the file that implements the op."""
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import tinygrad_llm.ops
from tinygrad_llm.autograd import Function

ROOT = Path(__file__).resolve().parents[1]
BACKWARD_MD = ROOT / "docs" / "backward.md"
_LINK = re.compile(r"docs/backward\.md#([A-Za-z0-9_\-]+)")


def _ops_modules():
    """tinygrad_llm.ops, and the packages where an op must not hide (every op lives in ops/)."""
    for pkg_name in ("ops", "models", "nn", "optim"):
        try:
            pkg = importlib.import_module(f"tinygrad_llm.{pkg_name}")
        except ImportError:  # a package still being written
            continue
        for info in pkgutil.iter_modules(pkg.__path__):
            yield importlib.import_module(f"tinygrad_llm.{pkg_name}.{info.name}")


def op_classes():
    """Every public Function subclass in tinygrad_llm.ops (and models, nn, optim) with a backward."""
    found = []
    for mod in _ops_modules():
        for name, cls in vars(mod).items():
            if (inspect.isclass(cls) and issubclass(cls, Function) and cls is not Function
                    and cls.__module__ == mod.__name__ and not name.startswith("_")
                    and hasattr(cls, "backward")):
                found.append(cls)
    return sorted(found, key=lambda c: (c.__module__, c.__name__))


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def sections(markdown):
    """anchor -> the text of its section (to the next heading of the same or a higher level)."""
    lines = markdown.splitlines()
    heads = []
    in_code = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"^(#{1,6})\s+(.*?)\s*#*$", line)
        if m:
            heads.append((i, len(m.group(1)), m.group(2)))
    out = {}
    for k, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[k + 1:] if lv <= level), len(lines))
        body = "\n".join(lines[i:end])
        anchors = {slug(title)} | set(re.findall(r'\{#([\w\-]+)\}', title))
        anchors |= set(re.findall(r'<a (?:id|name)="([\w\-]+)"', "\n".join(lines[i:i + 2])))
        for a in anchors:
            out.setdefault(a, body)
    # explicit anchors anywhere (<a id="..."></a>) open a section that runs to the next heading
    for m in re.finditer(r'<a (?:id|name)="([\w\-]+)"></a>', markdown):
        line_no = markdown.count("\n", 0, m.start())
        end = next((j for j, _, _ in heads if j > line_no), len(lines))
        out.setdefault(m.group(1), "\n".join(lines[line_no:end]))
    return out


OPS = op_classes()


def test_every_op_lives_in_ops():
    outside = [f"{c.__module__}.{c.__name__}" for c in OPS if not c.__module__.startswith("tinygrad_llm.ops.")]
    assert not outside, f"ops outside tinygrad_llm/ops/: {outside}"


def test_the_walk_finds_the_ops():
    names = {c.__name__ for c in OPS}
    assert {"Add", "Mul", "MatMul", "Sum", "Reshape", "Linear"} <= names
    assert all(c.__module__.startswith("tinygrad_llm.") for c in OPS)
    assert all(c.__name__ != "Function" for c in OPS)


@pytest.mark.parametrize("op", OPS, ids=lambda c: f"{c.__module__.rsplit('.', 1)[-1]}.{c.__name__}")
def test_op_docstring_links_a_section_that_names_its_file(op):
    doc = inspect.getdoc(op) or ""
    links = _LINK.findall(doc)
    assert links, (f"{op.__module__}.{op.__name__}: its docstring has no 'docs/backward.md#<anchor>' "
                   "link to the derivation")
    found = sections(BACKWARD_MD.read_text())
    for anchor in links:
        assert anchor in found, (f"{op.__name__} links docs/backward.md#{anchor}, but backward.md "
                                 "has no heading or <a id> with that anchor")
        path = op.__module__.replace(".", "/") + ".py"
        assert path in found[anchor] or Path(path).name in found[anchor], (
            f"the section #{anchor} does not name {path}, the file that implements {op.__name__}")


def test_every_link_in_the_code_resolves():
    found = sections(BACKWARD_MD.read_text())
    broken = []
    for py in (ROOT / "tinygrad_llm").rglob("*.py"):
        for anchor in _LINK.findall(py.read_text()):
            if anchor not in found:
                broken.append(f"{py.relative_to(ROOT)}: #{anchor}")
    assert not broken, "links to missing sections of docs/backward.md: " + ", ".join(broken)


def test_sections_link_files_that_exist():
    text = BACKWARD_MD.read_text()
    missing = [p for p in set(re.findall(r"tinygrad_llm/[\w/]+\.py", text))
               if "{" not in p and not (ROOT / p).exists()]
    assert not missing, f"backward.md names files that do not exist: {missing}"


def test_readme_links_the_derivations():
    assert "docs/backward.md" in (ROOT / "README.md").read_text()


def test_slug_follows_github():
    assert slug("Softmax") == "softmax"
    assert slug("Log-softmax + NLL (cross-entropy)") == "log-softmax--nll-cross-entropy"
    assert slug("`MatMul`: batched") == "matmul-batched"


# docs/architecture.md: the rooms, lowest first; a module may import from its own room or below
ROOMS = [
    {"backend", "autograd", "tensor", "ops", "functional", "gradcheck", "cuda", "kernels", "blas",
     "files", "distributed", "autocast"},
    {"nn", "optim", "study"},
    {"tokenizer", "models", "data", "shard_data", "train", "runs", "parallel", "checkpoint", "safetensors", "config", "finetune",
     "data_parallel", "evaluate"},
    {"cli", "__main__", "__init__"},
]


def _room(name):
    for level, room in enumerate(ROOMS):
        if name in room:
            return level
    return None


def _imported_tops(py, package_parts):
    """The top-level tinygrad_llm modules that a file imports (relative or absolute)."""
    import ast
    tops = set()
    for node in ast.walk(ast.parse(py.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package_parts[:len(package_parts) - (node.level - 1)]
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                tops.add(parts[0])
            else:
                tops.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinygrad_llm."):
            tops.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            tops.update(a.name.split(".")[1] for a in node.names if a.name.startswith("tinygrad_llm."))
    return tops


def test_imports_point_down():
    pkg = ROOT / "tinygrad_llm"
    upward, unknown = [], []
    for py in sorted(pkg.rglob("*.py")):
        rel = py.relative_to(pkg)
        me = rel.parts[0].removesuffix(".py")
        mine = _room(me)
        if mine is None:
            unknown.append(str(rel))
            continue
        for top in _imported_tops(py, list(rel.parts[:-1])):
            theirs = _room(top)
            if theirs is None:
                unknown.append(f"{rel} imports {top}")
            elif theirs > mine:
                upward.append(f"{rel} imports {top}")
    assert not unknown, f"modules docs/architecture.md does not place in a room: {unknown}"
    assert not upward, f"imports that point up (see docs/architecture.md): {upward}"


def _module_imports():
    """{module: the package modules it imports}, every import counted (also those inside functions)."""
    import ast
    pkg = ROOT / "tinygrad_llm"
    mods = {}
    for py in pkg.rglob("*.py"):
        parts = list(py.relative_to(ROOT).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = py

    def known(name):  # the module an import lands in: a.b.name may be a function of module a.b
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges = {}
    for mod, py in mods.items():
        here = mod.split(".") if py.name == "__init__.py" else mod.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + (node.module.split(".") if node.module else [])) \
                    if node.level else (node.module or "")
                if base.startswith("tinygrad_llm"):
                    found.update(known(f"{base}.{a.name}") for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(known(a.name) for a in node.names if a.name.startswith("tinygrad_llm"))
        edges[mod] = found - {mod, ""}
    return edges


def test_no_import_cycles():
    # a cycle, even through an import inside a function, means two modules that cannot be read
    # (or tested, or moved) one without the other
    edges = _module_imports()
    state, cycles = {}, []

    def visit(m, path):  # depth-first; a module met again while still on the path closes a cycle
        state[m] = "open"
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                cycles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"
    assert {"tinygrad_llm.tensor", "tinygrad_llm.ops.movement"} <= set(edges)  # the walk saw the package


def test_the_tokenizer_stands_alone():
    # docs/architecture.md: the tokenizer imports nothing of the package but files.py (standard
    # library only), so it can be used, and read, without the engine
    pkg = ROOT / "tinygrad_llm"
    outside = []
    for py in sorted((pkg / "tokenizer").rglob("*.py")):
        rel = py.relative_to(pkg)
        outside += [f"{rel} imports {top}" for top in _imported_tops(py, list(rel.parts[:-1]))
                    if top not in ("tokenizer", "files")]
    assert not outside, f"the tokenizer reaches outside itself: {outside}"
