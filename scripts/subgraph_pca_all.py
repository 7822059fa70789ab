"""Rule subgraph_pca_all: PCA of every subgraph whose size lies in ``pca.all_in_size_range``, one
series per subgraph (``pca_subgraph_<id>.npz``, :func:`saelab.cooccurrence.pca.pca_series`) in a
folder; rule plot_pca_all draws them. One encoding pass over the cache serves every subgraph."""

import pandas as pd

from saelab.cooccurrence.pca import pca_series, subgraph_pcas
from saelab.cooccurrence.summary import subgraphs_in_size_range
from saelab.features import token_strings
from saelab.models import load_tokenizer
from saelab.runtime import atomic_dir, configure_torch, logged, savez_atomic
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = dict(snakemake.params.pca)
    node_info = pd.read_csv(snakemake.input.node_info)
    low, high = opts["all_in_size_range"]
    subgraphs = subgraphs_in_size_range(node_info, (low, high))
    log.info("%d subgraphs of size %d..%d", len(subgraphs), low, high)
    results = subgraph_pcas(
        load_sae(snakemake.input.sae), snakemake.input.cache, subgraphs,
        max_examples=opts["max_examples"], max_tokens=opts["max_tokens"],
        batch_size=opts["batch_size"], split=opts["split"], encoding=opts["encoding"],
    )  # fmt: skip
    tokenizer = load_tokenizer(snakemake.input.tokenizer)
    with atomic_dir(snakemake.output.folder) as folder:
        for subgraph, result in results.items():
            if isinstance(result, ValueError):  # none of the scanned tokens fires it
                log.warning("subgraph %s skipped: %s", subgraph, result)
                continue
            strings = token_strings(tokenizer, result.token_ids)
            log.info("subgraph %d: %d tokens", subgraph, len(strings))
            savez_atomic(folder / f"pca_subgraph_{subgraph}.npz",
                         pca_series(result, strings, subgraph))  # fmt: skip
