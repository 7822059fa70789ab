"""End-to-end tests (they run Snakemake) moved from tests/test_cooccurrence.py.

Notes shared with the other tests moved from tests/test_cooccurrence.py:
``tests/cooccurrence/__init__.py``."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from saelab.cooccurrence import (
    load_counts,
)

# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_micro_run_cooccurrence(micro_run):
    analysis = micro_run / "data" / "analysis" / "cooccurrence" / "tiny"
    edge = pd.read_csv(analysis / "edge_thresholds.csv")
    assert set(edge["sae_name"]) >= {"matryoshka", "batchtopk"}
    assert edge["edge_threshold"].between(0, 1).all()
    info = pd.read_csv(next(analysis.glob("*/matryoshka/node_info_tau*.csv")))
    assert len(info) == 256 and info["subgraph_size"].between(1, 256).all()
    counts = load_counts(next(analysis.glob("*/matryoshka/counts_tau*.npz")))
    assert counts.n_tokens > 1000
    assert (counts.counts.diagonal() == counts.firing_count).all()
    summary = json.loads(next(analysis.glob("summary_tau*.json")).read_text())
    assert {"matryoshka", "batchtopk"} <= set(summary["saes"])
    plots = micro_run / "plots" / "cooccurrence"
    for name in ("subgraph_sizes", "group_subgraph_sizes", "group_subgraph_counts",
                 "cooccurrence_by_index", "pca_subgraph"):  # fmt: skip
        figures = list(plots.glob(f"{name}_tau*.png"))
        assert figures and all(f.stat().st_size > 5000 for f in figures), name
    assert list(plots.glob("pca_subgraph_tau*.html"))
    pages = list((plots / "dashboards").glob("latent_*.html"))
    assert pages and "Top activations" in pages[0].read_text()


@pytest.mark.slow
def test_micro_run_pca_of_every_subgraph_in_a_size_range(micro_run, tmp_path):
    import yaml

    from tests.conftest import MICRO, snakemake

    config = yaml.safe_load(MICRO.read_text())
    config["cooccurrence"]["pca"]["all_in_size_range"] = [2, 15]
    overlay = tmp_path / "pca_all.yaml"
    overlay.write_text(yaml.safe_dump(config))
    folder = micro_run / "plots" / "cooccurrence" / "pca_all_tau0_0"
    try:
        # mtime triggers only: the changed pca option must not re-run the finished analyses
        snakemake(micro_run, "--cores", "2", "--configfile", str(overlay),
                  "--rerun-triggers", "mtime", "--", str(folder.relative_to(micro_run)))  # fmt: skip
        choice = json.loads(
            (micro_run / "data/analysis/cooccurrence/tiny/representative_tau0_0.json").read_text()
        )
        (node_info,) = micro_run.glob(
            f"data/analysis/cooccurrence/tiny/*/{choice['sae']}/node_info_tau0_0.csv"
        )
        info = pd.read_csv(node_info)
        sizes = info.groupby("subgraph_id")["subgraph_size"].first()
        in_range = set(sizes[(sizes >= 2) & (sizes <= 15)].index)
        drawn = {int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("pca_subgraph_*.png")}
        # every subgraph in range is drawn unless none of the scanned tokens fires it
        assert drawn and drawn <= in_range and len(drawn) >= len(in_range) // 2
        pages = sorted(folder.glob("pca_subgraph_*.html"))
        assert len(pages) == len(drawn) and (folder / "plotly.min.js").is_file()
        assert all('src="plotly.min.js"' in page.read_text() for page in pages)
    finally:  # keep micro_run as the default micro DAG left it (the report test reads it)
        shutil.rmtree(folder, ignore_errors=True)
        series = micro_run / "data/analysis/cooccurrence/tiny/pca_all_tau0_0"
        shutil.rmtree(series, ignore_errors=True)  # rule subgraph_pca_all's
