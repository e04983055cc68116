"""The environments: one list of pins (pyproject.toml) that environment.yaml repeats, and the
device client's environments proven real by installing them without TensorFlow
(`bash scripts/bootstrap.sh edge edge-tflite`) and running the edge tests inside them."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tomllib  # Python >= 3.11: the suite runs in the training environment
import xml.etree.ElementTree as ElementTree

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDGE_TESTS = ["tests/edge_runtime/test_edge_runtime.py", "tests/edge_runtime/test_cli.py",
              "tests/edge_runtime/test_reliability.py", "tests/edge_runtime/test_limits.py",
              "tests/edge_runtime/test_serve.py"]

# environment -> (folder, extras, interpreter library the client must pick, NumPy major version)
EDGE_ENVIRONMENTS = {
    "edge": (".venv-edge", ("edge", "serve", "test"), "ai_edge_litert", 2),
    "edge-tflite": (".venv-edge-tflite", ("edge-tflite", "serve", "test"), "tflite_runtime", 1),
}
TRAIN_EXTRAS = ("train", "serve", "test", "browser", "cluster")
TENSORFLOW_FAMILY = {"tensorflow", "tensorflow-cpu", "tensorflow-intel", "tf-nightly", "tf-keras", "keras"}


def project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)["project"]


def requirements(extras) -> list[Requirement]:
    """The core dependencies and those of `extras`, as pyproject.toml lists them."""
    metadata = project()
    lists = [metadata["dependencies"]] + [metadata["optional-dependencies"][extra] for extra in extras]
    return [Requirement(line) for entries in lists for line in entries]


def key(requirement: Requirement) -> str:
    """Canonical name with its extras, e.g. 'dvc[s3]'."""
    extras = ",".join(sorted(requirement.extras))
    return canonicalize_name(requirement.name) + (f"[{extras}]" if extras else "")


def pinned_version(requirement: Requirement) -> str | None:
    specifiers = list(requirement.specifier)
    if len(specifiers) == 1 and specifiers[0].operator == "==":
        return specifiers[0].version
    return None


def pins(entries: list[Requirement]) -> dict[str, str]:
    """key -> version of every `==` requirement; the same package pinned twice differently is
    an error."""
    found: dict[str, str] = {}
    for requirement in entries:
        version = pinned_version(requirement)
        if version is None:
            continue
        if found.setdefault(key(requirement), version) != version:
            raise ValueError(f"{key(requirement)} pinned both =={found[key(requirement)]} and =={version}")
    return found


def environment_yaml() -> dict:
    with open(os.path.join(ROOT, "environment.yaml")) as handle:
        return yaml.safe_load(handle)


def environment_yaml_pip() -> list[str]:
    sections = [entry["pip"] for entry in environment_yaml()["dependencies"] if isinstance(entry, dict)]
    assert len(sections) == 1, "environment.yaml needs exactly one `pip:` section"
    return sections[0]


# --- one list of pins ---------------------------------------------------------------------------


def test_environment_yaml_has_pyprojects_training_pins():
    from_yaml = pins([Requirement(line) for line in environment_yaml_pip() if not line.startswith("-")])
    from_pyproject = pins(requirements(TRAIN_EXTRAS))
    differences = sorted(
        f"{name}: pyproject.toml =={from_pyproject.get(name, ' (none)')}, "
        f"environment.yaml =={from_yaml.get(name, ' (none)')}"
        for name in from_yaml.keys() | from_pyproject.keys()
        if from_yaml.get(name) != from_pyproject.get(name)
    )
    assert not differences, (
        "environment.yaml's pip pins must be pyproject.toml's (core dependencies + extras "
        f"{'/'.join(TRAIN_EXTRAS)}):\n" + "\n".join(differences))


def test_environment_yaml_shape():
    environment = environment_yaml()
    assert environment["name"] == "pilltrack"
    assert environment["channels"] == ["conda-forge"]
    assert "python=3.11" in environment["dependencies"]
    assert "pip" in environment["dependencies"]
    assert "-e ." in environment_yaml_pip(), "environment.yaml must install PillTrack itself (-e .)"


@pytest.mark.parametrize("extras", [TRAIN_EXTRAS] + [spec[1] for spec in EDGE_ENVIRONMENTS.values()],
                         ids="+".join)
def test_each_environment_pins_each_package_once(extras):
    entries = requirements(extras)
    found = pins(entries)  # raises on two different pins
    for requirement in entries:  # and every pin lies in the ranges given elsewhere
        version = found.get(key(requirement))
        if version is not None and pinned_version(requirement) is None:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{key(requirement)}=={version} is outside {requirement} (extras {extras})")


@pytest.mark.parametrize("extra", TRAIN_EXTRAS)
def test_training_and_test_extras_are_pinned(extra):
    entries = [Requirement(line) for line in project()["optional-dependencies"][extra]]
    loose = [str(requirement) for requirement in entries if pinned_version(requirement) is None]
    assert not loose, f"unpinned requirements in the `{extra}` extra: {loose}"


def test_no_second_list_of_pins():
    others = [os.path.relpath(path, ROOT) for pattern in ("requirements*.txt", "requirements/*.txt",
                                                          "constraints*.txt")
              for path in glob.glob(os.path.join(ROOT, pattern))]
    assert not others, f"pins belong in pyproject.toml alone (environment.yaml repeats them): {others}"


def test_edge_dependencies_have_no_tensorflow():
    for name, (_, extras, _, _) in EDGE_ENVIRONMENTS.items():
        heavy = [str(r) for r in requirements(extras) if canonicalize_name(r.name) in TENSORFLOW_FAMILY]
        assert not heavy, f"the {name} environment would install {heavy}"


# --- the edge environments, installed ------------------------------------------------------------


def edge_python(name: str) -> str:
    folder = EDGE_ENVIRONMENTS[name][0]
    python = os.path.join(ROOT, folder, "bin", "python")
    if not os.path.exists(python):
        pytest.fail(f"{folder} is missing: run `bash scripts/bootstrap.sh {name}` first (CI's .ci/run does)",
                    pytrace=False)
    return python


def clean_environment(**extra) -> dict:
    """This process's environment, less what would let the training environment leak in."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    environment.update(extra)
    return environment


@pytest.mark.parametrize("name", sorted(EDGE_ENVIRONMENTS))
def test_edge_environment_has_no_tensorflow(name):
    result = subprocess.run(
        [edge_python(name), "-c",
         "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)"],
        env=clean_environment(), cwd=ROOT)
    assert result.returncode == 0, (f"TensorFlow is installed in {EDGE_ENVIRONMENTS[name][0]}: an edge "
                                    "dependency pulls it in")


@pytest.mark.parametrize("name", sorted(EDGE_ENVIRONMENTS))
def test_edge_environment_runs_the_client(name):
    _, _, runtime, numpy_major = EDGE_ENVIRONMENTS[name]
    code = (
        "import json, sys, numpy, edge_runtime, edge_runtime.cli\n"
        "from edge_runtime.interpreter import runtime_name\n"
        "print(json.dumps({'file': edge_runtime.__file__, 'runtime': runtime_name(),\n"
        "                  'numpy': numpy.__version__, 'modules': sorted(sys.modules)}))\n"
    )
    result = subprocess.run([edge_python(name), "-c", code], env=clean_environment(), cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert os.path.realpath(facts["file"]).startswith(os.path.realpath(ROOT) + os.sep), (
        f"{name}'s edge_runtime is {facts['file']}, not this checkout's: run `bash scripts/bootstrap.sh {name}`")
    assert facts["runtime"] == runtime
    assert int(facts["numpy"].split(".")[0]) == numpy_major, facts["numpy"]
    assert not [m for m in facts["modules"] if m.split(".")[0] in ("tensorflow", "tf_keras", "tf_pilltrack")]


@pytest.mark.parametrize("name", sorted(EDGE_ENVIRONMENTS))
def test_edge_tests_pass_in_edge_environment(name, edge_model_path, tmp_path):
    """The edge client's own tests, run by the edge environment's interpreter on the tiny model
    that the training environment made (PILLTRACK_EDGE_TEST_MODEL): none may fail or skip for
    want of the model."""
    report = tmp_path / "junit.xml"
    command = [edge_python(name), "-m", "pytest", *EDGE_TESTS, "-q", "-rs", "-p", "no:cacheprovider",
               "--strict-markers", f"--junitxml={report}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env=clean_environment(PILLTRACK_EDGE_TEST_MODEL=str(edge_model_path)))
    output = f"$ {' '.join(command)}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, output
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {field: int(suite.get(field, 0)) for field in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == 0, output
    assert counts["tests"] - counts["skipped"] > 0, f"no edge test ran: {counts}\n{output}"
    skips = [element.get("message", "") for element in suite.iter("skipped")]
    for_want_of_model = [message for message in skips
                         if "TensorFlow" in message or "PILLTRACK_EDGE_TEST_MODEL" in message or "model" in message]
    assert not for_want_of_model, f"edge tests skipped for want of the model: {for_want_of_model}\n{output}"



# --- scripts/bootstrap.sh ------------------------------------------------------------------------


def bootstrap(*names: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/bootstrap.sh", *names], cwd=ROOT, capture_output=True, text=True,
                          env=clean_environment(), timeout=900)


def test_bootstrap_leaves_a_complete_environment_alone():
    edge_python("edge")
    bootstrap("edge")  # brings it up to date if pyproject.toml changed since
    result = bootstrap("edge")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "edge: .venv-edge is up to date" in result.stdout, result.stdout
    assert "ready: edge (.venv-edge)" in result.stdout


def test_bootstrap_refuses_an_unknown_environment():
    result = bootstrap("edge", "gpu")
    assert result.returncode != 0
    assert "unknown environment 'gpu'" in result.stderr
    assert "installing" not in result.stdout  # refused before touching anything


# --- scripts/bootstrap.sh firmware: the Debian packages of the firmware stage ----------------------


def firmware_bootstrap(tmp_path, apt_get: bool, missing_tools: bool = True) -> tuple[subprocess.CompletedProcess, list]:
    """`bootstrap.sh firmware` with a PATH of the few commands the script itself runs and, with
    `missing_tools`, none of the firmware's; `apt_get`: an apt-get there that only logs its calls.
    Returns the run and the apt-get calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("dirname", "id", "env", "bash"):
        (bin_dir / command).symlink_to(shutil.which(command))
    log = tmp_path / "apt-get.log"
    if apt_get:
        (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
        (bin_dir / "apt-get").chmod(0o755)
    path = str(bin_dir) if missing_tools else f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    environment = clean_environment(PATH=path, PYTHON=sys.executable)
    environment.pop("SUDO_USER", None)
    result = subprocess.run([shutil.which("bash"), "scripts/bootstrap.sh", "firmware"], cwd=ROOT,
                            capture_output=True, text=True, env=environment, timeout=120)
    return result, (log.read_text().splitlines() if log.exists() else [])


def test_bootstrap_firmware_without_apt_says_so_and_goes_on(tmp_path):
    result, _ = firmware_bootstrap(tmp_path, apt_get=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "firmware: SKIPPED, no apt-get on this machine" in result.stdout
    assert "gcc-arm-none-eabi" in result.stdout and "qemu-system-arm" in result.stdout
    assert "skipped: firmware" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the fake apt-get is called as root only (otherwise through sudo)")
def test_bootstrap_firmware_updates_then_installs_every_package(tmp_path):
    from tf_pilltrack.firmware import build

    result, calls = firmware_bootstrap(tmp_path, apt_get=True)
    assert calls[0] == "update -qq", calls
    assert calls[1].startswith("install -y"), calls
    packages = set(calls[1].split()) - {"install", "-y", "-qq", "--no-install-recommends"}
    assert set(build.TOOLS.values()) | set(build.LIBRARIES) == packages
    # the fake installs nothing, so the script must notice the tools are still missing and fail
    assert result.returncode != 0 and "still missing" in result.stderr, result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the fake apt-get is called as root only (otherwise through sudo)")
def test_bootstrap_firmware_leaves_installed_packages_alone(tmp_path):
    from tf_pilltrack.firmware import build

    missing = [line for line in build.find_missing(tmp_path) if "TFLite Micro kit" not in line]  # no kit in tmp_path
    if missing:
        pytest.skip("the firmware packages are not all installed here: " + "; ".join(missing))
    result, calls = firmware_bootstrap(tmp_path, apt_get=True, missing_tools=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == [] and "firmware: the Cortex-M toolchain, newlib and QEMU are installed" in result.stdout
