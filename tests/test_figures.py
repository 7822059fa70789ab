"""Tests of ``saelab.figures``, moved from tests/test_plots.py.

Notes shared with the other tests moved from tests/test_plots.py: ``tests/plots/__init__.py``."""

from __future__ import annotations

from pathlib import Path

import pytest


# ---------------------------------------------------------------- the figure registry
def _workflow_text() -> str:
    root = Path(__file__).resolve().parents[1]
    return "\n".join(p.read_text() for p in sorted((root / "workflow/rules").glob("*.smk")))


def test_readme_figure_map_is_the_registry():
    from saelab.figures import figure_map

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert figure_map() in readme, "README's figure map: python -m saelab.figures prints it"
    # the dark-matter paper map: each paper figure's target is its registry row's file
    from saelab.figures import FIGURES

    paper_rows = {
        line.split("|")[1].strip(): line.rsplit("`", 2)[-2]
        for line in readme.splitlines()
        if line.startswith(("| Fig ", "| Table ")) and line.endswith("` |")
    }
    assert paper_rows == {row.paper: row.file for row in FIGURES if row.paper}


def test_every_registry_row_names_what_exists():
    """Captions are files, drawing functions import, rule-written rows name a rule, and every
    function a row names is defined in the workflow; each file name belongs to one row."""
    import inspect
    import re

    from saelab.figures import FIGURES, figure, resolve_draw

    root = Path(__file__).resolve().parents[1]
    workflow = _workflow_text()
    defined = set(re.findall(r"^def (\w+)\(", workflow, flags=re.M))
    rules = set(re.findall(r"^rule (\w+):", workflow, flags=re.M))
    files = [row.file for row in FIGURES]
    assert len(files) == len(set(files))
    for row in FIGURES:
        if row.caption:
            assert (root / "workflow/report" / row.caption).is_file(), row.id
        assert row.targets in defined, row.id
        if row.draw:
            assert row.inputs in defined and row.rule is None, row.id
            assert row.params is None or row.params in defined, row.id
            assert callable(resolve_draw(row))
            assert inspect.signature(resolve_draw(row)).parameters, row.id
        else:
            assert row.rule in rules, row.id
    with pytest.raises(KeyError, match="unknown figure 'nope'"):
        figure("nope")
