"""The dependency rule of ``sgg_jax`` (README, "Design"), checked on the source without importing it.

Layers, lowest first: core ← data ← {detection, relation, retrieval} ← {train, evaluation} ←
experiment ← projects. A module may import its own layer and the layers below it, never one above; packages of
one tier do not import each other, except that ``relation`` builds on ``detection`` (the ``roi``
feature source and SGDet candidates are a detector's); a project imports no other project. The
entry points (``experiments``, ``data_prep``, ``benchmarks``) sit above everything and are not
checked here. ``sgg_jax/__init__.py`` is the public API: it re-exports names from any layer.

Every ``import`` / ``from ... import`` statement counts, including those inside functions
(lazy imports) and relative ones.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sgg_jax"

CORE_MODULES = {"structures", "boxes", "masked", "errors", "nn", "distributed", "launch"}
SHARED = ("core", "data", "detection", "relation", "retrieval", "train", "evaluation", "experiment")
# What each shared layer may import (besides itself); a project may import all of SHARED.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "detection": {"core", "data"},
    "retrieval": {"core", "data"},
    "relation": {"core", "data", "detection"},
    "train": {"core", "data", "detection", "relation", "retrieval"},
    "evaluation": {"core", "data", "detection", "relation", "retrieval"},
    "experiment": {"core", "data", "detection", "relation", "retrieval", "train", "evaluation"},
}

# Imports that break the rule today, as (importing file, imported module). Each entry must still
# occur (the test fails otherwise, so the list cannot outlive its reason).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _layer(module: str) -> str | None:
    """The layer of a dotted module name under ``sgg_jax`` (None for the package itself)."""
    parts = module.split(".")
    assert parts[0] == "sgg_jax", module
    if len(parts) == 1:
        return None
    if parts[1] in CORE_MODULES:
        return "core"
    if parts[1] in SHARED:
        return parts[1]
    if parts[1] == "projects":
        return f"projects.{parts[2]}" if len(parts) > 2 else "projects"
    raise AssertionError(f"{module} belongs to no layer; add it to tests/test_layers.py")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: pathlib.Path, source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``sgg_jax`` module ``source`` (the text of ``path``) imports;
    ``from a import b`` gives ``a.b`` when ``b`` is a module or package, else ``a``."""
    tree = ast.parse(source, filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "sgg_jax"
            ]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "sgg_jax":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                relative = pathlib.Path(*candidate.split("."))
                is_module = (ROOT / relative).with_suffix(".py").is_file() or (
                    ROOT / relative / "__init__.py"
                ).is_file()
                found.append((node.lineno, candidate if is_module else base))
    return list(dict.fromkeys(found))


def _file_violations(path: pathlib.Path, source: str) -> list[tuple[str, int, str, str]]:
    """``(file, line, imported module, reason)`` of every import of ``source`` (the text of ``path``)
    that breaks the rule."""
    rel = path.relative_to(ROOT).as_posix()
    if rel == "sgg_jax/__init__.py":
        return []  # the public API re-exports from every layer
    mine = _layer(_module_name(path))
    found = []
    for line, module in _imported(path, source):
        theirs = _layer(module)
        if theirs == mine:
            continue
        if theirs is None:
            reason = "imports the sgg_jax package (public API) from inside the library"
        elif mine.startswith("projects"):
            if not theirs.startswith("projects") or mine == "projects":
                continue
            reason = f"{mine} imports another project, {theirs}"
        elif theirs in ALLOWED[mine]:
            continue
        else:
            reason = f"layer {mine} imports {theirs}, which it may not"
        found.append((rel, line, module, reason))
    return found


def _violations() -> list[tuple[str, int, str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += _file_violations(path, path.read_text())
    return found


def test_every_module_belongs_to_a_layer():
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(ROOT).as_posix() != "sgg_jax/__init__.py":
            _layer(_module_name(path))


def test_no_upward_or_cross_project_import():
    unexpected = [
        f"{rel}:{line}: imports {module}: {reason}"
        for rel, line, module, reason in _violations()
        if (rel, module) not in KNOWN_VIOLATIONS
    ]
    assert not unexpected, "dependency rule broken (README, Design):\n" + "\n".join(unexpected)


def test_known_violations_are_still_needed():
    occurring = {(rel, module) for rel, _, module, _ in _violations()}
    stale = sorted(KNOWN_VIOLATIONS - occurring)
    assert not stale, f"no longer violated, remove from KNOWN_VIOLATIONS: {stale}"


@pytest.mark.parametrize(
    "package",
    sorted(p.parent.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("__init__.py")),
)
def test_every_package_says_what_lives_there(package):
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert docstring, f"{package}/__init__.py has no docstring"


def test_the_checker_reports_file_line_and_reason():
    relation = PACKAGE / "relation" / "example.py"
    source = "import numpy\n\n\ndef f():\n    from sgg_jax.projects.ra_sgg import augment\n"
    assert _file_violations(relation, source) == [
        (
            "sgg_jax/relation/example.py",
            5,
            "sgg_jax.projects.ra_sgg.augment",
            "layer relation imports projects.ra_sgg, which it may not",
        )
    ]
    project = PACKAGE / "projects" / "cce_scorer" / "example.py"
    assert [v[1:3] for v in _file_violations(project, "from ..ra_sgg.memory_bank import X\n")] == [
        (1, "sgg_jax.projects.ra_sgg.memory_bank")
    ]
    data = PACKAGE / "data" / "example.py"
    assert [v[2] for v in _file_violations(data, "from sgg_jax import relation, errors\n")] == [
        "sgg_jax.relation"
    ]
    assert _file_violations(project, "from sgg_jax.relation.losses import cross_entropy\n") == []
