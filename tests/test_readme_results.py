"""saelab.readme_results: the README's results tables are replaced from a summary page."""

from __future__ import annotations

import re

import pytest

from saelab.readme_results import BLOCK, main, refresh_readme
from saelab.schema import REPO_ROOT
from saelab.summary import STAMP_KEYS, parse_summary, render_summary

SUMMARY = """# saelab results summary

- model: `gemma-3-270m`
- commit: `0123456789abcdef0123456789abcdef01234567`
- command: `snakemake --cores all results/summary.md`
- machine: 2 cores, AMD EPYC; native bf16 on cpu: no
- every number comes from this run's outputs

## SAEs

| SAE | FVU |
|---|---|
| batchtopk | 0.050 |

- FVU on 100 tokens.

## Dark matter

| quantity | this run | interval |
|---|---|---|
| R² | 0.5 | none |
"""

README = """# title

intro

<!-- results:SAEs -->
| SAE | FVU |
|---|---|
| batchtopk | 0.999 (stale) |
<!-- /results:SAEs -->

between

<!-- results:Dark matter -->
<!-- /results:Dark matter -->

end
"""


def test_parse_summary_reads_back_what_render_summary_wrote():
    """The stamp and the sections survive a round trip through the one format definition."""
    page = render_summary(["## A\n\n| x |\n|---|\n| 1 |", "", "## B c\n\ntext"], commit="abc",
                          command="make run", model="m", machine="2 cores")  # fmt: skip
    stamp, sections = parse_summary(page)
    assert list(stamp) == list(STAMP_KEYS)
    assert stamp == {"model": "`m`", "commit": "`abc`", "command": "`make run`",
                     "machine": "2 cores"}  # fmt: skip
    assert sections == {"A": "| x |\n|---|\n| 1 |", "B c": "text"}
    assert "machine" not in parse_summary(render_summary([], commit="a", command="c", model="m"))[0]


def test_summary_sections_reads_the_stamp_and_each_section():
    stamp, sections = parse_summary(SUMMARY)
    assert stamp["commit"] == "`0123456789abcdef0123456789abcdef01234567`"
    assert stamp["machine"].startswith("2 cores")
    assert list(sections) == ["SAEs", "Dark matter"]
    assert sections["SAEs"].startswith("| SAE | FVU |") and sections["SAEs"].endswith("tokens.")


def test_refresh_replaces_only_the_marked_blocks_and_is_idempotent():
    out = refresh_readme(README, SUMMARY)
    assert "0.999 (stale)" not in out and "| batchtopk | 0.050 |" in out
    assert "| R² | 0.5 | none |" in out
    # text outside the blocks is untouched, markers stay so the next run can refresh again
    assert out.startswith("# title\n\nintro\n\n<!-- results:SAEs -->\n")
    assert "\n<!-- /results:SAEs -->\n\nbetween\n" in out and out.endswith("\nend\n")
    assert out.count("0123456789abcdef0123456789abcdef01234567") == 2  # one stamp per block
    assert refresh_readme(out, SUMMARY) == out


def test_a_block_the_summary_lacks_is_an_error_naming_it():
    readme = README + "<!-- results:Trajectories -->\n<!-- /results:Trajectories -->\n"
    with pytest.raises(ValueError, match=r"no section \['Trajectories'\].*'Dark matter', 'SAEs'"):
        refresh_readme(readme, SUMMARY)
    with pytest.raises(ValueError, match="no '<!-- results:NAME -->'"):
        refresh_readme("# no blocks\n", SUMMARY)


def test_command_line_rewrites_the_file_and_names_a_missing_summary(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert main([str(readme), str(tmp_path / "absent.md")]) == 1
    assert "snakemake --cores all" in capsys.readouterr().err
    assert readme.read_text() == README  # nothing written on the error
    summary = tmp_path / "summary.md"
    summary.write_text(SUMMARY)
    assert main([str(readme), str(summary)]) == 0
    assert readme.read_text() == refresh_readme(README, SUMMARY)


def test_the_readme_tables_are_stamped_blocks_of_a_run():
    """Each results table of the README sits in a marked block whose first line names the run
    (model, commit, command, machine) it was refreshed from; no hand-written results table."""
    text = (REPO_ROOT / "README.md").read_text()
    blocks = {m["name"]: m["body"] for m in BLOCK.finditer(text)}
    assert set(blocks) == {"SAEs", "Dark matter", "Co-occurrence", "Trajectories"}
    for name, body in blocks.items():
        first = body.splitlines()[0]
        assert re.search(r"commit `[0-9a-f]{40}`", first), (name, first)
        assert "machine" in first and "command `snakemake" in first, (name, first)
