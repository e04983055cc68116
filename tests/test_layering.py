"""The package's layers, read from its import statements (the walk of test_pipeline_definition):
a stage (tf_pilltrack/stages/<command>.py) imports libraries and never another stage; no library
imports a stage; and no import cycle exists among the project's modules (tf_pilltrack and
edge_runtime). Only the import statements count, not the package `__init__` that Python runs first."""

from __future__ import annotations

import pathlib

from test_pipeline_definition import PACKAGES, ROOT, direct_imports, relative

STAGES = ROOT / "tf_pilltrack" / "stages"


def project_modules() -> list[pathlib.Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def stage_modules() -> set[pathlib.Path]:
    return {path for path in STAGES.glob("*.py") if path.name != "__init__.py"}


def import_cycle(graph: dict[pathlib.Path, set[pathlib.Path]]) -> list[pathlib.Path]:
    """One cycle of `graph` (module -> modules it imports) as [a, b, ..., a], or [] when it has none."""
    state: dict[pathlib.Path, str] = {}
    path: list[pathlib.Path] = []

    def visit(node: pathlib.Path) -> list[pathlib.Path]:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_every_stage_is_found():
    assert {path.stem for path in stage_modules()} >= {"generate", "prepare", "teacher", "distill", "export", "enroll",
                                                       "evaluate", "reference", "firmware", "check", "summary", "bench"}


def test_no_stage_imports_another_stage():
    stages = stage_modules()
    for stage in sorted(stages):
        others = sorted(relative(path) for path in direct_imports(stage) & stages)
        assert not others, f"{relative(stage)} imports stages {others}: move what they share into a library"


def test_no_library_imports_a_stage():
    stages = stage_modules()
    libraries = [path for path in project_modules() if STAGES not in path.parents and path != STAGES / "__init__.py"
                 and path != ROOT / "tf_pilltrack" / "cli.py"]
    assert len(libraries) > 40
    for library in libraries:
        found = sorted(relative(path) for path in direct_imports(library) & stages)
        assert not found, f"library {relative(library)} imports stages {found}"


def test_no_import_cycle():
    graph = {path: direct_imports(path) - {path} for path in project_modules()}
    cycle = import_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(relative(path) for path in cycle)


def test_cycle_finder_finds_a_cycle():
    a, b, c = (pathlib.Path(name) for name in "abc")
    assert import_cycle({a: {b}, b: {c}, c: {a}}) == [a, b, c, a]
    assert import_cycle({a: {b}, b: {c}, c: set()}) == []
