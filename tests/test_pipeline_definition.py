"""dvc.yaml against the code: every stage depends on every project file its command imports.

`dvc repro` reruns a stage only when one of its listed `deps` changes, so a module the stage
imports but does not list lets a change to it leave stale models "up to date". The stages'
`deps` are written by hand; these tests walk the imports instead and compare.

A stage whose `cmd` is `pilltrack <command>` runs `tf_pilltrack.<module>` (the module that
`tf_pilltrack/cli.py` passes to `_run_stage` in that command). From it, every `import` and
`from ... import` statement anywhere in the file (inside functions too) that names a module of
`tf_pilltrack` or `edge_runtime` is followed, transitively. `from package import name` counts the
module `package/name.py` when there is one, else the package's `__init__.py`; `import package`
counts `package/__init__.py`. A module's package `__init__.py` counts too: Python runs it before
the module (tf_pilltrack's sets TensorFlow's Keras and its threads).
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("tf_pilltrack", "edge_runtime")
COMMAND = re.compile(r"^pilltrack\s+([A-Za-z0-9_-]+)")


def module_file(name: str) -> pathlib.Path | None:
    """The project file of dotted module `name` (a module or a package's __init__), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def direct_imports(path: pathlib.Path) -> set[pathlib.Path]:
    """Project files named by the import statements of `path`, at any depth of its syntax tree."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[pathlib.Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = module_file(alias.name)
                if target is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .x import y
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                target = module_file(f"{source}.{alias.name}") or module_file(source)
                if target is not None:
                    found.add(target)
    return found


def packages_of(path: pathlib.Path) -> set[pathlib.Path]:
    """The `__init__.py` of every package above `path`, which Python runs before `path`."""
    found = set()
    for folder in path.relative_to(ROOT).parents:
        if folder != pathlib.Path(".") and (ROOT / folder / "__init__.py").is_file():
            found.add(ROOT / folder / "__init__.py")
    return found - {path}


def import_closure(path: pathlib.Path) -> set[pathlib.Path]:
    """`path` and every project file it imports, directly or through other project files."""
    seen = {path}
    todo = [path]
    while todo:
        current = todo.pop()
        for target in direct_imports(current) | packages_of(current):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def cli_stage_modules() -> dict[str, str]:
    """`pilltrack` command name -> the tf_pilltrack module its `_run_stage` call runs."""
    tree = ast.parse((ROOT / "tf_pilltrack" / "cli.py").read_text())
    modules = {}
    for function in tree.body:
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_run_stage"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                modules[function.name.replace("_", "-")] = node.args[0].value
    return modules


def pipeline_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def pilltrack_stages() -> list[tuple[str, str]]:
    """(stage name, pilltrack command) for every dvc stage whose cmd is `pilltrack <command>`."""
    found = []
    for name, stage in pipeline_stages().items():
        match = COMMAND.match(str(stage.get("cmd", "")).strip())
        if match:
            found.append((name, match.group(1)))
    return found


def stage_deps(stage: dict) -> set[str]:
    return {str(dep) for dep in stage.get("deps", [])}


def relative(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_every_pipeline_stage_runs_a_pilltrack_command_with_a_module():
    stages = pilltrack_stages()
    assert len(stages) == len(pipeline_stages()), "a dvc stage does not run `pilltrack <command>`"
    modules = cli_stage_modules()
    for name, command in stages:
        assert command in modules, f"stage {name}: `pilltrack {command}` runs no stage module in tf_pilltrack/cli.py"
        assert module_file(f"tf_pilltrack.{modules[command]}") is not None, modules[command]


def test_import_walk_follows_every_form_of_project_import():
    """The walker itself: top-level, `from package import module`, `from module import name` and
    imports inside functions, transitively (so an empty walk cannot pass the test below)."""
    teacher = {relative(path) for path in import_closure(ROOT / "tf_pilltrack" / "teacher.py")}
    assert "tf_pilltrack/__init__.py" in teacher          # the package of tf_pilltrack/teacher.py
    assert "tf_pilltrack/models.py" in teacher            # from tf_pilltrack import models
    assert "edge_runtime/preprocessing.py" in teacher     # from edge_runtime.preprocessing import normalise
    assert "tf_pilltrack/augmentation.py" in teacher      # sampling: from tf_pilltrack.augmentation import augment
    assert "edge_runtime/__init__.py" in teacher          # the package of edge_runtime/preprocessing.py
    synthesis = {relative(path) for path in direct_imports(ROOT / "tf_pilltrack" / "synthesis" / "generation.py")}
    assert {"tf_pilltrack/composition.py", "tf_pilltrack/paths.py"} <= synthesis  # inside functions
    assert all(not path.startswith(("numpy", "cv2")) for path in teacher)


@pytest.mark.parametrize("stage_name,command", pilltrack_stages())
def test_stage_depends_on_every_project_file_it_imports(stage_name, command):
    module = cli_stage_modules()[command]
    closure = import_closure(module_file(f"tf_pilltrack.{module}"))
    listed = stage_deps(pipeline_stages()[stage_name])
    missing = sorted(relative(path) for path in closure if relative(path) not in listed)
    assert not missing, f"dvc.yaml stage {stage_name} (tf_pilltrack/{module}.py) imports but does not depend on: {missing}"


@pytest.mark.parametrize("stage_name,command", pilltrack_stages())
def test_stage_depends_on_no_project_module_it_does_not_import(stage_name, command):
    """The other way round: a listed module the stage never imports makes an edit to it rerun the
    stage (and every stage after it) for nothing. The code deps are exactly the import walk."""
    module = cli_stage_modules()[command]
    closure = {relative(path) for path in import_closure(module_file(f"tf_pilltrack.{module}"))}
    code = {dep for dep in stage_deps(pipeline_stages()[stage_name])
            if dep.startswith(tuple(f"{package}/" for package in PACKAGES)) and dep.endswith(".py")}
    extra = sorted(code - closure)
    assert not extra, f"dvc.yaml stage {stage_name} (tf_pilltrack/{module}.py) depends on modules it never imports: {extra}"


def test_device_only_code_is_no_training_stage_dependency():
    """edge_runtime/__init__.py imports nothing, so a training stage that needs one device module
    (preprocessing, storage) does not run, nor depend on, the device's identification, gallery
    edits or interpreter: editing them leaves generate, prepare, teacher and distill up to date."""
    assert not [node for node in ast.walk(ast.parse((ROOT / "edge_runtime" / "__init__.py").read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom))], "edge_runtime/__init__.py imports modules"
    device_only = {f"edge_runtime/{name}.py" for name in ("identification", "enrollment", "gallery", "bundle",
                                                          "interpreter", "counter", "server", "cli", "capture")}
    stages = pipeline_stages()
    for name in ("generate", "prepare", "teacher", "distill"):
        assert not device_only & stage_deps(stages[name]), f"stage {name} depends on device-only code"


def test_no_stage_module_imports_another():
    """Each stage's code is its own module plus shared ones: a stage module that imports another
    runs (and depends on) that stage's code too. Shared pieces live in modules no stage runs."""
    stage_modules = {module_file(f"tf_pilltrack.{module}") for module in cli_stage_modules().values()}
    assert len(stage_modules) >= 10  # synthesis, preparation, teacher, distillation, export, calibration, evaluation,
    # firmware, budget, benchmark
    for module in sorted(stage_modules):
        others = sorted(relative(path) for path in import_closure(module) & stage_modules if path != module)
        assert not others, f"{relative(module)} imports stage modules {others}"
