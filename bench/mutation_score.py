"""Mutation score per module after `make mutate`: killed / checked (and the total) from mutmut's result files
(mutants/**/*.meta).

A mutant counts as killed when a test failed (or timed out: the mutant made the code hang); "no tests" means
no selected test reached the mutated function. `--survivors` also lists the surviving mutants by name
(`mutmut show NAME` prints the change).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          37: "killed", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}
KILLED = ("killed", "timeout")


def _codes(meta: Path) -> dict[str, int | None]:
    """A `.meta` file's exit code per mutant (read again if mutmut is rewriting it)."""
    for _ in range(20):
        try:
            return json.loads(meta.read_text())["exit_code_by_key"]
        except ValueError:
            time.sleep(0.1)
    return json.loads(meta.read_text())["exit_code_by_key"]


def scores(mutants: Path) -> dict[str, Counter]:
    """Module path -> count of mutants per status, from every `.meta` file under `mutants`."""
    out: dict[str, Counter] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        codes = _codes(meta)
        if not codes:
            continue  # a module with nothing to mutate (an __init__ of imports)
        module = str(meta.relative_to(mutants))[: -len(".meta")]
        out[module] = Counter(STATUS.get(code, "suspicious") for code in codes.values())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", default="mutants", type=Path)
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants' names")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the listing quietly
    table = scores(args.mutants)
    if not table:
        print(f"no mutmut results under {args.mutants}/: run `make mutate` first", file=sys.stderr)
        return 1
    # score: killed / checked; a run stopped early (mutants "not checked") gives the score of the checked ones
    print(f"{'module':<36} {'killed':>7} {'checked':>8} {'total':>6} {'score':>6}  other")
    for module, counts in table.items():
        killed, total = sum(counts[k] for k in KILLED), sum(counts.values())
        checked = total - counts["not checked"]
        other = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if k not in KILLED)
        print(f"{module:<36} {killed:>7} {checked:>8} {total:>6} {killed / max(checked, 1):>6.1%}  {other}")
    if args.survivors:
        for meta in sorted(args.mutants.rglob("*.py.meta")):
            for name, code in _codes(meta).items():
                if STATUS.get(code, "suspicious") not in KILLED + ("not checked",):
                    print(f"  {STATUS.get(code, 'suspicious'):<11} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
