"""Wall seconds per rule of a finished run, from Snakemake's ``benchmark:`` records.

    python benchmarks/dag_time.py [WORKDIR] [--top 16]

Every rule writes ``logs/benchmarks/<rule>/...tsv`` (one row: the job's wall seconds first);
this sums them per rule and prints a Markdown table, largest first, as the README's "Time
budget of the default DAG" quotes it. Jobs that ran side by side (``--cores 2``) both count,
so the column sums to more than the run's wall time, which `make run`'s ``time`` gives.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path


def seconds_per_rule(workdir: Path) -> dict[str, tuple[int, float]]:
    """{rule: (jobs, summed wall seconds)} of ``workdir/logs/benchmarks``."""
    root = workdir / "logs" / "benchmarks"
    if not root.is_dir():
        raise SystemExit(f"{root} does not exist: run the DAG in {workdir} first")
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for path in root.rglob("*.tsv"):
        rows = list(csv.DictReader(path.open(), delimiter="\t"))
        if not rows:
            continue
        rule = path.relative_to(root).parts[0]
        totals[rule][0] += 1
        totals[rule][1] += float(rows[-1]["s"])
    return {rule: (int(n), s) for rule, (n, s) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", default=".", type=Path)
    parser.add_argument("--top", type=int, default=16, help="rules listed; the rest summed")
    args = parser.parse_args()
    per_rule = sorted(seconds_per_rule(args.workdir).items(), key=lambda kv: -kv[1][1])
    print("| rule | jobs | s |\n|---|---|---|")
    for rule, (jobs, seconds) in per_rule[: args.top]:
        print(f"| `{rule}` | {jobs} | {seconds:.0f} |")
    rest = per_rule[args.top :]
    if rest:
        jobs = sum(j for _, (j, _) in rest)
        seconds = sum(s for _, (_, s) in rest)
        print(f"| {len(rest)} other rules | {jobs} | {seconds:.0f} |")
    total_jobs = sum(j for _, (j, _) in per_rule)
    total = sum(s for _, (_, s) in per_rule)
    print(f"| **all jobs** | {total_jobs} | {total:.0f} |")


if __name__ == "__main__":
    main()
