"""Refresh the README's results tables from a run's ``results/summary.md`` (one command).

The README marks each table it takes from the summary with a pair of comments::

    <!-- results:SAEs -->
    ...replaced...
    <!-- /results:SAEs -->

and :func:`refresh_readme` replaces what lies between them with the body of the summary's
section of that name (``## SAEs``), under a line naming the run (model, commit, command,
machine). A marker naming a section the summary lacks is an error, so the README cannot keep
a stale table silently. Command line::

    python -m saelab.readme_results README.md results/summary.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from saelab.runtime import write_text_atomic
from saelab.summary import STAMP_KEYS, parse_summary

BLOCK = re.compile(r"(<!-- results:(?P<name>[^>]+?) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)",
                   re.S)  # fmt: skip


def stamp_line(stamp: dict[str, str]) -> str:
    """The line naming the run above each refreshed README block."""
    fields = [f"{key} {stamp[key]}" for key in STAMP_KEYS if key in stamp]
    return "_From `results/summary.md` of a run: " + "; ".join(fields) + "._"


def refresh_readme(readme: str, summary: str) -> str:
    """``readme`` with every marked block replaced by the summary's section of that name."""
    stamp, sections = parse_summary(summary)
    names = [m["name"] for m in BLOCK.finditer(readme)]
    if not names:
        raise ValueError("the README has no '<!-- results:NAME -->' ... "
                         "'<!-- /results:NAME -->' block to refresh")  # fmt: skip
    missing = [name for name in names if name not in sections]
    if missing:
        raise ValueError(f"the summary has no section {missing} (it has {sorted(sections)}); "
                         "rerun `snakemake --cores all results/summary.md` on the full config")  # fmt: skip

    def replace(m: re.Match) -> str:
        body = f"{stamp_line(stamp)}\n\n{sections[m['name']]}\n"
        return m[1] + body + m[4]

    return BLOCK.sub(replace, readme)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m saelab.readme_results README.md results/summary.md",
              file=sys.stderr)  # fmt: skip
        return 2
    readme, summary = map(Path, args)
    if not summary.exists():
        print(f"{summary} does not exist: run `snakemake --cores all {summary}` first",
              file=sys.stderr)  # fmt: skip
        return 1
    text = refresh_readme(readme.read_text(), summary.read_text())
    write_text_atomic(text, readme)
    print(f"refreshed {readme} from {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
