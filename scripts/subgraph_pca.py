"""Rule subgraph_pca: PCA of the representative subgraph's partial reconstructions, written as
the series its figures show (npz, :func:`saelab.cooccurrence.pca.pca_series`; the PNG and the
plotly HTML are drawn by rules plot_pca_subgraph and plot_pca_subgraph_html)."""

import json
from pathlib import Path

from saelab.cooccurrence.pca import pca_series, subgraph_pca
from saelab.features import token_strings
from saelab.models import load_tokenizer
from saelab.runtime import configure_torch, logged, savez_atomic
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = dict(snakemake.params.pca)
    choice = json.loads(Path(snakemake.input.choice).read_text())
    subgraph = int(choice["subgraph_id"])
    result = subgraph_pca(
        load_sae(snakemake.input.sae), snakemake.input.cache, choice["latents"],
        max_examples=opts["max_examples"], max_tokens=opts["max_tokens"],
        batch_size=opts["batch_size"], split=opts["split"], encoding=opts["encoding"],
    )  # fmt: skip
    strings = token_strings(load_tokenizer(snakemake.input.tokenizer), result.token_ids)
    log.info("subgraph %d: %d tokens, explained variance %s", subgraph, len(strings),
             result.explained_variance_ratio)  # fmt: skip
    savez_atomic(snakemake.output.series, pca_series(result, strings, subgraph))
