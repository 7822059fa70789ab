"""Tests of ``saelab.cooccurrence.pca``, moved from tests/test_cooccurrence.py.

Notes shared with the other tests moved from tests/test_cooccurrence.py:
``tests/cooccurrence/__init__.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saelab.cooccurrence.pca import pca_project, pca_series, subgraph_pca, subgraph_pcas
from tests.cooccurrence.helpers import identity_sae


def test_subgraph_pca_on_cache(cache):
    result = subgraph_pca(identity_sae(), cache, [0, 1], max_examples=5, batch_size=4)
    # tokens firing 0 or 1, in order: rows 1, 2, 3, 4, 9 (BOS rows masked)
    assert result.rows.tolist() == [1, 2, 3, 4, 9]
    assert result.token_ids.tolist() == [1, 2, 3, 4, 9]
    assert result.active_latent.tolist() == [0, 0, 0, 0, 0]  # ties: the first latent
    # r_t = f0 * (1, 0, 0) + f1 * (0, 2, 0): four copies of (2, 4, 0) and one (3, 0, 0)
    assert result.explained_variance_ratio[0] == pytest.approx(1.0)
    assert np.ptp(result.coords[:4, 0]) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="no token"):
        subgraph_pca(identity_sae(), cache, [2], max_tokens=8)


def test_subgraph_pcas_of_several_subgraphs_equal_one_pass_each(cache):
    sae = identity_sae()
    together = subgraph_pcas(sae, cache, {7: [0, 1], 8: [1], 9: [2]}, max_examples=3, batch_size=4)
    for key, latents in ((7, [0, 1]), (8, [1])):
        alone = subgraph_pca(sae, cache, latents, max_examples=3, batch_size=4)
        for field in alone._fields:
            assert np.array_equal(getattr(together[key], field), getattr(alone, field)), field
    assert together[7].n_tokens_scanned == 4 and together[8].n_tokens_scanned == 4
    # latent 2 fires only at 0.5 on row 12: found once the scan reaches it
    assert together[9].rows.tolist() == [12]
    missing = subgraph_pcas(sae, cache, {1: [2]}, max_tokens=8)[1]
    assert isinstance(missing, ValueError) and "no token" in str(missing)


def test_pca_project_matches_known_directions():
    # a 4 x 2 grid in the first two of four dimensions: variances 5 and 1, uncorrelated
    grid = np.array([(x, y, 0.0, 0.0) for x in (-3, -1, 1, 3) for y in (-1, 1)]) + 7.0
    coords, ratio = pca_project(grid)
    np.testing.assert_allclose(ratio, [5 / 6, 1 / 6, 0], atol=1e-12)
    # sklearn's sign rule: the largest loading is positive, so PC1 = x and PC2 = y exactly
    np.testing.assert_allclose(coords[:, 0], grid[:, 0] - 7.0, atol=1e-12)
    np.testing.assert_allclose(coords[:, 1], grid[:, 1] - 7.0, atol=1e-12)


def test_pca_figures_are_drawn_from_the_series_rule_subgraph_pca_writes(cache, tmp_path):
    """Rules plot_pca_subgraph and plot_pca_subgraph_html draw from the npz series: the same
    PNG and HTML bytes as drawing the PCA result itself (what rule subgraph_pca drew)."""
    from saelab.plots.common import save_figure, write_plotly_html
    from saelab.plots.cooccurrence import (
        draw_pca_subgraph,
        draw_pca_subgraph_html,
        pca_panels,
        pca_plotly,
    )
    from saelab.runtime import savez_atomic

    result = subgraph_pca(identity_sae(), cache, [0, 1], max_examples=5, batch_size=4)
    strings = ["a", " é字", "tab\t", "nul\x00", ""]  # a trailing NUL survives the npz
    savez_atomic(tmp_path / "series.npz", pca_series(result, strings, 7))
    with np.load(tmp_path / "series.npz") as data:
        series = dict(data)
    assert int(series["subgraph"]) == 7 and np.array_equal(series["coords"], result.coords)
    ratio = ", ".join(f"{r:.2f}" for r in result.explained_variance_ratio)
    title = f"matryoshka subgraph 7 (tau 0.5): 5 tokens, explained variance {ratio}"
    for kind, draw, direct, save in (
        ("png", draw_pca_subgraph, pca_panels, save_figure),
        ("html", draw_pca_subgraph_html, pca_plotly, write_plotly_html),
    ):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "b").mkdir(exist_ok=True)
        save(draw(series, "matryoshka", 0.5), tmp_path / "a" / f"pca.{kind}")
        save(direct(result.coords, strings, result.active_latent, title),
             tmp_path / "b" / f"pca.{kind}")  # fmt: skip
        drawn = (tmp_path / "a" / f"pca.{kind}").read_bytes()
        assert drawn == (tmp_path / "b" / f"pca.{kind}").read_bytes(), kind
    assert "'nul\\\\x00'" in (tmp_path / "a" / "pca.html").read_text()  # the hover's repr
    with pytest.raises(ValueError, match="4 token strings for 5 tokens"):
        pca_series(result, strings[:4], 7)


def test_plot_rule_of_the_pca_folder_draws_every_series_beside_one_plotly_js(cache, tmp_path):
    import runpy
    from types import SimpleNamespace

    from saelab.runtime import savez_atomic

    series = tmp_path / "series"
    results = subgraph_pcas(identity_sae(), cache, {10: [0, 1], 2: [0]}, max_examples=5,
                            batch_size=4)  # fmt: skip
    for subgraph, result in results.items():
        strings = [f"t{i}" for i in result.token_ids]
        savez_atomic(series / f"pca_subgraph_{subgraph}.npz", pca_series(result, strings, subgraph))
    folder = tmp_path / "plots" / "pca_all_tau0_5"
    snakemake = SimpleNamespace(
        input={"folder": str(series)}, output=SimpleNamespace(figure=str(folder)),
        params=SimpleNamespace(figure="pca_all", options={"sae": "m", "threshold": 0.5}),
        log=[str(tmp_path / "plot.log")],
    )  # fmt: skip
    runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "plot.py"),
                   {"snakemake": snakemake})  # fmt: skip
    names = [f"pca_subgraph_{s}.{kind}" for s in (2, 10) for kind in ("png", "html")]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, "plotly.min.js"])
    assert not list(folder.parent.glob("*.tmp"))
    assert 'src="plotly.min.js"' in (folder / "pca_subgraph_10.html").read_text()
    assert "m subgraph 10 (tau 0.5)" in (folder / "pca_subgraph_10.html").read_text()
    log = (tmp_path / "plot.log").read_text()
    assert [line.rsplit(" ", 1)[1] for line in log.splitlines() if "pca_subgraph" in line] == names
