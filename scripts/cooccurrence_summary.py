"""Rule cooccurrence_summary: per-group subgraph statistics, correlations, and the mean
co-occurrence of each latent, for every SAE compared at one activation threshold."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from saelab.cooccurrence import load_counts, normalised_cooccurrence
from saelab.cooccurrence.counts import mean_cooccurrence_by_latent
from saelab.cooccurrence.summary import group_statistics
from saelab.runtime import logged


def jsonable(value):
    """Plain JSON types; NaN becomes null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def replace_with(path, write):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


with logged(snakemake.log[0]) as log:
    opts = snakemake.params.summary
    summary = {"threshold": opts["threshold"], "saes": {}}
    groups, by_index = [], {}
    for name in opts["saes"]:
        node_info = pd.read_csv(snakemake.input[f"node_info_{name}"])
        sizes = opts["group_sizes"][name]
        stats = group_statistics(node_info, sizes)
        counts = load_counts(snakemake.input[f"counts_{name}"])
        means = mean_cooccurrence_by_latent(normalised_cooccurrence(counts))
        by_index[name] = means
        table = stats.per_group.assign(sae_name=name)
        table["mean_cooccurrence"] = [
            float(means[lo : lo + n].mean())
            for lo, n in zip(table["first_latent"], table["n_latents"], strict=True)
        ]
        groups.append(table)
        summary["saes"][name] = {
            "group_sizes": sizes,
            "pretend_groups": counts.meta.get("arch") != "matryoshka",
            "n_tokens": counts.n_tokens,
            "l0_mean": counts.meta.get("l0_mean"),
            "giant_subgraph_id": stats.giant_id,
            "giant_subgraph_size": stats.giant_size,
            "n_non_singleton_subgraphs": int(
                (node_info.groupby("subgraph_id")["subgraph_size"].first() > 1).sum()
            ),
            "mean_cooccurrence": float(means.mean()),
            "correlations": stats.correlations,
            "per_group": stats.per_group.to_dict(orient="list"),
            "box_sizes": [b.tolist() for b in stats.box_sizes],
        }
        log.info(
            "%s: giant %d nodes, subgraphs per group %s, r(group, size) = %s", name,
            stats.giant_size, stats.per_group["n_subgraphs"].tolist(),
            stats.correlations["group_vs_subgraph_size"]["pearson_r"],
        )  # fmt: skip
    replace_with(
        snakemake.output.summary, lambda p: p.write_text(json.dumps(jsonable(summary), indent=1))
    )
    replace_with(snakemake.output.groups, lambda p: pd.concat(groups).to_csv(p, index=False))
    frame = pd.DataFrame({"latent": range(len(next(iter(by_index.values())))), **by_index})
    replace_with(snakemake.output.by_index, lambda p: frame.to_csv(p, index=False))
