"""Rule representative_subgraph: the subgraph shown by the PCA and the feature pages."""

import pandas as pd

from saelab.cooccurrence.summary import choose_subgraph, subgraph_latents
from saelab.runtime import logged, write_json_atomic

with logged(snakemake.log[0]) as log:
    opts = snakemake.params.representative
    node_info = pd.read_csv(snakemake.input.node_info)
    subgraph = choose_subgraph(node_info, opts["subgraph"], tuple(opts["size_range"]))
    latents = subgraph_latents(node_info, subgraph)
    choice = {
        "sae": opts["sae"],
        "activation_threshold": float(node_info["activity_threshold"].iloc[0]),
        "subgraph_id": subgraph,
        "how": "config" if opts["subgraph"] != "auto" else f"auto, size in {opts['size_range']}",
        "latents": latents.tolist(),
        "firing_count": node_info.set_index("node_id").loc[latents, "feature_activations"].tolist(),
    }
    log.info("representative subgraph %d of %s: %d latents", subgraph, opts["sae"], len(latents))
    write_json_atomic(choice, snakemake.output.choice, indent=1)
