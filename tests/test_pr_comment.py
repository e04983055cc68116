"""CI's pull-request comment (scripts/pr_comment.sh), run as the workflow's step runs it, in a
throw-away git + DVC repository: a one-stage pipeline whose metrics follow its params (no
training), a base commit on `main` (as `origin/main`), a head commit that changes a param and, by
`dvc repro`, a metric; then CI's smoke run, a different params.yaml in the working tree."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from loopback import BIN, ROOT, run

SCRIPT = ROOT / "scripts" / "pr_comment.sh"

DVC_YAML = """\
stages:
  distill:
    cmd: python3 train.py
    deps:
      - train.py
    params:
      - distill
    metrics:
      - metrics/evaluation.json:
          cache: false
      - reports/budget.json:
          cache: false
"""

# Recall@1 = 0.3 + 100 x qat_learning_rate, in the layout of tf_pilltrack's evaluation.json and
# budget.json, so the figures are known to the digit.
TRAIN_PY = """\
import json, os, yaml
distill = yaml.safe_load(open("params.yaml"))["distill"]
recall = round(0.3 + 100 * distill["qat_learning_rate"], 6)
os.makedirs("metrics", exist_ok=True)
os.makedirs("reports", exist_ok=True)
json.dump({"student_int8": {"recall_at_1": recall, "recall_at_5": 0.9, "map_at_r": 0.25},
           "queries": 120}, open("metrics/evaluation.json", "w"), indent=2)
json.dump({"profile": distill["profile"], "passed": recall >= 0.34,
           "budgets": [{"budget": "int8 model size (bytes)", "measured": 279904, "limit": 307200, "passed": True},
                       {"budget": "novel-class Recall@1 (int8)", "measured": recall, "limit": 0.34,
                        "passed": recall >= 0.34}]},
          open("reports/budget.json", "w"), indent=2)
"""


def params(learning_rate: float, profile: str = "mcu") -> str:
    return yaml.safe_dump({"distill": {"qat_learning_rate": learning_rate, "epochs": 3, "profile": profile}})


def comment_step() -> dict:
    with open(ROOT / ".github" / "workflows" / "ci.yml") as handle:
        steps = yaml.safe_load(handle)["jobs"]["pipeline"]["steps"]
    return next(step for step in steps if "scripts/pr_comment.sh" in step.get("run", ""))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    work = tmp_path_factory.mktemp("pr-comment") / "repo"
    work.mkdir()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("GIT_", "DVC_", "AWS_", "GITHUB_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1", GIT_CONFIG_GLOBAL=os.devnull,
               GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="Test", GIT_AUTHOR_EMAIL="test@example.org",
               GIT_COMMITTER_NAME="Test", GIT_COMMITTER_EMAIL="test@example.org")

    def git(*arguments: str) -> str:
        return run(["git", *arguments], work, env).stdout.strip()

    def repro_and_commit(message: str) -> None:
        run([str(BIN / "dvc"), "repro", "-q"], work, env)
        git("add", "-A")
        git("commit", "-q", "-m", message)

    git("init", "-q", "-b", "main")
    run([str(BIN / "dvc"), "init", "-q"], work, env)
    (work / "scripts").mkdir()
    shutil.copy(SCRIPT, work / "scripts" / SCRIPT.name)
    (work / "dvc.yaml").write_text(DVC_YAML)
    (work / "train.py").write_text(TRAIN_PY)
    (work / "params.yaml").write_text(params(0.0003))
    repro_and_commit("base: default pipeline, committed metrics")
    git("update-ref", "refs/remotes/origin/main", "main")

    git("checkout", "-q", "-b", "stale")  # a params change committed without `dvc repro`
    (work / "params.yaml").write_text(params(0.0007))
    git("commit", "-q", "-am", "qat_learning_rate without rerunning")

    git("checkout", "-q", "-b", "feature", "main")
    (work / "params.yaml").write_text(params(0.0005))
    repro_and_commit("head: qat_learning_rate 0.0003 -> 0.0005, rerun, metrics committed")
    return {"dir": work, "env": env, "git": git}


def sections(markdown: str) -> tuple[str, str]:
    """(committed results, smoke run) of the comment."""
    committed, _, smoke = markdown.partition("### CI smoke run")
    return committed, smoke


def markdown_rows(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line)]


def run_comment_step(repo, tmp_path) -> tuple[subprocess.CompletedProcess, str, str]:
    """The workflow's step, its `run:` block word for word, as GitHub runs it (bash -eo pipefail),
    with the job's env (BASE_REF) and a step summary file; returns (result, pr-comment.md, summary)."""
    block = comment_step()["run"]
    assert "${{" not in block, "the block takes what it needs from the environment (BASE_REF)"
    script = tmp_path / "step.sh"
    script.write_text(block)
    summary = tmp_path / "summary.md"
    env = dict(repo["env"], BASE_REF="main", GITHUB_STEP_SUMMARY=str(summary))
    result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=repo["dir"],
                            env=env, capture_output=True, text=True)
    comment = (repo["dir"] / "pr-comment.md").read_text() if (repo["dir"] / "pr-comment.md").exists() else ""
    return result, comment, summary.read_text() if summary.exists() else ""


@pytest.fixture
def clean(repo):
    """The head commit checked out, the working tree as committed; restored afterwards."""
    repo["git"]("checkout", "-q", "-f", "feature")
    repo["git"]("clean", "-qfdx", "-e", ".dvc")
    yield repo
    repo["git"]("checkout", "-q", "-f", "feature")
    repo["git"]("clean", "-qfdx", "-e", ".dvc")


def test_comment_of_a_params_change_after_the_smoke_run(clean, tmp_path):
    repo = clean
    # CI's smoke run: another params.yaml over the committed one, `dvc repro` in the working tree
    (repo["dir"] / "params.yaml").write_text(params(0.001, profile="tiny"))
    run([str(BIN / "dvc"), "repro", "-q"], repo["dir"], repo["env"])

    result, comment, summary = run_comment_step(repo, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary == comment
    committed, smoke = sections(comment)
    assert smoke, comment
    assert "`origin/main`" in committed and "`HEAD`" in committed

    rows = markdown_rows(committed)
    assert ["params.yaml", "distill.qat_learning_rate", "0.0003", "0.0005"] in rows, committed
    assert ["metrics/evaluation.json", "student_int8.recall_at_1", "0.33", "0.35", "0.02"] in rows, committed
    assert ["reports/budget.json", "passed", "False", "True"] in [row[:4] for row in rows], committed
    # the committed comparison never reads the smoke run's working tree
    assert "0.001" not in committed and "0.4" not in committed and "tiny" not in committed
    assert "stale" not in committed

    smoke_rows = markdown_rows(smoke)
    assert ["student_int8", "0.400", "0.900", "0.250"] in smoke_rows, smoke
    assert ["novel-class Recall@1 (int8)", "0.4", "0.34", "ok"] in smoke_rows, smoke
    assert ["int8 model size (bytes)", "279,904", "307,200", "ok"] in smoke_rows, smoke
    assert "Budget check of profile `tiny`: passed" in smoke


def test_smoke_section_says_when_the_run_wrote_nothing(clean, tmp_path):
    """A smoke run that failed before `evaluate` leaves the committed files: they are not shown
    as its figures."""
    result, comment, _ = run_comment_step(clean, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    committed, smoke = sections(comment)
    assert "not measured (the run stopped before `evaluate`" in smoke
    assert "Budget check: not run" in smoke
    assert not markdown_rows(smoke)
    assert ["metrics/evaluation.json", "student_int8.recall_at_1", "0.33", "0.35", "0.02"] in markdown_rows(committed)


def test_stale_lock_is_called_out(clean):
    result = subprocess.run(["bash", "scripts/pr_comment.sh", "origin/main", "stale"], cwd=clean["dir"],
                            env=clean["env"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    committed, smoke = sections(result.stdout)
    assert not smoke  # without --smoke
    assert ["params.yaml", "distill.qat_learning_rate", "0.0003", "0.0007"] in markdown_rows(committed)
    assert "No committed metric changed." in committed
    assert "`dvc.lock` is stale" in committed
    assert ["`distill`", "`params.yaml`: `distill` modified"] in markdown_rows(committed)


def test_no_change_and_bad_arguments(clean):
    same = subprocess.run(["bash", "scripts/pr_comment.sh", "main", "main"], cwd=clean["dir"],
                          env=clean["env"], capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    assert "No params changed." in same.stdout and "No committed metric changed." in same.stdout
    assert not markdown_rows(same.stdout)
    for arguments in (["main"], ["main", "no-such-branch"], ["main", "feature", "--smok"]):
        wrong = subprocess.run(["bash", "scripts/pr_comment.sh", *arguments], cwd=clean["dir"],
                               env=clean["env"], capture_output=True, text=True)
        assert wrong.returncode == 2, (arguments, wrong.stdout, wrong.stderr)
        assert not wrong.stdout


def committed(path: str) -> str:
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def test_reports_have_the_layout_the_script_reads():
    """The smoke section reads budget.json's profile, passed and budgets rows, and
    evaluation.json's per-model recall_at_1 / recall_at_5 / map_at_r: the committed reports'
    layout (the working tree's may be mid-run)."""
    budget = json.loads(committed("reports/budget.json"))
    assert isinstance(budget["profile"], str) and isinstance(budget["passed"], bool)
    assert all({"budget", "measured", "limit", "passed"} <= set(row) for row in budget["budgets"])
    evaluation = json.loads(committed("metrics/evaluation.json"))
    assert {"recall_at_1", "recall_at_5", "map_at_r"} <= set(evaluation["student_int8"])

