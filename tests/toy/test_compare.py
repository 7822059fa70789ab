"""Tests of ``saelab.toy.compare``, moved from tests/test_toy.py.

Notes shared with the other tests moved from tests/test_toy.py: ``tests/toy/__init__.py``."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

from saelab.plots.toy import plot_toy_absorption
from saelab.toy import (
    ArchSpec,
    compare_architectures,
    compare_from_params,
    split_params,
)

REPO = Path(__file__).resolve().parents[2]


def test_flat_saes_absorb_and_matryoshka_does_not(comparison):
    runs = comparison.runs
    print("\n" + runs.round(3).to_string())
    flat = runs[runs["arch"].isin(["topk", "batchtopk"])]
    matryoshka = runs[runs["arch"] == "matryoshka"]
    assert len(flat) == 6 and len(matryoshka) == 3
    # Observed over seeds 0-9: absorption topk 0.70-0.76, batchtopk 0.44-0.69, matryoshka 0.00
    # (0.06 on seed 2: one of its 16 pairs absorbed); child-parent cosine topk 0.54-0.60,
    # batchtopk 0.31-0.45, matryoshka -0.00-0.08.
    assert (flat["absorption_rate"] > 0.3).all()
    assert flat["absorption_rate"].mean() > 0.5
    assert (matryoshka["absorption_rate"] < 0.15).all()
    assert matryoshka["absorption_rate"].mean() < 0.1
    # Every seed separates: the least-absorbing flat run absorbs far more than any Matryoshka one
    # (which makes the one-sided rank test as significant as 6 vs 3 runs allow, p = 1/84).
    assert flat["absorption_rate"].min() - matryoshka["absorption_rate"].max() > 0.25
    test = mannwhitneyu(
        flat["absorption_rate"], matryoshka["absorption_rate"], alternative="greater"
    )
    assert test.pvalue < 0.05
    # Matryoshka's parent latents fire with (nearly) every child; the flat child latents carry
    # the parent direction, Matryoshka's do not.
    assert (matryoshka["parent_recall"] > 0.85).all()
    assert (flat["child_parent_cos"] > 0.15).all()
    assert (matryoshka["child_parent_cos"] < 0.15).all()
    assert flat["child_parent_cos"].mean() - matryoshka["child_parent_cos"].mean() > 0.25
    # All reconstruct what they keep (k = 2 cannot afford the low-magnitude extras).
    assert (runs["fvu"] < 0.2).all()


def test_comparison_tables(comparison):
    pairs = comparison.pairs
    assert set(pairs["arch"]) == {"topk", "batchtopk", "matryoshka"}
    assert len(pairs) == 9 * 16
    by_arch = comparison.by_arch()
    assert list(by_arch.index) == ["topk", "batchtopk", "matryoshka"]
    assert (by_arch["count"] == 3).all()
    report = comparison.reports[("matryoshka", 0)]
    assert report.cosines.shape == (28, 28)


# ------------------------------------------------------------------------------ plumbing
def test_arch_specs_and_params():
    spec = ArchSpec.parse("matryoshka:bussmann")
    assert (spec.name, spec.arch, spec.loss) == ("matryoshka:bussmann", "matryoshka", "bussmann")
    spec = ArchSpec.parse({"name": "m8", "arch": "matryoshka", "group_sizes": [8, 20], "aux_k": 4})
    assert spec.loss is None and spec.group_sizes == [8, 20] and spec.sae_kwargs == {"aux_k": 4}
    with pytest.raises(ValueError, match="shared training settings"):
        ArchSpec.parse({"arch": "topk", "k": 4})
    toy_cfg, run = split_params({"n_parents": 3, "d_model": 40, "seeds": [1], "steps": 10})
    assert toy_cfg.n_parents == 3 and run == {"seeds": [1], "steps": 10}
    with pytest.raises(ValueError, match="unknown toy setting"):
        split_params({"n_parent": 3})
    with pytest.raises(ValueError, match="unique"):
        compare_architectures(archs=["topk", "topk"], seeds=[0], steps=1)


def test_script_writes_the_table_and_the_runs_plot_toy_absorption_draws(tmp_path):
    params = {
        "n_parents": 2,
        "children_per_parent": 3,
        "n_extra": 2,
        "d_model": 16,
        "archs": ["batchtopk", "matryoshka"],
        "seeds": [0, 1],
        "steps": 20,
        "batch_size": 256,
        "n_eval": 1024,
    }
    out = tmp_path / "toy"
    snakemake = SimpleNamespace(
        params=SimpleNamespace(toy=params),
        output=SimpleNamespace(
            table=str(out / "absorption.csv"), results=str(out / "absorption.json")
        ),
        log=[str(tmp_path / "logs" / "toy.log")],
        threads=1,
    )
    runpy.run_path(str(REPO / "scripts" / "toy_absorption.py"), {"snakemake": snakemake})
    table = pd.read_csv(out / "absorption.csv")
    assert list(table["arch"]) == ["batchtopk"] * 2 + ["matryoshka"] * 2
    assert {"seed", "absorption_rate", "parent_recall", "child_parent_cos", "fvu"} <= set(table)
    assert table["absorption_rate"].between(0, 1).all()
    # no tmp files
    assert sorted(p.name for p in out.iterdir()) == ["absorption.csv", "absorption.json"]
    # rule plot_toy_absorption: the registry row's drawing function on the JSON draws, byte for
    # byte, the figure of the comparison itself (the old rule drew that one)
    from saelab.figures import figure, resolve_draw
    from saelab.plots.common import save_figure

    results = json.loads((out / "absorption.json").read_text())
    assert len(results["runs"]) == 4 and results["pairs"]
    save_figure(resolve_draw(figure("toy_absorption"))(results=results), out / "drawn.png")
    save_figure(plot_toy_absorption(compare_from_params(params)), out / "direct.png")
    assert (out / "drawn.png").read_bytes() == (out / "direct.png").read_bytes()
    assert "absorption rate" in Path(snakemake.log[0]).read_text()
