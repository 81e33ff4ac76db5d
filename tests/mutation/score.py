"""The mutation score of domain/ and application/ from mutmut's results, checked against the
list of equivalent mutants (``tests/mutation/equivalent.md``).

Killed = mutmut "killed" or "timeout" (a mutant that hangs the tests is detected). Score =
killed / (all mutants - listed equivalents). Exit 1 when a survivor is neither killed nor listed
as equivalent (with its reason), or when the score is under ``--min`` (default 90).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EQUIVALENT = HERE / "equivalent.md"


def mutmut_results() -> dict[str, str]:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "mutmut"), "results", "--all", "true"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    results: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            results[name] = status
    return results


def listed_equivalents() -> set[str]:
    """Mutant names in the first column of equivalent.md's table rows (`` `name` | reason``)."""
    names: set[str] = set()
    for line in EQUIVALENT.read_text().splitlines():
        m = re.match(r"\|\s*`([^`]+__mutmut_\d+)`\s*\|\s*(.+?)\s*\|", line)
        if m and m.group(2).strip():
            names.add(m.group(1))
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min", type=float, default=90.0, help="lowest acceptable score (%%)")
    parser.add_argument(
        "--module", action="append", default=[],
        help="score only mutants of this module prefix (e.g. domain.subscriptions; repeatable),"
        " for a run given mutant names",
    )  # fmt: skip
    args = parser.parse_args(argv)
    results = mutmut_results()
    if args.module:
        results = {n: s for n, s in results.items() if n.startswith(tuple(args.module))}
    counts = Counter(results.values())
    equivalent = listed_equivalents()
    if args.module:
        equivalent = {n for n in equivalent if n.startswith(tuple(args.module))}
    killed = {n for n, s in results.items() if s in ("killed", "timeout")}
    alive = {n for n, s in results.items() if s not in ("killed", "timeout")}
    unexplained = sorted(alive - equivalent)
    stale = sorted(equivalent - alive)
    considered = len(results) - len(equivalent & alive)
    score = 100.0 * len(killed) / considered if considered else 0.0
    raw = 100.0 * len(killed) / len(results) if results else 0.0
    print(f"mutants: {len(results)}  " + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    print(f"equivalent (listed with a reason): {len(equivalent & alive)}")
    print(f"mutation score domain/ + application/: {score:.1f} % killed "
          f"({len(killed)}/{considered}; {raw:.1f} % of all {len(results)})")  # fmt: skip
    for package in ("domain", "application"):
        names = {n for n in results if n.startswith(package + ".")}
        if names:
            n_killed = len(names & killed)
            n_considered = len(names) - len(names & equivalent & alive)
            print(f"  {package}/: {100.0 * n_killed / n_considered:.1f} % killed "
                  f"({n_killed}/{n_considered})")  # fmt: skip
    for name in stale:
        print(f"listed as equivalent but now killed (remove it from equivalent.md): {name}")
    for name in unexplained:
        print(f"SURVIVED, not listed as equivalent: {name} ({results[name]})")
    return 0 if not unexplained and score >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
