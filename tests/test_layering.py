"""The import structure, read from the source (no TensorFlow): modules import downward only.

The folders are the layers, bottom to top (LAYERS): a module imports from its own folder and the folders below,
never above, and each folder's docstring says which ones it may import, in a "May import:" line that this test
holds to the code. Only the package's face, the CLI and the test helpers sit outside a folder, on top.

"Downward" is made precise as: the graph of module-level imports between ckptkit's and converters' modules has
no cycle, and an import inside a function (kept to load TensorFlow-heavy modules only when needed) never goes to
a module that, at module level, imports the importer back, i.e. it is never there to dodge a cycle. Importing
`a.b.c` runs `a.b`'s `__init__` first, so it counts as importing that package too.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
PACKAGES = ("ckptkit", "converters")
pytestmark = pytest.mark.fast


def _modules() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py") and not f.endswith("_pb2.py"):
                    path = os.path.join(folder, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    if pkg == "converters":  # the repository's converters/ installs as ckptkit.converters
                        name = "ckptkit." + name
                    out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: str, modules: dict) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for each import of one module (TYPE_CHECKING blocks skipped)."""
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    found = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                base = ".".join(package[:len(package) - child.level + 1] + [child.module or ""]).strip(".") \
                    if child.level else child.module
                for alias in child.names:
                    found.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, lazy,
                                  child.lineno))
            elif isinstance(child, ast.Import):
                found.extend((alias.name, lazy, child.lineno) for alias in child.names)
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(open(path).read()), False)
    return found


def _graph() -> tuple[dict, dict]:
    """(module-level edges, function-level edges): module -> {imported module: first line}."""
    modules = _modules()
    eager: dict[str, dict] = {m: {} for m in modules}
    lazy: dict[str, dict] = {m: {} for m in modules}
    for name, path in modules.items():
        for target, inside, line in _imports(name, path, modules):
            parts = target.split(".")
            # the module and the packages whose __init__ importing it runs (the top-level package excepted)
            for t in [".".join(parts[:i]) for i in range(2, len(parts) + 1)]:
                if t in modules and t != name and not name.startswith(t + "."):
                    (lazy if inside else eager)[name].setdefault(t, line)
    return eager, lazy


def _reachable(graph: dict, start: str) -> set:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_module_level_imports_have_no_cycle():
    eager, _ = _graph()
    cycles = sorted(f"{m} -> {t} (line {line}) -> ... -> {m}" for m, targets in eager.items()
                    for t, line in targets.items() if m in _reachable(eager, t))
    assert not cycles, "\n".join(cycles)


def test_no_import_inside_a_function_dodges_a_cycle():
    eager, lazy = _graph()
    dodges = sorted(f"{m}:{line} imports {t} inside a function; {t} imports {m} back" for m, targets in lazy.items()
                    for t, line in targets.items() if t not in eager[m] and m in _reachable(eager, t))
    assert not dodges, "\n".join(dodges)


def test_the_checker_sees_cycles(tmp_path, monkeypatch):
    """The two checks above can fail: a module pair importing each other is reported."""
    for name, body in {"a": "from . import b\n", "b": "def f():\n    from . import a\n"}.items():
        (tmp_path / "ckptkit").mkdir(exist_ok=True)
        (tmp_path / "ckptkit" / f"{name}.py").write_text(body)
    (tmp_path / "ckptkit" / "__init__.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    monkeypatch.setattr(__import__(__name__), "PACKAGES", ("ckptkit",))
    eager, lazy = _graph()
    assert eager["ckptkit.a"] == {"ckptkit.b": 1} and lazy["ckptkit.b"] == {"ckptkit.a": 2}
    with pytest.raises(AssertionError, match="dodges|imports ckptkit.a inside a function"):
        test_no_import_inside_a_function_dodges_a_cycle()
    (tmp_path / "ckptkit" / "b.py").write_text("from . import a\n")
    with pytest.raises(AssertionError, match="ckptkit.a -> ckptkit.b"):
        test_module_level_imports_have_no_cycle()


# bottom to top; a module of ckptkit/ outside these folders is on top (TOP)
LAYERS = ("core", "ir", "read", "run", "tf_import", "ops", "topology", "batchnorm", "converters", "commands")
TOP = {"ckptkit", "ckptkit.cli", "ckptkit.testing"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "top"


def _declared(layer: str) -> set:
    """The layers a folder's docstring names after "May import:" (up to the first '.' or '(')."""
    doc = ast.get_docstring(ast.parse(open(_modules()[f"ckptkit.{layer}"]).read())) or ""
    assert "May import:" in doc, f"ckptkit/{layer}/__init__.py's docstring does not say what it may import"
    named = doc.split("May import:", 1)[1].split("(")[0].split(".")[0]
    return {word.strip(" ,;\n") for word in named.replace(",", " ").split()} & set(LAYERS)


def test_every_module_sits_in_a_layer_folder():
    stray = sorted(m for m in _modules() if _layer(m) == "top" and m not in TOP)
    assert not stray, f"modules outside the layer folders: {stray}"


def test_each_folder_says_what_it_may_import_and_it_is_below_it():
    wrong = {layer: sorted(_declared(layer) - set(LAYERS[:LAYERS.index(layer)]))
             for layer in LAYERS if _declared(layer) - set(LAYERS[:LAYERS.index(layer)])}
    assert not wrong, f"folders whose docstring allows a layer that is not below them: {wrong}"


def _upward(eager: dict, lazy: dict) -> list[str]:
    out = []
    for edges in (eager, lazy):
        for module, targets in edges.items():
            here = _layer(module)
            if here == "top":
                continue
            allowed = _declared(here) | {here}
            out += [f"{module}:{line} imports {t} ({_layer(t)}; ckptkit/{here}/ may import {sorted(allowed)})"
                    for t, line in targets.items() if _layer(t) != "top" and _layer(t) not in allowed
                    or _layer(t) == "top" and t != "ckptkit"]
    return sorted(out)


def test_imports_stay_in_their_folder_or_go_down():
    """Inside functions too: a lazy import is for start-up time, never for reaching up."""
    eager, lazy = _graph()
    bad = _upward(eager, lazy)
    assert not bad, "\n".join(bad)


def test_the_folder_rule_can_fail():
    """An import from core up into commands is reported."""
    eager, lazy = _graph()
    eager["ckptkit.core.errors"] = {"ckptkit.commands.export": 7}
    assert _upward(eager, lazy) == [
        "ckptkit.core.errors:7 imports ckptkit.commands.export (commands; ckptkit/core/ may import ['core'])"]


def test_every_layer_folder_is_installed():
    """pyproject.toml lists the packages (the strict editable install and the wheel hold exactly those): every
    folder of ckptkit/ with an __init__.py, and converters/ as ckptkit.converters (ckptkit/converters is its link)."""
    import tomllib

    declared = set(tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["setuptools"]["packages"])
    base = os.path.join(ROOT, "ckptkit")
    folders = {"ckptkit.converters"}
    for folder, _, files in os.walk(base):  # links are not followed: ckptkit/converters is listed above
        if "__init__.py" in files:
            rel = os.path.relpath(folder, base)
            folders.add("ckptkit" if rel == "." else "ckptkit." + rel.replace(os.sep, "."))
    assert declared == folders, f"pyproject.toml's packages differ from the tree by {sorted(declared ^ folders)}"
