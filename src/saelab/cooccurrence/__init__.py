"""Co-occurrence of SAE latents (methods §2, seed 000 "Matryoshka SAE latents co-occur strongly
but remain independently interpretable").

* :mod:`~saelab.cooccurrence.counts`: firing and pair counts from sparse codes (cost N·k², stored
  as scipy CSR), the normalised matrix, the true Jaccard index and the original's "Jaccard".
* :mod:`~saelab.cooccurrence.collect`: the SAE's sparse codes over a cache (the torch part).
* :mod:`~saelab.cooccurrence.graph`: the bisection for the edge threshold, connected subgraphs,
  the ``node_info`` table.
* :mod:`~saelab.cooccurrence.summary`: Matryoshka groups (and "pretend" groups), per-group
  statistics and correlations, mean co-occurrence by latent index.
* :mod:`~saelab.cooccurrence.pca`: PCA of a subgraph's partial reconstructions.
* :mod:`~saelab.cooccurrence.dashboards`: static HTML feature pages.
"""

from typing import TYPE_CHECKING

from saelab.cooccurrence.counts import (
    CooccurrenceCounts,
    dense_pair_counts,
    jaccard,
    load_counts,
    normalised_cooccurrence,
    pair_counts,
    save_counts,
    seed000_jaccard,
    threshold_tag,
)
from saelab.cooccurrence.graph import (
    SubgraphResult,
    ThresholdSearch,
    connected_subgraphs,
    find_edge_threshold,
    largest_component_size,
    node_info_table,
)

if TYPE_CHECKING:  # loaded lazily by __getattr__ below; named here for type checkers
    from saelab.cooccurrence.collect import cooccurrence_from_cache

__all__ = [
    "CooccurrenceCounts",
    "SubgraphResult",
    "ThresholdSearch",
    "connected_subgraphs",
    "cooccurrence_from_cache",
    "dense_pair_counts",
    "find_edge_threshold",
    "jaccard",
    "largest_component_size",
    "load_counts",
    "node_info_table",
    "normalised_cooccurrence",
    "pair_counts",
    "save_counts",
    "seed000_jaccard",
    "threshold_tag",
]


def __getattr__(name):
    # The torch-dependent entry point loads on first use, so the graph and summary steps (and
    # their Snakemake jobs) do not pay for importing torch.
    if name == "cooccurrence_from_cache":
        from saelab.cooccurrence.collect import cooccurrence_from_cache

        return cooccurrence_from_cache
    raise AttributeError(f"module 'saelab.cooccurrence' has no attribute {name!r}")
