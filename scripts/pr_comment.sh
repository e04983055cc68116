#!/usr/bin/env bash
# The pull-request comment of CI's pipeline job (.github/workflows/ci.yml), Markdown on stdout.
#
#   1. Committed results, BASE -> HEAD: `dvc params diff` and `dvc metrics diff` between the two
#      commits as committed (dvc.lock, metrics/ and reports/ from `dvc repro` on the default
#      params.yaml; the working tree is not read), and a warning when HEAD's dvc.lock is stale
#      (params, code or commands changed after the last `dvc repro`): then its metrics do not
#      describe HEAD.
#   2. With --smoke: CI's own small-profile run (tests/params_small.yaml) in the working tree, its
#      Recall figures and budget table, labelled as a toy-size run, never diffed with (1).
#
# Usage: scripts/pr_comment.sh BASE HEAD [--smoke]    (dvc and python3 on PATH)
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 || ($# -eq 3 && $3 != --smoke) ]]; then
  echo "usage: $0 BASE HEAD [--smoke]" >&2
  exit 2
fi
base=$1 head=$2 smoke=${3:-}
cd "$(git rev-parse --show-toplevel)"
for rev in "$base" "$head"; do
  git rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "$0: unknown revision: $rev" >&2; exit 2; }
done

# dvc's Markdown table on stdin, or $1 when it has no rows (dvc prints the header alone)
table_or() {
  local table
  table=$(cat)
  if [[ $(grep -c '^|' <<<"$table") -gt 2 ]]; then printf '%s\n' "$table"; else printf '%s\n' "$1"; fi
}

# `| stage | what changed |` rows for the stages of $1's dvc.lock that `dvc status` finds stale in
# a checkout of $1, ignoring the outputs and data that a checkout lacks (deleted, not in cache)
stale_stages() {
  local tree status
  tree=$(mktemp -d)
  git worktree add --quiet --detach "$tree/checkout" "$1"
  status=0
  (cd "$tree/checkout" && dvc status --json) >"$tree/status.json" || status=$?
  git worktree remove --force "$tree/checkout"
  if [[ $status -eq 0 ]]; then
    python3 - "$tree/status.json" <<'EOF'
import json, sys

for stage, entries in json.load(open(sys.argv[1])).items():
    reasons = []
    for entry in entries:
        if isinstance(entry, str):  # "changed command"
            reasons.append(entry)
            continue
        for changes in entry.values():  # "changed deps" / "changed outs": {path: state}
            for path, state in changes.items():
                if isinstance(state, dict):  # a params file: {key or group: state}
                    reasons += [f"`{path}`: `{key}` {what}" for key, what in state.items()]
                elif state not in ("deleted", "not in cache"):
                    reasons.append(f"`{path}` {state}")
    if reasons:
        print(f"| `{stage}` | {'; '.join(reasons)} |")
EOF
  fi
  rm -rf "$tree"
  return "$status"
}

echo "## PillTrack: \`$base\` ($(git rev-parse --short "$base")) → \`$head\` ($(git rev-parse --short "$head"))"
echo
echo "### Committed results"
echo
echo "What the commits hold: \`dvc.lock\`, \`metrics/\` and \`reports/\` from \`dvc repro\` on each commit's"
echo "\`params.yaml\` (default profile), as the developer committed them. CI does not rerun them."
echo
echo "#### Params changed"
echo
dvc params diff --md "$base" "$head" | table_or "No params changed."
echo
echo "#### Metrics changed"
echo
dvc metrics diff --md "$base" "$head" | table_or "No committed metric changed."
stale=$(stale_stages "$head")
if [[ -n $stale ]]; then
  echo
  echo "> [!WARNING]"
  echo "> \`$head\`'s \`dvc.lock\` is stale: these stages changed after their last \`dvc repro\`, so the"
  echo "> committed metrics above do not describe \`$head\`. Run \`dvc repro\` and commit \`dvc.lock\`,"
  echo "> \`metrics/\` and \`reports/\`."
  echo
  echo "| stage | changed since \`dvc.lock\` |"
  echo "|---|---|"
  printf '%s\n' "$stale"
fi

[[ -n $smoke ]] || exit 0
echo
echo "### CI smoke run: small profile (\`tests/params_small.yaml\`)"
echo
echo "\`dvc repro\` of this commit at toy size in CI: it shows the pipeline runs end to end and the"
echo "budget check's verdict; its figures are not comparable with the committed ones above."
echo
python3 - <<'EOF'
import json, subprocess

def fresh(path):
    """The file, if this run wrote it: not absent, not the committed default-profile one."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        return None
    committed = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True)
    return None if committed.returncode == 0 and committed.stdout == text else json.loads(text)

def number(value):
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}"

evaluation = fresh("metrics/evaluation.json")
if evaluation is None:
    print("Novel-class retrieval: not measured (the run stopped before `evaluate`; see the job log).\n")
else:
    print("| model (novel classes) | Recall@1 | Recall@5 | mAP@R |\n|---|---|---|---|")
    for model, figures in evaluation.items():
        if isinstance(figures, dict) and "recall_at_1" in figures:
            print(f"| {model} | {figures['recall_at_1']:.3f} | {figures['recall_at_5']:.3f} "
                  f"| {figures['map_at_r']:.3f} |")
    print()
budget = fresh("reports/budget.json")
if budget is None:
    print("Budget check: not run (the run stopped before `check`; see the job log).")
else:
    verdict = "passed" if budget["passed"] else "**failed**"
    print(f"Budget check of profile `{budget['profile']}`: {verdict}\n")
    print("| budget | measured | limit | result |\n|---|---|---|---|")
    for row in budget["budgets"]:
        result = "ok" if row["passed"] else "**over budget**"
        print(f"| {row['budget']} | {number(row['measured'])} | {number(row['limit'])} | {result} |")
EOF
