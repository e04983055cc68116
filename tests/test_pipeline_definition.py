"""dvc.yaml against the code: every stage depends on every project file its command imports.

`dvc repro` reruns a stage only when one of its listed `deps` changes, so a module the stage
imports but does not list lets a change to it leave stale models "up to date". The stages'
`deps` are written by hand; these tests walk the imports instead and compare.

A stage whose `cmd` is `pilltrack <command>` runs `tf_pilltrack.stages.<command>` (the module that
the command's function in `tf_pilltrack/cli.py` imports from `tf_pilltrack.stages`). From it, every `import` and
`from ... import` statement anywhere in the file (inside functions too) that names a module of
`tf_pilltrack` or `edge_runtime` is followed, transitively. `from package import name` counts the
module `package/name.py` when there is one, else the package's `__init__.py`; `import package`
counts `package/__init__.py`. A module's package `__init__.py` counts too: Python runs it before
the module (tf_pilltrack's sets TensorFlow's Keras and its threads). A file that a module's package
ships beside it (a template such as tf_pilltrack/firmware/main.cc) counts when the module's source
names it in quotes.
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


def package_files(path: pathlib.Path) -> set[pathlib.Path]:
    """The non-Python files beside `path` that its source names in quotes (templates it reads)."""
    text = path.read_text()
    return {other for other in path.parent.iterdir()
            if other.is_file() and other.suffix not in (".py", ".pyc") and f'"{other.name}"' in text}


def import_closure(path: pathlib.Path) -> set[pathlib.Path]:
    """`path`, every project file it imports, directly or through other project files, and the
    files those modules read beside them (`package_files`)."""
    seen = {path}
    todo = [path]
    while todo:
        current = todo.pop()
        for target in direct_imports(current) | packages_of(current):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen | {other for module in seen for other in package_files(module)}


def cli_stage_modules() -> dict[str, str]:
    """`pilltrack` command name -> the module of tf_pilltrack.stages its function in cli.py imports."""
    tree = ast.parse((ROOT / "tf_pilltrack" / "cli.py").read_text())
    modules = {}
    for function in tree.body:
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and node.module == "tf_pilltrack.stages":
                for alias in node.names:
                    modules[function.name.replace("_", "-")] = f"tf_pilltrack.stages.{alias.name}"
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
        assert module_file(modules[command]) is not None, modules[command]
        assert name == command, f"dvc stage {name} runs `pilltrack {command}`: a stage is named as its command"


def test_every_command_runs_the_stage_module_of_its_name():
    """The file name equals the command (and the dvc stage): `pilltrack enroll` runs
    tf_pilltrack/stages/enroll.py, and every module there is some command's."""
    modules = cli_stage_modules()
    assert modules, "tf_pilltrack/cli.py imports no stage"
    for command, module in modules.items():
        assert module == f"tf_pilltrack.stages.{command.replace('-', '_')}", f"`pilltrack {command}` runs {module}"
    files = {path.stem for path in (ROOT / "tf_pilltrack" / "stages").glob("*.py") if path.name != "__init__.py"}
    assert files == {module.rpartition(".")[2] for module in modules.values()}


def test_import_walk_follows_every_form_of_project_import():
    """The walker itself: top-level, `from package import module`, `from module import name` and
    imports inside functions, transitively (so an empty walk cannot pass the test below)."""
    teacher = {relative(path) for path in import_closure(ROOT / "tf_pilltrack" / "stages" / "teacher.py")}
    assert "tf_pilltrack/__init__.py" in teacher          # the package of tf_pilltrack/stages/teacher.py
    assert "tf_pilltrack/stages/__init__.py" in teacher   # likewise
    assert "tf_pilltrack/training/teacher.py" in teacher  # from tf_pilltrack.training.teacher import train
    assert "tf_pilltrack/training/models.py" in teacher   # training.teacher: from tf_pilltrack.training import models
    assert "edge_runtime/preprocessing.py" in teacher     # from edge_runtime.preprocessing import normalise
    assert "tf_pilltrack/data/augmentation.py" in teacher  # sampling: from tf_pilltrack.data.augmentation import augment
    assert "edge_runtime/__init__.py" in teacher          # the package of edge_runtime/preprocessing.py
    shards = {relative(path) for path in direct_imports(ROOT / "tf_pilltrack" / "stages" / "prepare.py")}
    assert "tf_pilltrack/data/shards.py" in shards        # inside a function
    firmware = {relative(path) for path in import_closure(ROOT / "tf_pilltrack" / "stages" / "firmware.py")}
    assert "tf_pilltrack/firmware/main.cc" in firmware    # a template its library names
    assert all(not path.startswith(("numpy", "cv2")) for path in teacher)


@pytest.mark.parametrize("stage_name,command", pilltrack_stages())
def test_stage_depends_on_every_project_file_it_imports(stage_name, command):
    module = cli_stage_modules()[command]
    closure = import_closure(module_file(module))
    listed = stage_deps(pipeline_stages()[stage_name])
    missing = sorted(relative(path) for path in closure if relative(path) not in listed)
    assert not missing, f"dvc.yaml stage {stage_name} ({module}) imports but does not depend on (add): {missing}"


@pytest.mark.parametrize("stage_name,command", pilltrack_stages())
def test_stage_depends_on_no_project_module_it_does_not_import(stage_name, command):
    """The other way round: a listed module the stage never imports makes an edit to it rerun the
    stage (and every stage after it) for nothing. The code deps are exactly the import walk."""
    module = cli_stage_modules()[command]
    closure = {relative(path) for path in import_closure(module_file(module))}
    code = {dep for dep in stage_deps(pipeline_stages()[stage_name])
            if dep.startswith(tuple(f"{package}/" for package in PACKAGES))}
    extra = sorted(code - closure)
    assert not extra, f"dvc.yaml stage {stage_name} ({module}) depends on files it never imports (remove): {extra}"


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
