"""Imports run one way down the pipeline (issue #13).

Every module under ``rra/`` is parsed with :mod:`ast` (nothing is imported) and each of its
imports of an ``rra`` module — at the top, inside a function (lazy), under ``TYPE_CHECKING``, or
as a module name string handed to ``importlib.import_module`` — must name its own package or a
package of a lower layer of :data:`LAYERS`. Two packages of the same layer are independent:
neither may import the other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "rra"

#: The layers, bottom first. A package ("rra.knn") or top-level module ("rra.io") belongs to
#: one layer; the pipeline runs data → models → train → embed → knn → metrics → layers/stac;
#: ``rra.config`` validates a whole study against every stage's registry (so it sits above the
#: stages), the report reads everything, and the entry points sit on top.
LAYERS: tuple[tuple[str, ...], ...] = (
    # shared helpers (``rra`` itself: the package's __init__; rra.runs: the folder names)
    ("rra", "rra.io", "rra.device", "rra.runs"),
    ("rra.data",),
    ("rra.models",),
    ("rra.train",),
    ("rra.embed",),
    ("rra.knn",),
    ("rra.metrics",),
    ("rra.layers", "rra.stac"),  # analyses built on the metrics (stac: the STAC scale choice)
    ("rra.config",),
    ("rra.report",),
    ("rra.api", "rra.cli"),
    ("rra.__main__",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MODULE_NAME = re.compile(r"rra(\.[A-Za-z_]\w*)+")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether ``name`` is a module or package under rra/."""
    rel = Path(*name.split("."))
    return (ROOT.parent / rel).with_suffix(".py").is_file() or (ROOT.parent / rel / "__init__.py").is_file()


def unit_of(name: str) -> str:
    """The package (or top-level module) of a dotted rra module name: its first two parts."""
    return ".".join(name.split(".")[:2])


def imports_of(path: Path, source: str) -> list[tuple[int, str]]:
    """``(line, imported rra module)`` for every import in ``source`` (the file ``path``),
    relative ones resolved; ``from pkg import name`` counts as importing ``pkg.name`` when that
    is a module."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[:len(parts) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                found.append((node.lineno, sub if is_module(sub) else origin))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and MODULE_NAME.fullmatch(node.value) and is_module(node.value)):
            found.append((node.lineno, node.value))  # importlib.import_module("rra.…") targets
    found = [(line, name) for line, name in found if name == "rra" or name.startswith("rra.")]
    return list(dict.fromkeys(found))  # one entry per module and line


def module_violations(path: Path, source: str) -> list[str]:
    """One line per import of ``source`` (the module at ``path``) against the layering."""
    module = module_name(path)
    own = unit_of(module)
    if own not in RANK:
        return [f"{module}: its package {own} has no layer in LAYERS (add it)"]
    out = []
    for line, name in imports_of(path, source):
        target = unit_of(name)
        if target == own:
            continue
        if target not in RANK:
            out.append(f"{module} (line {line}) imports {name}, whose package {target} has no "
                       "layer in LAYERS")
        elif RANK[target] >= RANK[own]:
            where = "the same layer as" if RANK[target] == RANK[own] else "a layer above"
            out.append(f"{module} (line {line}) imports {name}: {target} is in {where} {own}")
    return out


def test_every_module_is_parsed():
    names = {module_name(p) for p in ROOT.rglob("*.py")}
    assert {"rra.knn.exact", "rra.metrics.common", "rra.io", "rra.cli"} <= names


def test_imports_run_down_the_layers():
    bad = [v for path in sorted(ROOT.rglob("*.py"))
           for v in module_violations(path, path.read_text(encoding="utf-8"))]
    assert not bad, ("imports against the layering (LAYERS in tests/test_architecture.py):\n"
                     + "\n".join(bad))


@pytest.mark.parametrize("source, message", [
    ("def f():\n    from rra.metrics.common import check_labels\n",
     "rra.knn.fake (line 2) imports rra.metrics.common: rra.metrics is in a layer above rra.knn"),
    ("from rra import stac\n", "rra.knn.fake (line 1) imports rra.stac: rra.stac is in a layer"),
    ("from .. import report\n", "rra.knn.fake (line 1) imports rra.report: rra.report is in"),
    ("from ..metrics import tables\n", "rra.knn.fake (line 1) imports rra.metrics.tables"),
    ("import importlib\nM = importlib.import_module('rra.layers.stage')\n",
     "rra.knn.fake (line 2) imports rra.layers.stage"),
    ("import rra.stac\n", "rra.layers.fake (line 1) imports rra.stac: rra.stac is in the same"),
])
def test_an_upward_import_is_reported(source, message):
    """The check itself: an upward import, lazy or relative, is named with module and line."""
    package = message.split(".")[1]
    found = module_violations(ROOT / package / "fake.py", source)
    assert len(found) == 1 and found[0].startswith(message), found


def test_imports_within_a_package_and_downward_pass():
    source = ("from rra.knn.common import Points\nfrom . import kernels\nfrom rra.io import save_npy\n"
              "def f():\n    from rra.embed.pool import parse_scales\n")
    assert module_violations(ROOT / "knn" / "fake.py", source) == []
