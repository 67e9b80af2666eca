"""The house rules of docs/architecture.md, read from the source: which room may import which, no
import circles between modules, and nothing at the top of `models/` but what every room shares.

Imports are read with `ast` from every file, including imports inside functions (a lazy import is
still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "training", "export", "serving", "sesam")
BASE = {"models.base"}  # models/config.py (settings) and models/io.py, shared by every room
MODEL_ROOMS = {"models.runtime", "models.engine", "models.students", "models.labels", "models.jobs"}

# room -> the rooms it may import (besides itself); data flows weak labels -> labels -> training ->
# students -> export -> serving, and the command line sits on top
MAY_IMPORT: dict[str, set[str]] = {
    "models.base": set(),
    "models.runtime": BASE,
    "models.engine": BASE | {"models.runtime"},
    "models.students": BASE | {"models.runtime"},
    "models.labels": BASE | {"models.runtime", "models.engine", "models.students"},
    "models.jobs": BASE | {"models.runtime", "models.engine", "models.students", "models.labels"},
    "training": BASE | MODEL_ROOMS,
    "export": BASE | {"models.runtime", "models.engine", "models.students"},
    "serving": BASE | MODEL_ROOMS,
    "sesam": BASE | MODEL_ROOMS | {"training", "export", "serving"},
}


def room(module: str) -> str:
    """The room of a dotted module name: `models.<room>` inside models, else the top package."""
    parts = module.split(".")
    if parts[0] != "models" or len(parts) == 1:
        return parts[0]
    return "models.base" if parts[1] in ("config", "io") else f"models.{parts[1]}"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports (absolute imports, anywhere in the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    assert len(files) > 100, "the source tree was not found"
    return {module_name(p): project_imports(p) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                    found.append(sorted(component))
    return found


def test_cycle_finder_on_a_hand_made_graph() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_no_module_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_rooms_import_only_rooms_below() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if room(target) != room(module) and room(target) not in MAY_IMPORT[room(module)]
    )
    assert wrong == []


@pytest.mark.parametrize(
    ("module", "expected"),
    [("models.io", "models.base"), ("models.labels.sesam", "models.labels"), ("training.loop", "training")],
)
def test_room_names(module: str, expected: str) -> None:
    assert room(module) == expected


def test_models_top_level_holds_only_the_shared_files() -> None:
    top = sorted(p.name for p in (REPO / "models").glob("*.py"))
    assert top == ["__init__.py", "config.py", "io.py"]
    rooms = sorted(p.name for p in (REPO / "models").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert rooms == ["engine", "jobs", "labels", "runtime", "students"]


def test_our_packages_are_not_shadowed() -> None:
    """Third-party wheels must not shadow this repo's packages (sam2 1.1.0 ships a top-level
    `training`; `make install` removes it): each imports from here, also outside the repo root."""
    import subprocess
    import sys

    code = "import models, serving, sesam, training, export; print(training.__file__, models.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(path.startswith(str(REPO)) for path in done.stdout.split()), done.stdout
