"""Rule cooccurrence_subgraphs: edge threshold by bisection, subgraphs and the node_info table."""

from saelab.cooccurrence import (
    connected_subgraphs,
    find_edge_threshold,
    load_counts,
    node_info_table,
    normalised_cooccurrence,
)
from saelab.cooccurrence.counts import save_sparse_matrix
from saelab.runtime import logged, write_json_atomic, write_text_atomic

with logged(snakemake.log[0]) as log:
    opts = dict(snakemake.params.graph)
    name = snakemake.wildcards.sae
    counts = load_counts(snakemake.input.counts)
    matrix = normalised_cooccurrence(counts)
    search = find_edge_threshold(
        matrix, opts["min_size"], opts["max_size"], tolerance=opts["tolerance"]
    )
    log.info(
        "%s tau=%g: edge threshold %.4f, largest subgraph %d nodes (%s)", name,
        opts["threshold"], search.threshold, search.largest_size,
        "within bounds" if search.reached else "closest to the bounds",
    )  # fmt: skip
    result = connected_subgraphs(matrix, search.threshold)
    table = node_info_table(result, name, opts["threshold"], counts.firing_count)
    write_text_atomic(table.to_csv(index=False), snakemake.output.node_info)
    save_sparse_matrix(result.matrix, snakemake.output.matrix)
    edge = {
        "sae_name": name,
        "activation_threshold": opts["threshold"],
        "edge_threshold": search.threshold,
        "largest_subgraph": search.largest_size,
        "within_bounds": search.reached,
        "bounds": [opts["min_size"], opts["max_size"]],
        "n_subgraphs": int(result.labels.max() + 1),
        "n_non_singleton": int((table.groupby("subgraph_id")["subgraph_size"].first() > 1).sum()),
        "trace": [[theta, size] for theta, size in search.trace],
    }
    write_json_atomic(edge, snakemake.output.edge, indent=1)
