"""Format commands: `segkit validate` checks a submission CSV against its competition's rules."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add `validate` to the `segkit` parser."""
    p = sub.add_parser("validate", help="check a submission CSV (header, ids, order, RLEs, overlaps, labels)")
    p.add_argument("--competition", "-c", required=True,
                   help="competition format: carvana, clouds, airbus, folder, cloud38, cloud95")
    p.add_argument("submission", help="the submission CSV")
    p.add_argument("--sample", help="the competition's sample_submission.csv: ids and their order must match it")
    p.set_defaults(func=_validate)


def _validate(args) -> int:
    from segkit.submission import validate_submission

    problems = validate_submission(args.submission, args.competition, args.sample)
    if problems:
        for line in problems:
            print(line)
        print(f"{args.submission}: INVALID for {args.competition} ({len(problems)} problem line(s) above)")
        return 1
    rows = _count_rows(args.submission)
    against = f", ids and order match {args.sample}" if args.sample else ""
    print(f"{args.submission}: valid {args.competition} submission, {rows} rows{against}")
    return 0


def _count_rows(path: str) -> int:
    with open(path, "rb") as fh:
        return max(0, sum(1 for line in fh if line.strip()) - 1)
