"""The counter page's "likely — check it" tier for any bundle, by the enroll stage's own code (issue 36).

`dvc repro`'s `enroll` stage chooses the tiers for the pipeline's bundle and writes them to
`bundle/tiers.json` (`tf_pilltrack/scoring/tiers.py`, the method in its docstring; the held-out figures
go to `reports/enroll.json` under `tiers`). This wrapper runs the same function on another
bundle (a copy, one made elsewhere), or on the crops whole (`--cropped`, as `pilltrack-edge
--cropped` sees them), with the settings of a params file (`enroll.tiers`, `episodes.real_source`):

    .venv-edge/bin/python -m benchmarks.confidence_tiers --bundle /tmp/b                 # project root
    .venv-edge/bin/python -m benchmarks.confidence_tiers --bundle /tmp/b --cropped --dry-run --report /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import sys

from tf_pilltrack import params as params_module
from tf_pilltrack import settings
from tf_pilltrack.scoring import tiers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundle", help="the bundle whose model to measure (default: bundle)")
    parser.add_argument("--params", default="params.yaml", help="settings: enroll.tiers, episodes.real_source")
    parser.add_argument("--cropped", action="store_true", help="embed the crops whole, not placed on the tray")
    parser.add_argument("--report", help="also write the full report here (JSON)")
    parser.add_argument("--dry-run", action="store_true", help="print, but do not write tiers.json")
    args = parser.parse_args()
    every = settings.from_params(params_module.load(args.params))
    report = tiers.choose_for_bundle(args.bundle, every.enroll.tiers, every.episodes.real_source,
                                     made_by="python -m benchmarks.confidence_tiers " + " ".join(sys.argv[1:]),
                                     cropped=args.cropped, write=not args.dry_run)
    print(json.dumps({key: value for key, value in report.items() if key != "folds"}, indent=1))
    for fold in report["folds"]:
        print(f"fold chosen on {len(fold['chosen_on'])} pills, scored on {len(fold['scored_on'])}: likely within "
              f"{fold['likely_distance']:.4f}, gap {fold['likely_gap']:.3f}: likely right {fold['likely_right']}, "
              f"absent likely {fold['absent_likely']}, offered right {fold['offered_right']}")
    print(tiers.describe(report))
    if args.report:
        with open(args.report, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
