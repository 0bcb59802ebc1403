"""Format commands: `segkit validate` checks a submission CSV against its competition's declared format."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add `validate` to the `segkit` parser."""
    p = sub.add_parser("validate", help="check a submission CSV (header, ids, RLEs, overlaps, labels, the sample's ids)")
    p.add_argument("--competition", "-c", required=True,
                   help="competition format: carvana, clouds, airbus, severstal, tgs, siim, folder, cloud38, cloud95")
    p.add_argument("submission", help="the submission CSV")
    p.add_argument("--sample", help="the competition's sample_submission.csv (for 38-Cloud also "
                                    "test_patches_38-Cloud.csv): the ids must be the same")
    p.set_defaults(func=_validate)


def _validate(args) -> int:
    """Print one line per problem (then INVALID, exit 1) or notes and a one-line summary (exit 0)."""
    from segkit.data.competitions.base import format_for  # lazy: `segkit --help` stays numpy-free
    from segkit.submission import validate  # lazy: `segkit --help` stays numpy-free

    report = validate(args.submission, format_for(args.competition), args.sample)
    for line in report.problems:
        print(line)
    for line in report.notes:
        print(f"note: {line}")
    if report.problems:
        print(f"{args.submission}: INVALID for {args.competition} ({len(report.problems)} problem line(s) above)")
        return 1
    against = ""
    if args.sample:
        against = f", ids match {args.sample} (rows in another order)" if report.notes else \
            f", ids and order match {args.sample}"
    print(f"{args.submission}: valid {args.competition} submission, {report.rows} rows{against}")
    return 0
