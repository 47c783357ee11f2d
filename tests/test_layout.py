"""The package layout README describes: every import of tuner's own code points down the layers, so no two
packages import each other. Read from the source (every import, at the top or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import tuner

# Top to bottom; a package may import those below it. review and train stand side by side, as do study's two
# floors below (process and data), and each imports neither of its neighbours.
LAYERS = [{"__main__"}, {"cli"}, {"commands"}, {"review", "train"}, {"study"}, {"process", "data"}, {"memory"}, {"ground"}]
GROUND = {"config", "checks", "errors", "files", "offline", "params", "__init__"}
ROOT = Path(tuner.__file__).parent


def _package(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in GROUND or not (ROOT / parts[1]).exists() and not (ROOT / f"{parts[1]}.py").exists():
        return "ground"  # tuner itself, a ground-floor module, or a name of tuner's own (__version__)
    return parts[1]


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tuner":
            # `from tuner import files` names a module; `from tuner.study import search` names study's
            out += [f"{node.module}.{alias.name}" if node.module == "tuner" else node.module for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [alias.name for alias in node.names if alias.name.split(".")[0] == "tuner"]
    return out


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package): the module pairs, for every import between two packages."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = ".".join(("tuner", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        for imported in _imports(path):
            pair = (_package(module), _package(imported))
            if pair[0] != pair[1]:
                edges.setdefault(pair, []).append(f"{module} imports {imported}")
    return edges


def layer(package: str) -> int:
    return next(index for index, members in enumerate(LAYERS) if package in members)


def test_every_package_is_in_a_layer():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} | {"cli", "__main__", "ground"}
    for package in packages:
        assert any(package in members for members in LAYERS), f"{package} is in no layer of this test and README"


def test_every_import_points_down_the_layers():
    edges = import_edges()
    assert edges, "no imports between packages were found: the reading of the source is broken"
    upward = [f"{' ; '.join(modules[:2])} ({a} -> {b})" for (a, b), modules in edges.items() if layer(b) <= layer(a)]
    assert not upward, "imports that do not point down the layers: " + " | ".join(upward)


def test_no_two_packages_import_each_other():
    edges = import_edges()
    circles = [(a, b) for (a, b) in edges if (b, a) in edges]
    assert not circles
