"""The map of the layers (docs/architecture.md) stays true: every import of ``wsi_pipeline`` -- at the top of a
module, inside a function, under ``TYPE_CHECKING`` -- is read with ``ast`` and checked for

(a) import circles between modules (every strongly connected component is one module),
(b) imports up the layers (a module imports from its own floor or below, as ``FLOORS`` says; sideways, between two
    parts of one floor, only as ``SIDEWAYS`` lists),
(c) private modules (``_x``) of another package (a package's own private modules are its business).

Names a package loads on first use (``lazy_exports`` in its ``__init__``) count as imports of the submodule that
defines them, which is what Python runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "wsi_pipeline"
DOC = ROOT / "docs" / "architecture.md"

# Floor of each top-level module or subpackage of wsi_pipeline, from the ground up; the same as docs/architecture.md.
FLOORS: dict[int, set[str]] = {
    0: {"__init__", "_lazy", "_text", "_memory", "errors", "files", "locks", "config", "provenance", "device"},
    1: {"flat_image", "slide", "stain", "discovery", "store", "batch"},
    2: {"tissue", "encoders", "mil", "mil_datasets"},
    3: {"tiling", "annotations", "cohort"},
    4: {"embedding", "training"},
    5: {"predict", "report"},
    6: {"cluster"},
    7: {"cli", "__main__"},
}

# The imports between two parts of one floor (importer, imported); docs/architecture.md names them.
SIDEWAYS = {
    ("_text", "errors"),
    ("config", "errors"),
    ("device", "errors"),
    ("locks", "errors"),
    ("locks", "files"),
    ("slide", "flat_image"),
    ("discovery", "slide"),
    ("__main__", "cli"),
    ("predict", "report"),
    ("report", "predict"),
}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name ("wsi_pipeline.tiling._tile"; a package is its __init__: "wsi_pipeline.tiling")
    target: str  # the module it makes Python run (a lazily loaded name: the submodule defining it)
    line: int
    spelled: str  # the module as written (``wsi_pipeline.training``, not the ``training._splits`` it loads)


def _modules(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) for every module under ``package_dir``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _lazy_exports(tree: ast.Module, package: str) -> dict[str, str]:
    """Name -> submodule of a package ``__init__`` that loads names on first use (a dict of ``"name": "._module"``)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and node.keys:
            pairs = list(zip(node.keys, node.values, strict=True))
            if all(
                isinstance(k, ast.Constant)
                and isinstance(k.value, str)
                and isinstance(v, ast.Constant)
                and isinstance(v.value, str)
                and v.value.startswith(".")
                for k, v in pairs
            ):
                out.update({k.value: package + v.value for k, v in pairs})  # type: ignore[union-attr]
    return out


def imports_of(package_dir: Path) -> tuple[set[str], list[Import]]:
    """Every module of the package and every import of one of them by another, wherever it is written."""
    modules = _modules(package_dir)
    root = package_dir.name
    trees = {name: ast.parse(path.read_text(), filename=str(path)) for name, (path, _) in modules.items()}
    lazy = {name: _lazy_exports(trees[name], name) for name, (_, is_package) in modules.items() if is_package}

    def known(name: str) -> str:
        while name not in modules and "." in name:  # `import a.b.c` runs a.b.c, or its nearest module
            name = name.rpartition(".")[0]
        return name

    found = []
    for name, (_, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(trees[name]):
            targets: list[tuple[str, str]] = []  # (run, spelled)
            if isinstance(node, ast.Import):
                targets = [(alias.name, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in modules:
                        targets.append((submodule, submodule))
                    else:
                        targets.append((lazy.get(source, {}).get(alias.name, source), source))
            for target, spelled in targets:
                if target == root or target.startswith(root + "."):
                    resolved = known(target)
                    if resolved != name:
                        found.append(Import(name, resolved, node.lineno, known(spelled)))
    return set(modules), found


def circles(modules: set[str], imports: Iterable[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        graph[imp.importer].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def unit(module: str) -> str:
    """The top-level module or subpackage a module belongs to (``wsi_pipeline.tiling._tile`` -> ``tiling``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward(imports: Iterable[Import], floors: dict[int, set[str]]) -> list[str]:
    floor_of = {name: floor for floor, names in floors.items() for name in names}
    return [
        f"{imp.importer} (floor {floor_of[unit(imp.importer)]}) imports {imp.target} "
        f"(floor {floor_of[unit(imp.target)]}), line {imp.line}"
        for imp in imports
        if floor_of[unit(imp.importer)] < floor_of[unit(imp.target)]
    ]


def sideways(imports: Iterable[Import], floors: dict[int, set[str]]) -> set[tuple[str, str]]:
    floor_of = {name: floor for floor, names in floors.items() for name in names}
    return {
        (unit(imp.importer), unit(imp.target))
        for imp in imports
        if unit(imp.importer) != unit(imp.target) and floor_of[unit(imp.importer)] == floor_of[unit(imp.target)]
    }


def private_crossings(imports: Iterable[Import]) -> list[str]:
    out = []
    for imp in imports:
        parts = imp.spelled.split(".")
        for i, part in enumerate(parts[1:], start=1):
            if part.startswith("_") and not part.startswith("__"):
                owner = ".".join(parts[:i])
                if imp.importer != owner and not imp.importer.startswith(owner + "."):
                    out.append(f"{imp.importer} imports {imp.spelled}, private to {owner}, line {imp.line}")
                break
    return out


@pytest.fixture(scope="module")
def package_imports() -> tuple[set[str], list[Import]]:
    return imports_of(PACKAGE)


def test_every_module_has_a_floor(package_imports: tuple[set[str], list[Import]]) -> None:
    modules, _ = package_imports
    placed = set().union(*FLOORS.values())
    missing = sorted({unit(m) for m in modules} - placed)
    assert not missing, f"give {missing} a floor in FLOORS here and in docs/architecture.md"
    assert not placed - {unit(m) for m in modules}, "FLOORS names modules that are gone"


def test_no_import_circles(package_imports: tuple[set[str], list[Import]]) -> None:
    modules, imports = package_imports
    assert circles(modules, imports) == []


def test_no_import_up_the_layers(package_imports: tuple[set[str], list[Import]]) -> None:
    _, imports = package_imports
    assert upward(imports, FLOORS) == []


def test_sideways_imports_are_the_listed_ones(package_imports: tuple[set[str], list[Import]]) -> None:
    _, imports = package_imports
    unlisted = sorted(sideways(imports, FLOORS) - SIDEWAYS)
    assert not unlisted, f"{unlisted}: another floor for one of them, or list it in SIDEWAYS and docs/architecture.md"


def test_no_private_module_of_another_package(package_imports: tuple[set[str], list[Import]]) -> None:
    _, imports = package_imports
    assert private_crossings(imports) == []


def test_the_doc_shows_the_same_floors() -> None:
    # docs/architecture.md's table: "| <floor> | `module` `package/` ... | what lives there |".
    rows = re.findall(r"^\| (\d+) [^|]*\| ([^|]*)\|", DOC.read_text(), flags=re.M)
    documented = {int(floor): {name.rstrip("/") for name in re.findall(r"`([^`]+)`", names)} for floor, names in rows}
    assert documented == FLOORS


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    # A tiny package with one of each fault: the checks must fail on it, not only pass on the real one.
    pkg = tmp_path / "wsi_pipeline"
    files = {
        "__init__.py": "",
        "errors.py": "from .store import X  # up the layers\n",
        "store.py": "X = 1\n",
        "a/__init__.py": "from .._lazy import lazy_exports\n"
        "__getattr__, __dir__ = lazy_exports(__name__, {'f': '._f'})\n",
        "a/_f.py": "def f():\n    from ..b import g  # a lazy import: still an import\n",
        "b/__init__.py": "from ._g import g\n",
        "b/_g.py": "from ..a import f\nfrom ..a._f import f as private\ng = 1\n",
        "_lazy.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    modules, imports = imports_of(pkg)
    assert circles(modules, imports) == [["wsi_pipeline.a._f", "wsi_pipeline.b", "wsi_pipeline.b._g"]]
    floors = {0: {"__init__", "_lazy", "errors"}, 1: {"store"}, 2: {"a", "b"}}
    assert upward(imports, floors) == ["wsi_pipeline.errors (floor 0) imports wsi_pipeline.store (floor 1), line 1"]
    assert private_crossings(imports) == [
        "wsi_pipeline.b._g imports wsi_pipeline.a._f, private to wsi_pipeline.a, line 2"
    ]
