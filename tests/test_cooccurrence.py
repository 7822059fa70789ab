"""saelab.cooccurrence: counts, normalisation, both "Jaccards", the bisection, subgraphs, group
statistics, PCA and the feature pages, each on a hand-computed example."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from saelab.cache import CacheError, build_cache
from saelab.cooccurrence import (
    connected_subgraphs,
    cooccurrence_from_cache,
    dense_pair_counts,
    find_edge_threshold,
    jaccard,
    load_counts,
    node_info_table,
    normalised_cooccurrence,
    pair_counts,
    save_counts,
    seed000_jaccard,
    threshold_tag,
)
from saelab.cooccurrence.counts import (
    CooccurrenceCounts,
    SparseActivity,
    counts_from_activity,
    mean_cooccurrence_by_latent,
)
from saelab.cooccurrence.dashboards import load_unembedding, logit_effects, write_dashboards
from saelab.cooccurrence.pca import pca_project, pca_series, subgraph_pca, subgraph_pcas
from saelab.cooccurrence.summary import choose_subgraph, group_index, group_statistics
from saelab.features import collect_feature_summary
from saelab.saes import SAEConfig, build_sae

# Four tokens, three latents: t0 {0, 1}, t1 {0, 1, 2}, t2 {0}, t3 {2}.
ROWS = np.array([0, 0, 1, 1, 1, 2, 3])
LATENTS = np.array([0, 1, 0, 1, 2, 0, 2])
VALUES = np.array([2.0, 2.0, 2.0, 2.0, 0.5, 2.0, 2.0], dtype=np.float32)


def hand_counts(threshold: float = 0.0) -> CooccurrenceCounts:
    activity = SparseActivity(ROWS, LATENTS, VALUES, 4, 3)
    return counts_from_activity(activity, threshold)


# ------------------------------------------------------------------ counts and matrices


def test_counts_by_hand():
    cc = hand_counts()
    assert cc.firing_count.tolist() == [3, 2, 2]
    assert cc.counts.toarray().tolist() == [[3, 2, 1], [2, 2, 1], [1, 1, 2]]
    # τ = 1.0 drops latent 2 on t1 (0.5 is not > 1.0): only t3 remains for it
    high = hand_counts(threshold=1.0)
    assert high.firing_count.tolist() == [3, 2, 1]
    assert high.counts.toarray().tolist() == [[3, 2, 0], [2, 2, 0], [0, 0, 1]]
    assert high.counts.nnz == 5  # zeros are not stored


def test_normalised_and_jaccards_by_hand():
    cc = hand_counts()
    n = normalised_cooccurrence(cc).toarray()
    expected = [[1, 2 / 3, 1 / 3], [2 / 3, 1, 1 / 2], [1 / 3, 1 / 2, 1]]
    np.testing.assert_allclose(n, expected, rtol=1e-6)
    # min(P(i|j), P(j|i)): P(1|0) = 2/3, P(0|1) = 1
    j = jaccard(cc).toarray()
    np.testing.assert_allclose(
        j, [[1, 2 / 3, 1 / 4], [2 / 3, 1, 1 / 3], [1 / 4, 1 / 3, 1]], rtol=1e-6
    )
    # the original's quantity: N'_ij / (n_i + n_j - N'_ij)
    s = seed000_jaccard(cc).toarray()
    np.testing.assert_allclose(
        s, [[1, 2 / 13, 1 / 14], [2 / 13, 1, 1 / 7], [1 / 14, 1 / 7, 1]], rtol=1e-5
    )
    # mean over the two other latents, diagonal excluded
    np.testing.assert_allclose(
        mean_cooccurrence_by_latent(normalised_cooccurrence(cc)),
        [(2 / 3 + 1 / 3) / 2, (2 / 3 + 1 / 2) / 2, (1 / 3 + 1 / 2) / 2], rtol=1e-6,
    )  # fmt: skip


def test_never_firing_latent_gets_unit_diagonal_like_the_original():
    activity = SparseActivity(np.array([0]), np.array([0]), np.array([1.0], np.float32), 2, 2)
    cc = counts_from_activity(activity, 0.0)
    assert normalised_cooccurrence(cc).toarray().tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_counts_equal_the_original_dense_method(seed):
    rng = np.random.default_rng(seed)
    n_rows, width, k = 700, 50, 6
    rows = np.repeat(np.arange(n_rows), k)
    latents = np.concatenate([rng.choice(width, k, replace=False) for _ in range(n_rows)])
    sparse = pair_counts(rows, latents, n_rows, width)
    dense = dense_pair_counts(rows, latents, n_rows, width, chunk_rows=64)
    np.testing.assert_array_equal(sparse.toarray(), dense)
    binary = np.zeros((n_rows, width))
    binary[rows, latents] = 1
    np.testing.assert_array_equal(dense, binary.T @ binary)
    activity = SparseActivity(rows, latents, np.ones(len(rows), np.float32), n_rows, width)
    a = counts_from_activity(activity, 0.0, "sparse")
    b = counts_from_activity(activity, 0.0, "dense")  # compacted to the latents that fire
    assert (a.counts != b.counts).nnz == 0 and b.counts.shape == (width, width)


def test_auto_method_picks_dense_for_dense_codes():
    from saelab.cooccurrence.counts import choose_method

    sparse_rows = np.repeat(np.arange(1000), 4)
    sparse_latents = np.tile([0, 300, 600, 900], 1000) + np.repeat(np.arange(1000) % 90, 4)
    assert choose_method(sparse_rows, sparse_latents, 1000) == "sparse"  # 16 vs 1000^2 / 128
    dense_rows = np.repeat(np.arange(100), 60)
    dense_latents = np.tile(np.arange(60), 100)  # k = U = 60: k^2 * 128 > U^2
    assert choose_method(dense_rows, dense_latents, 100) == "dense"


def test_duplicate_entries_are_refused():
    with pytest.raises(ValueError, match="once"):
        pair_counts(np.array([0, 0]), np.array([1, 1]), 1, 2)


def test_counts_roundtrip(tmp_path):
    from saelab.cooccurrence.counts import save_sparse_matrix

    cc = hand_counts()
    matrix = normalised_cooccurrence(cc)
    loaded_matrix = sp.load_npz(save_sparse_matrix(matrix, tmp_path / "m.npz"))
    assert (loaded_matrix != matrix).nnz == 0  # readable by scipy.sparse.load_npz
    path = save_counts(cc, tmp_path / "c.npz")
    loaded = load_counts(path)
    assert (loaded.counts != cc.counts).nnz == 0
    assert loaded.firing_count.tolist() == [3, 2, 2] and loaded.n_tokens == 4
    assert threshold_tag(1.5) == "1_5" and threshold_tag(0) == "0_0"


# ------------------------------------------------------------------ bisection and subgraphs


def path_graph() -> sp.csr_matrix:
    """0-1-2-3-4 at 0.9, 4-5 at 0.6, 5-6 at 0.3; 7, 8, 9 alone. Largest component: 7 nodes for
    θ ≤ 0.3, 6 for θ ≤ 0.6, 5 for θ ≤ 0.9, else 1."""
    edges = {(0, 1): 0.9, (1, 2): 0.9, (2, 3): 0.9, (3, 4): 0.9, (4, 5): 0.6, (5, 6): 0.3}
    dense = np.eye(10, dtype=np.float32)
    for (i, j), w in edges.items():
        dense[i, j] = dense[j, i] = w
    return sp.csr_matrix(dense)


def test_bisection_by_hand(caplog):
    matrix = path_graph()
    found = find_edge_threshold(matrix, 6, 6)
    assert found.reached and found.threshold == 0.5 and found.largest_size == 6
    found = find_edge_threshold(matrix, 7, 7)  # 0.5 gives 6 (too small): hi = 0.5, then 0.25
    assert found.threshold == 0.25 and found.largest_size == 7
    assert found.trace == [(0.5, 6), (0.25, 7)]
    with caplog.at_level(logging.WARNING, logger="saelab.cooccurrence"):
        found = find_edge_threshold(matrix, 3, 4)  # unreachable: sizes jump 5 -> 1
    assert not found.reached
    # 0.5 -> 6, 0.75 -> 5, 0.875 -> 5, 0.9375 -> 1, ...: closest to 3.5 is the first 5
    assert found.threshold == 0.75 and found.largest_size == 5
    assert "no edge threshold" in caplog.text
    with pytest.raises(ValueError, match="bounds"):
        find_edge_threshold(matrix, 5, 4)


def test_components_match_networkx_order():
    rng = np.random.default_rng(0)
    dense = np.triu(rng.random((40, 40)) * (rng.random((40, 40)) < 0.05), 1)
    dense = dense + dense.T
    matrix = sp.csr_matrix(dense)
    result = connected_subgraphs(matrix, 0.2)
    graph = nx.Graph()
    graph.add_nodes_from(range(40))
    graph.add_edges_from(zip(*np.nonzero(dense >= 0.2), strict=True))
    for index, component in enumerate(nx.connected_components(graph)):
        assert set(np.nonzero(result.labels == index)[0]) == component
        assert all(result.sizes[list(component)] == len(component))
    assert result.matrix.data.min() >= 0.2 and result.matrix.diagonal().sum() == 0


def test_node_info_table():
    result = connected_subgraphs(path_graph(), 0.5)
    table = node_info_table(result, "m", 1.5, np.arange(10))
    assert list(table.columns) == [
        "node_id", "sae_name", "activity_threshold", "subgraph_id", "subgraph_size",
        "feature_activations",
    ]  # fmt: skip
    assert table["subgraph_size"].tolist() == [6] * 6 + [1] * 4
    assert table["subgraph_id"].tolist() == [0] * 6 + [1, 2, 3, 4]


# ------------------------------------------------------------------ summary statistics


def hand_node_info() -> pd.DataFrame:
    """A = {0, 1, 5} (the giant), B = {2, 6}, C = {3, 7}, D = {4}."""
    labels = np.array([0, 0, 1, 2, 3, 0, 1, 2])
    sizes = np.bincount(labels)[labels]
    return pd.DataFrame({
        "node_id": np.arange(8), "sae_name": "x", "activity_threshold": 0.0,
        "subgraph_id": labels, "subgraph_size": sizes, "feature_activations": np.arange(8) + 1,
    })  # fmt: skip


def test_group_statistics_by_hand():
    assert group_index(8, [2, 2, 4]).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]
    assert group_index(8, [2, 4, 8]).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]  # cumulative form
    stats = group_statistics(hand_node_info(), [2, 2, 4])
    assert stats.giant_id == 0 and stats.giant_size == 3
    assert stats.per_group["n_subgraphs"].tolist() == [0, 2, 2]
    assert stats.per_group["subgraphs_per_latent"].tolist() == [0.0, 1.0, 0.5]
    assert [b.tolist() for b in stats.box_sizes] == [[], [2, 2], [2, 2]]
    assert stats.correlations["node_id_vs_subgraph_size"]["n"] == 8
    with pytest.raises(ValueError, match="group sizes"):
        group_statistics(hand_node_info(), [3, 3])


def test_summarise_sae_means_by_latent_and_group():
    from saelab.cooccurrence.summary import summarise_sae

    # tokens 0 and 1 fire latents 0 and 1 together; tokens 2..7 fire latents 2..7 alone
    rows = np.array([0, 0, 1, 1, 2, 3, 4, 5, 6, 7])
    latents = np.array([0, 1, 0, 1, 2, 3, 4, 5, 6, 7])
    counts = CooccurrenceCounts(
        pair_counts(rows, latents, 8, 8), np.bincount(latents, minlength=8), 8, 0.0,
        {"arch": "batchtopk", "l0_mean": 1.25},
    )  # fmt: skip
    result = summarise_sae("x", hand_node_info(), counts, [2, 2, 4])
    # N_01 = C_01 / max(n_0, n_1) = 2 / 2; each row mean is over the 7 other latents
    assert result.mean_by_latent == pytest.approx([1 / 7, 1 / 7, 0, 0, 0, 0, 0, 0])
    assert result.groups["mean_cooccurrence"].tolist() == pytest.approx([1 / 7, 0, 0])
    assert (result.groups["sae_name"] == "x").all()
    record = result.record
    assert record["pretend_groups"] and record["mean_cooccurrence"] == pytest.approx(1 / 28)
    assert (record["giant_subgraph_size"], record["n_non_singleton_subgraphs"]) == (3, 3)
    assert record["box_sizes"] == [[], [2, 2], [2, 2]]


def test_choose_subgraph():
    info = hand_node_info()
    # non-giant subgraphs of size 2..3: B (firing 3 + 7) and C (4 + 8): C fires more
    assert choose_subgraph(info, "auto", (2, 3)) == 2
    assert choose_subgraph(info, 1) == 1
    assert choose_subgraph(info, "auto", (10, 20)) == 1  # none in range: the largest, first id
    with pytest.raises(ValueError, match="does not exist"):
        choose_subgraph(info, 9)


# ------------------------------------------------------------------ from a cache

HOOK = "blocks.0.hook_resid_pre"
CTX = 8


class TableSource:
    def __init__(self, table):
        self.table = table

    def __call__(self, tokens):
        return {HOOK: self.table[tokens.long()]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Rows 0..31 (4 contexts of 8, BOS at each start). Latents 0 and 1 both fire on rows
    1..4; latent 0 alone on 9..10; BOS rows carry 9.0 on every latent (masked). Latent 2 fires
    on row 12 at 0.5 only."""
    table = np.full((32, 3), -1.0, dtype=np.float32)
    table[1:5, :2] = 2.0
    table[9:11, 0] = 3.0
    table[12, 2] = 0.5
    table[::CTX] = 9.0
    tokens = np.arange(32, dtype=np.int32).reshape(4, CTX)
    special = np.zeros(tokens.shape, dtype=bool)
    special[:, 0] = True
    path = tmp_path_factory.mktemp("cooc") / "cache.zarr"
    build_cache(TableSource(torch.from_numpy(table)), tokens, special, [HOOK], path,
                dtype="float32", batch_contexts=1, progress=False)  # fmt: skip
    return path


def identity_sae(arch="relu"):
    sae = build_sae(SAEConfig(arch=arch, d_in=3, width=3, k=1, hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3) * torch.tensor([[1.0], [2.0], [3.0]]))
    return sae


def test_cooccurrence_from_cache_masks_special_tokens(cache):
    result = cooccurrence_from_cache(identity_sae(), cache, 1000, [0.0, 1.0], batch_size=5,
                                     progress=False)  # fmt: skip
    low, high = result[0.0], result[1.0]
    assert low.n_tokens == 28  # 32 rows minus 4 BOS
    assert low.firing_count.tolist() == [6, 4, 1]
    assert low.counts.toarray().tolist() == [[6, 4, 0], [4, 4, 0], [0, 0, 1]]
    assert high.firing_count.tolist() == [6, 4, 0]
    assert low.meta["encoding"] == "eval" and low.meta["l0_mean"] == pytest.approx(11 / 28)


def test_train_mode_batchtopk_option(cache):
    sae = identity_sae("batchtopk")
    with torch.no_grad():
        sae.threshold.fill_(100.0)  # eval mode would select nothing
    evald = cooccurrence_from_cache(sae, cache, 1000, [0.0], batch_size=7, progress=False)[0.0]
    assert evald.firing_count.sum() == 0
    trained = cooccurrence_from_cache(sae, cache, 1000, [0.0], batch_size=7,
                                      encoding="train_batchtopk", progress=False)[0.0]  # fmt: skip
    # 28 tokens = 4 batches of 7 tokens, k = 1: at most 7 selections per batch. Batch 1 (rows
    # 1..7) holds 8 positive entries, so one is dropped; batch 2 holds 3 (rows 9, 10, 12).
    assert trained.firing_count.sum() == 7 + 3
    assert float(sae.threshold) == 100.0


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


def test_every_cache_pass_rejects_an_sae_of_another_width(cache):
    wide = build_sae(SAEConfig(arch="relu", d_in=4, width=3, k=1, hook_name=HOOK))
    for run in (
        lambda: cooccurrence_from_cache(wide, cache, 8, [0.0], progress=False),
        lambda: subgraph_pca(wide, cache, [0]),
        lambda: collect_feature_summary(wide, cache, 8, progress=False),
    ):
        with pytest.raises(CacheError, match="is 3 wide but the SAE reads d_in=4"):
            run()


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
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "plot.py"),
                   {"snakemake": snakemake})  # fmt: skip
    names = [f"pca_subgraph_{s}.{kind}" for s in (2, 10) for kind in ("png", "html")]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, "plotly.min.js"])
    assert not list(folder.parent.glob("*.tmp"))
    assert 'src="plotly.min.js"' in (folder / "pca_subgraph_10.html").read_text()
    assert "m subgraph 10 (tau 0.5)" in (folder / "pca_subgraph_10.html").read_text()
    log = (tmp_path / "plot.log").read_text()
    assert [line.rsplit(" ", 1)[1] for line in log.splitlines() if "pca_subgraph" in line] == names


def test_pca_project_matches_known_directions():
    # a 4 x 2 grid in the first two of four dimensions: variances 5 and 1, uncorrelated
    grid = np.array([(x, y, 0.0, 0.0) for x in (-3, -1, 1, 3) for y in (-1, 1)]) + 7.0
    coords, ratio = pca_project(grid)
    np.testing.assert_allclose(ratio, [5 / 6, 1 / 6, 0], atol=1e-12)
    # sklearn's sign rule: the largest loading is positive, so PC1 = x and PC2 = y exactly
    np.testing.assert_allclose(coords[:, 0], grid[:, 0] - 7.0, atol=1e-12)
    np.testing.assert_allclose(coords[:, 1], grid[:, 1] - 7.0, atol=1e-12)


# ------------------------------------------------------------------ feature pages


def find_chromium() -> str:
    """The Debian chromium binary; a missing browser is a failure, not a skip."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.fail("no headless browser found: run `apt-get install chromium` (Debian chromium)")


class FakeTokenizer:
    def decode(self, ids):
        return f"<t{int(ids[0])}>" if int(ids[0]) % 2 else f" w{int(ids[0])}"


def test_logit_effects_by_hand():
    W_U = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, -3.0]])  # d = 2, vocab = 3
    effect = logit_effects(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), W_U, n=2)
    assert effect.top_ids.tolist() == [[0, 2], [1, 0]]
    assert effect.bottom_ids.tolist() == [[1, 2], [2, 0]]
    assert effect.bottom_values[1, 0] == -3.0
    with pytest.raises(ValueError, match="residual"):
        logit_effects(torch.ones(1, 3), W_U)


def test_load_unembedding_from_hf_and_tiny(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "hf").mkdir()
    embed = torch.arange(12.0).reshape(4, 3)  # vocab 4, d 3, tied
    save_file({"model.embed_tokens.weight": embed}, tmp_path / "hf" / "model.safetensors")
    assert torch.equal(load_unembedding(tmp_path), embed.T)
    (tmp_path / "tiny").mkdir()
    save_file({"unembed.W_U": embed.T.contiguous()}, tmp_path / "tiny" / "model.safetensors")
    assert torch.equal(load_unembedding(tmp_path), embed.T)
    with pytest.raises(FileNotFoundError, match="prepare_model"):
        load_unembedding(tmp_path / "nothing")


def write_test_pages(cache, out: Path, single_page: Path | None = None) -> list[Path]:
    """Pages of latents 0 and 1 of the identity SAE on ``cache``, in the fresh folder ``out``."""
    sae = identity_sae()
    summary = collect_feature_summary(sae, cache, 1000, top_n=3, before=2, after=1,
                                      progress=False)  # fmt: skip
    W_U = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    out.mkdir()
    return write_dashboards(summary, [0, 1], FakeTokenizer(), sae.W_dec, W_U, out, title="S 7",
                            single_page=single_page)  # fmt: skip


def test_feature_pages_also_come_as_one_page_for_the_report(cache, tmp_path):
    single = tmp_path / "one.html"
    pages = write_test_pages(cache, tmp_path / "pages", single)
    text = single.read_text()
    assert text.count("<!DOCTYPE html>") == 1 and text.count("Top activations") == 2
    assert '<h1 id="latent-0">' in text and '<h1 id="latent-1">' in text
    # links stay inside the page: the index and the neighbour links point at anchors
    assert 'href="#latent-1"' in text and 'href="#latent-0"' in text
    assert "latent_1.html" not in text and "index.html" not in text
    # each latent's section is the body of its own page, only the links differ
    own = pages[0].read_text()
    section = own[own.index('<h1 id="latent-0">') : own.index("<h2>Other latents")]
    assert section in text
    assert 'href="latent_1.html"' in own and 'href="index.html"' in own


def test_feature_pages_render_in_headless_chromium(cache, tmp_path):
    out = tmp_path / "pages"
    pages = write_test_pages(cache, out)
    text = pages[0].read_text()
    # latent 0's top activation is 3.0 on row 9 (token 9), drawn with full highlight
    assert 'title="3.000"' in text and "&lt;t9&gt;" in text and "rgba(230, 106, 31, 1.00)" in text
    assert "<svg" in text and "promoted" in text and 'href="latent_1.html"' in text
    assert (out / "index.html").is_file()

    shot = tmp_path / "shot.png"
    browser = find_chromium()
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--screenshot={shot}", "--window-size=900,700", pages[0].as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), f"chromium made no screenshot: {run.stderr[-2000:]}"
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[0] > 100 and image.shape[1] > 100
    non_white = (image < 240).any(axis=2)
    assert non_white.mean() > 0.005  # text, bars and highlights were drawn
    orange = (image[..., 0] > 200) & (image[..., 1] < 150) & (image[..., 2] < 100)
    assert orange.sum() > 20  # the histogram bars / highlights


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"saes": ["nope"]}, "not SAEs of"),
        ({"saes": ["batchtopk"]}, "matryoshka"),
        ({"saes": ["matryoshka", "matryoshka-transcoder", "darkmatter-w1024-k16"]}, "one width"),
        ({"saes": ["matryoshka", "relu"], "encoding": "train_batchtopk"}, "train_batchtopk"),
        ({"saes": ["matryoshka"], "component_size": [300, 200]}, "min <= max"),
        ({"saes": ["matryoshka"], "component_size": [5000, 6000]}, "width 4096"),
        ({"saes": ["matryoshka"], "representative": {"threshold": 2.0}}, "not one of"),
        ({"saes": ["matryoshka"], "representative": {"subgraph": "big"}}, "'auto'"),
    ],
)
def test_config_errors_name_the_key(section, message):
    from saelab.checks import load_config
    from saelab.config import REPO_ROOT, ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(REPO_ROOT / "config" / "config.yaml", overrides={"cooccurrence": section})


def test_default_config_section_is_valid():
    from saelab.checks import load_config
    from saelab.config import REPO_ROOT

    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    assert cfg.cooccurrence["saes"] == ["matryoshka", "batchtopk"]
    assert cfg.cooccurrence["component_size"] == [150, 200]
    micro = load_config(REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "tests/config/micro.yaml")
    low, high = micro.cooccurrence["component_size"]
    assert low <= high < micro.saes["matryoshka"].width  # reachable bounds for width 256


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_micro_run_cooccurrence(micro_run):
    analysis = micro_run / "data" / "analysis" / "cooccurrence" / "tiny"
    edge = pd.read_csv(analysis / "edge_thresholds.csv")
    assert set(edge["sae_name"]) >= {"matryoshka", "batchtopk"}
    assert edge["edge_threshold"].between(0, 1).all()
    info = pd.read_csv(next(analysis.glob("matryoshka/node_info_tau*.csv")))
    assert len(info) == 256 and info["subgraph_size"].between(1, 256).all()
    counts = load_counts(next(analysis.glob("matryoshka/counts_tau*.npz")))
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
    from conftest import MICRO, snakemake

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


def test_summary_figures_draw_every_sae_from_the_summary_tables():
    import pandas as pd

    from saelab.plots import cooccurrence as plots

    names = ["matryoshka", "batchtopk"]
    summary = {
        "saes": {
            n: {
                "box_sizes": [[2, 3, 3], [], [5]],
                "per_group": {"n_subgraphs": [2, 0, 1], "subgraphs_per_latent": [0.5, 0, 0.1]},
            }
            for n in names
        }
    }
    by_index = pd.DataFrame({n: np.linspace(0.1, 0.2, 8) for n in names})
    node_info = [pd.DataFrame({"subgraph_size": [1, 1, 2, 2, 5, 5, 5, 5]}) for _ in names]
    opts = {"threshold": 0.0, "component_size": [150, 200], "group_sizes": [2, 2, 4]}
    data = {"summary": summary, "node_info": node_info, "by_index": by_index}
    panels = {
        name: [ax.get_title() for ax in draw(**data, **opts).axes]
        for name, draw in [
            ("subgraph_sizes", plots.draw_subgraph_sizes),
            ("group_subgraph_sizes", plots.draw_group_subgraph_sizes),
            ("group_subgraph_counts", plots.draw_group_subgraph_counts),
            ("cooccurrence_by_index", plots.draw_cooccurrence_by_index),
        ]
    }
    assert panels["subgraph_sizes"] == ["matryoshka (τ = 0)", "batchtopk (τ = 0)"]
    assert panels["group_subgraph_sizes"] == ["matryoshka (τ = 0)", "batchtopk (τ = 0)"]
    assert len(panels["group_subgraph_counts"]) == 2
    assert len(panels["cooccurrence_by_index"]) >= 1
    with pytest.raises(ValueError, match="shorter"):  # one node_info table per SAE
        plots.draw_subgraph_sizes(summary, node_info[:1], **opts)


@pytest.mark.parametrize("codes", ["sae", "clustered"])
def test_speed_benchmark_script_agrees_with_dense_counts(cache, tmp_path, codes):
    import sys

    from saelab.config import REPO_ROOT
    from saelab.saes.io import save_sae

    out = tmp_path / "bench.json"
    args = [sys.executable, str(REPO_ROOT / "benchmarks" / "cooccurrence_speed.py"),
            "--codes", codes, "--dense-chunks", "0", "--json", str(out)]  # fmt: skip
    if codes == "sae":
        save_sae(identity_sae(), tmp_path / "sae")
        args += ["--sae", str(tmp_path / "sae"), "--cache", str(cache), "--tokens", "1000"]
    else:
        args += ["--tokens", "3000", "--width", "512", "--k", "8"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["identical"] and result["speedup"] > 0 and result["memory_ratio"] > 0
    if codes == "sae":  # the cache fixture: 28 tokens, latents 0, 1, 2 fire (see `cache`)
        assert (result["tokens"], result["width"], result["firing_latents"]) == (28, 3, 3)
        assert result["sparse_nnz"] == 5  # C = [[6, 4, 0], [4, 4, 0], [0, 0, 1]]
