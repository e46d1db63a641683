"""The package's imports form layers: no import circle, and no import from a lower layer to a higher one,
in the order docs/DESIGN.md ("Layers") writes down; the test reads the order from that section.

Every import counts: at module level, inside functions, under `if TYPE_CHECKING:`, and a module of the
package named by a string constant (what `importlib.import_module` is given, as in the backend registry).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "npgmf_edge"
DESIGN = ROOT / "docs" / "DESIGN.md"


def module_files(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's __init__)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports. `from x import y` imports x.y where that is a
    module, else x."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                subs = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
                imported.update(subs if len(subs) == len(node.names) else {*subs, base})
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                imported.add(node.value)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def layer_index(module: str, layers: list[list[str]], package: str) -> int:
    """The layer of `module`'s first component below the package (the package's own __init__: its name)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else package
    for index, names in enumerate(layers):
        if top in names:
            return index
    raise AssertionError(f"{module} belongs to no layer: add {top!r} to docs/DESIGN.md's layers")


def upward_imports(graph: dict[str, set[str]], layers: list[list[str]], package: str) -> list[str]:
    """'importer (layer) -> imported (layer)' for every import from a lower layer to a higher one."""
    found = []
    for importer, targets in sorted(graph.items()):
        low = layer_index(importer, layers, package)
        for target in sorted(targets):
            high = layer_index(target, layers, package)
            if high > low:
                found.append(f"{importer} (layer {low}) -> {target} (layer {high})")
    return found


def design_layers(text: str) -> list[list[str]]:
    """The layers of DESIGN.md's "## Layers" section, lowest first: one `- **L<n> ...**` line each, its
    members in backticks."""
    found = re.search(r"^## Layers\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert found, "no '## Layers' section"
    section = found.group(1)
    layers = {}
    for number, rest in re.findall(r"^- \*\*L(\d+)[^*]*\*\*(.*)$", section, flags=re.MULTILINE):
        layers[int(number)] = re.findall(r"`([\w.]+)`", rest)
    assert sorted(layers) == list(range(len(layers))), f"layers numbered {sorted(layers)}"
    return [layers[i] for i in range(len(layers))]


# --- the package ------------------------------------------------------------------------------------


def test_the_package_has_no_import_circle() -> None:
    assert find_cycle(import_graph(ROOT, PACKAGE)) is None


def test_no_module_imports_from_a_higher_layer_than_its_own() -> None:
    layers = design_layers(DESIGN.read_text())
    assert len(layers) >= 5
    assert upward_imports(import_graph(ROOT, PACKAGE), layers, PACKAGE) == []


def test_every_layer_member_exists() -> None:
    """A renamed module must be renamed in DESIGN.md too, or the picture would describe nothing."""
    tops = {m.split(".")[1] if "." in m else m for m in module_files(ROOT, PACKAGE)}
    named = [name for layer in design_layers(DESIGN.read_text()) for name in layer]
    assert sorted(set(named) - tops) == []
    assert len(named) == len(set(named)), "a name appears in two layers"


# --- the checker itself, on a made-up package ---------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"__init__.py": "", **files}.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_circle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "a.py": "from pkg.b import helper\n",
            "b.py": "def helper():\n    from pkg import c\n",
            "c.py": "from . import a\n",
            "d.py": "import pkg.a\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"} and graph["pkg.d"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    del graph["pkg.c"]
    assert find_cycle(graph) is None


def test_type_checking_and_importlib_names_count(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import X\n",
            "mid.py": "import importlib\nMODULE = 'pkg.high'\n",
            "high.py": "from .low import *\nfrom .sub.deep import f\n",
            "sub/__init__.py": "",
            "sub/deep.py": "from .. import mid\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.low"] == {"pkg.high"} and graph["pkg.mid"] == {"pkg.high"}
    assert graph["pkg.high"] == {"pkg.low", "pkg.sub.deep"} and graph["pkg.sub.deep"] == {"pkg.mid"}
    layers = [["pkg", "low"], ["mid", "sub"], ["high"]]
    assert upward_imports(graph, layers, "pkg") == [
        "pkg.low (layer 0) -> pkg.high (layer 2)",
        "pkg.mid (layer 1) -> pkg.high (layer 2)",
    ]
    assert upward_imports(graph, [["pkg", "high"], ["mid", "sub"], ["low"]], "pkg") == [
        "pkg.high (layer 0) -> pkg.low (layer 2)",
        "pkg.high (layer 0) -> pkg.sub.deep (layer 1)",
    ]  # sub.deep -> mid stays inside layer 1: allowed


def test_a_module_outside_every_layer_is_named(tmp_path: Path) -> None:
    graph = import_graph(_package(tmp_path, {"a.py": "import pkg.b\n", "b.py": ""}), "pkg")
    with pytest.raises(AssertionError, match=r"pkg\.b belongs to no layer: add 'b'"):
        upward_imports(graph, [["pkg", "a"]], "pkg")


def test_layers_are_read_from_the_design_text() -> None:
    text = "## Layers\n\n- **L1 top**: `b`, `c.d`\n- **L0 base**: `a`\n\n## Next\n- **L2 no**: `z`\n"
    assert design_layers(text) == [["a"], ["b", "c.d"]]
