"""Rule cooccurrence_summary: per-group subgraph statistics, correlations, and the mean
co-occurrence of each latent, for every SAE compared at one activation threshold."""

import pandas as pd

from saelab.cooccurrence import load_counts
from saelab.cooccurrence.summary import summarise_sae
from saelab.runtime import logged, write_json_atomic, write_text_atomic

with logged(snakemake.log[0]) as log:
    opts = snakemake.params.summary
    summary = {"threshold": opts["threshold"], "saes": {}}
    groups, by_index = [], {}
    for name in opts["saes"]:
        node_info = pd.read_csv(snakemake.input[f"node_info_{name}"])
        counts = load_counts(snakemake.input[f"counts_{name}"])
        result = summarise_sae(name, node_info, counts, opts["group_sizes"][name])
        summary["saes"][name] = result.record
        groups.append(result.groups)
        by_index[name] = result.mean_by_latent
        log.info(
            "%s: giant %d nodes, subgraphs per group %s, r(group, size) = %s", name,
            result.record["giant_subgraph_size"], result.record["per_group"]["n_subgraphs"],
            result.record["correlations"]["group_vs_subgraph_size"]["pearson_r"],
        )  # fmt: skip
    write_json_atomic(summary, snakemake.output.summary, indent=1)
    write_text_atomic(pd.concat(groups).to_csv(index=False), snakemake.output.groups)
    frame = pd.DataFrame({"latent": range(len(next(iter(by_index.values())))), **by_index})
    write_text_atomic(frame.to_csv(index=False), snakemake.output.by_index)
