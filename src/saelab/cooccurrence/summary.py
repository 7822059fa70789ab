"""Per-group statistics of subgraphs (the original's ``4_summary_stats`` notebook, methods §2.1 S4).

Latents are assigned to Matryoshka groups from the SAE's own group sizes (individual sizes, in
order); a non-Matryoshka SAE gets "pretend" groups of the same sizes, so the two are compared
latent index for latent index. Subgraph statistics exclude singletons and the giant component
(the largest subgraph, found from the data; the notebook hard-coded its size, 192).
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import numpy as np
import pandas as pd
import scipy.stats

from saelab.cooccurrence.counts import (
    CooccurrenceCounts,
    mean_cooccurrence_by_latent,
    normalised_cooccurrence,
)
from saelab.groups import resolve_group_sizes


def group_index(width: int, group_sizes: list[int]) -> np.ndarray:
    """[width] group of each latent from individual (or cumulative) group sizes."""
    sizes = resolve_group_sizes(group_sizes, width)
    return np.repeat(np.arange(len(sizes)), sizes)


def giant_subgraph_id(node_info: pd.DataFrame) -> int | None:
    """Id of the largest subgraph if it has more than one node (the smallest id on ties)."""
    # pandas annotates these reductions and masks loosely; the values are a Series and an int
    sizes = cast(pd.Series, node_info.groupby("subgraph_id")["subgraph_size"].first())
    if sizes.empty or cast(int, sizes.max()) < 2:
        return None
    ties = cast(pd.Series, sizes[sizes == sizes.max()])
    return int(cast(int, ties.index.min()))


class GroupStatistics(NamedTuple):
    per_group: pd.DataFrame
    """One row per group: group, first_latent, n_latents, n_in_subgraphs (latents in a
    non-singleton, non-giant subgraph), n_subgraphs (distinct such subgraphs touching the group),
    subgraphs_per_latent, mean/median subgraph size of its latents in such subgraphs."""
    box_sizes: list[np.ndarray]
    """Per group: subgraph size of each latent in a non-singleton, non-giant subgraph."""
    correlations: dict[str, Any]
    giant_id: int | None
    giant_size: int


def _corr(x: np.ndarray, y: np.ndarray) -> dict[str, float | int | None]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": len(x), "pearson_r": None, "pearson_p": None, "spearman_r": None}
    pearson = scipy.stats.pearsonr(x, y)
    spearman = scipy.stats.spearmanr(x, y)
    return {
        "n": len(x),
        # scipy's result classes are built at runtime; pyright cannot see their fields
        "pearson_r": float(pearson.statistic),  # pyright: ignore[reportAttributeAccessIssue]
        "pearson_p": float(pearson.pvalue),  # pyright: ignore[reportAttributeAccessIssue]
        "spearman_r": float(spearman.statistic),  # pyright: ignore[reportAttributeAccessIssue]
    }


def group_statistics(node_info: pd.DataFrame, group_sizes: list[int]) -> GroupStatistics:
    """Box-plot data, subgraph counts per group and the notebook's correlations."""
    node_info = node_info.sort_values("node_id")
    width = len(node_info)
    groups = group_index(width, group_sizes)
    giant = giant_subgraph_id(node_info)
    sizes = node_info["subgraph_size"].to_numpy()
    ids = node_info["subgraph_id"].to_numpy()
    in_small = (sizes >= 2) & (ids != (giant if giant is not None else -1))
    rows, box = [], []
    starts = np.concatenate([[0], np.cumsum(resolve_group_sizes(group_sizes, width))[:-1]])
    for g in range(int(groups.max()) + 1):
        mask = groups == g
        chosen = in_small & mask
        box.append(sizes[chosen])
        n_latents = int(mask.sum())
        n_subgraphs = len(np.unique(ids[chosen]))
        rows.append(
            {
                "group": g,
                "first_latent": int(starts[g]),
                "n_latents": n_latents,
                "n_in_subgraphs": int(chosen.sum()),
                "n_subgraphs": n_subgraphs,
                "subgraphs_per_latent": n_subgraphs / n_latents,
                "mean_subgraph_size": float(sizes[chosen].mean()) if chosen.any() else np.nan,
                "median_subgraph_size": float(np.median(sizes[chosen])) if chosen.any() else np.nan,
            }
        )
    per_group = pd.DataFrame(rows)
    node_ids = node_info["node_id"].to_numpy()
    mid = (sizes > 2) & (sizes < 100)
    has_mean = per_group["mean_subgraph_size"].notna().to_numpy()
    correlations = {
        "group_vs_subgraph_size": _corr(groups[in_small], sizes[in_small]),
        "group_vs_mean_subgraph_size": _corr(
            per_group["group"].to_numpy()[has_mean],
            per_group["mean_subgraph_size"].to_numpy()[has_mean],
        ),
        "group_vs_subgraphs_per_latent": _corr(
            per_group["group"].to_numpy(), per_group["subgraphs_per_latent"].to_numpy()
        ),
        "node_id_vs_subgraph_size": _corr(node_ids, sizes),
        "node_id_vs_subgraph_size_2_100": _corr(node_ids[mid], sizes[mid]),
    }
    giant_size = int(sizes[ids == giant][0]) if giant is not None else 0
    return GroupStatistics(per_group, box, correlations, giant, giant_size)


class SAESummary(NamedTuple):
    """The summary of one SAE at one activation threshold (rule ``cooccurrence_summary``)."""

    record: dict[str, Any]
    """Its entry of the summary JSON: groups, giant subgraph, correlations, box-plot data."""
    groups: pd.DataFrame
    """:attr:`GroupStatistics.per_group` plus ``sae_name`` and the group's ``mean_cooccurrence``."""
    mean_by_latent: np.ndarray
    """[D] mean normalised co-occurrence of each latent with the D − 1 others."""


def summarise_sae(
    name: str, node_info: pd.DataFrame, counts: CooccurrenceCounts, group_sizes: list[int]
) -> SAESummary:
    """Group statistics of ``node_info`` under ``group_sizes`` and the mean co-occurrence of
    every latent and group, from the counts the subgraphs were built on."""
    stats = group_statistics(node_info, group_sizes)
    means = mean_cooccurrence_by_latent(normalised_cooccurrence(counts))
    table = stats.per_group.assign(sae_name=name)
    table["mean_cooccurrence"] = [
        float(means[lo : lo + n].mean())
        for lo, n in zip(table["first_latent"], table["n_latents"], strict=True)
    ]
    subgraph_sizes = cast(pd.Series, node_info.groupby("subgraph_id")["subgraph_size"].first())
    record = {
        "group_sizes": list(group_sizes),
        "pretend_groups": counts.meta.get("arch") != "matryoshka",
        "n_tokens": counts.n_tokens,
        "l0_mean": counts.meta.get("l0_mean"),
        "giant_subgraph_id": stats.giant_id,
        "giant_subgraph_size": stats.giant_size,
        "n_non_singleton_subgraphs": int((subgraph_sizes > 1).sum()),
        "mean_cooccurrence": float(means.mean()),
        "correlations": stats.correlations,
        "per_group": stats.per_group.to_dict(orient="list"),
        "box_sizes": [b.tolist() for b in stats.box_sizes],
    }
    return SAESummary(record, table, means)


def subgraph_table(node_info: pd.DataFrame) -> pd.DataFrame:
    """One row per subgraph: id, size, total and max firing count, latents (space-separated)."""
    grouped = node_info.sort_values("node_id").groupby("subgraph_id")
    return pd.DataFrame(
        {
            "subgraph_id": grouped["subgraph_id"].first(),
            "subgraph_size": grouped["subgraph_size"].first(),
            "total_firing": grouped["feature_activations"].sum(),
            "latents": grouped["node_id"].apply(lambda ids: " ".join(map(str, ids))),
        }
    ).reset_index(drop=True)


def choose_subgraph(
    node_info: pd.DataFrame, subgraph: int | str = "auto", size_range: tuple[int, int] = (5, 30)
) -> int:
    """The representative subgraph: an explicit id, or ``auto``: among non-giant subgraphs with
    size in ``size_range``, the one whose latents fire most in total (else the largest
    non-giant, non-singleton subgraph; else the giant)."""
    table = subgraph_table(node_info)
    if subgraph != "auto":
        subgraph = int(subgraph)
        if subgraph not in set(table["subgraph_id"]):
            raise ValueError(
                f"subgraph {subgraph} does not exist; ids run 0..{table['subgraph_id'].max()}"
            )
        return subgraph
    giant = giant_subgraph_id(node_info)
    candidates = table[table["subgraph_id"] != (giant if giant is not None else -1)]
    lo, hi = size_range
    sizes = candidates["subgraph_size"]
    within = cast(pd.DataFrame, candidates[(sizes >= lo) & (sizes <= hi)])
    if not within.empty:
        return int(within.sort_values("total_firing", ascending=False)["subgraph_id"].iloc[0])
    multi = cast(pd.DataFrame, candidates[sizes >= 2])
    if not multi.empty:
        return int(multi.sort_values("subgraph_size", ascending=False)["subgraph_id"].iloc[0])
    if giant is not None:
        return giant
    threshold = (
        node_info["activity_threshold"].iloc[0] if "activity_threshold" in node_info else "?"
    )
    n_firing = (
        int(np.count_nonzero(node_info["feature_activations"].to_numpy() > 0))
        if "feature_activations" in node_info
        else "?"
    )
    raise ValueError(
        f"every latent is a singleton at activation threshold {threshold} ({n_firing} of "
        f"{len(node_info)} latents fire): there is no subgraph to analyse; choose a threshold at "
        "which latents co-occur (`cooccurrence.representative.threshold`, one of "
        "`cooccurrence.thresholds`)"
    )


def subgraph_latents(node_info: pd.DataFrame, subgraph: int) -> np.ndarray:
    return np.sort(node_info.loc[node_info["subgraph_id"] == subgraph, "node_id"].to_numpy())


def subgraphs_in_size_range(
    node_info: pd.DataFrame, size_range: tuple[int, int]
) -> dict[int, np.ndarray]:
    """Every subgraph whose size lies in ``size_range`` (inclusive), by id (ascending), with its
    latents (sorted): the subgraphs ``pca.all_in_size_range`` asks for."""
    low, high = size_range
    table = subgraph_table(node_info)
    sizes = table["subgraph_size"]
    chosen = table[(sizes >= low) & (sizes <= high)]["subgraph_id"]
    return {int(i): subgraph_latents(node_info, int(i)) for i in chosen}
