"""Rules subgraph_pca and subgraph_pca_all: PCA of subgraph partial reconstructions, as PNG
panels and interactive plotly HTML (one subgraph, or every subgraph in a size range)."""

import json
from pathlib import Path

import pandas as pd

from saelab.cooccurrence.pca import subgraph_pcas
from saelab.cooccurrence.summary import subgraph_latents, subgraph_table
from saelab.features import token_strings
from saelab.models import load_tokenizer
from saelab.plots.common import save_figure, write_plotly_html
from saelab.plots.cooccurrence import pca_panels, pca_plotly
from saelab.runtime import atomic_dir, logged, set_torch_threads
from saelab.saes.io import load_sae


def draw(result, title, png, html, tokenizer, log, plotlyjs=True):
    strings = token_strings(tokenizer, result.token_ids)
    ratio = ", ".join(f"{r:.2f}" for r in result.explained_variance_ratio)
    title = f"{title}: {len(strings)} tokens, explained variance {ratio}"
    log.info(title)
    save_figure(pca_panels(result.coords, strings, result.active_latent, title), png)
    write_plotly_html(
        pca_plotly(result.coords, strings, result.active_latent, title), html, plotlyjs
    )


with logged(snakemake.log[0]) as log:
    set_torch_threads(snakemake.threads)
    opts = dict(snakemake.params.pca)
    sae = load_sae(snakemake.input.sae)
    tokenizer = load_tokenizer(snakemake.input.tokenizer)
    name, tau = opts["sae"], str(opts["threshold"])
    if snakemake.params.mode == "representative":
        choice = json.loads(Path(snakemake.input.choice).read_text())
        subgraphs = {int(choice["subgraph_id"]): choice["latents"]}
    else:
        node_info = pd.read_csv(snakemake.input.node_info)
        low, high = opts["all_in_size_range"]
        table = subgraph_table(node_info)
        chosen = table[(table["subgraph_size"] >= low) & (table["subgraph_size"] <= high)]
        log.info("%d subgraphs of size %d..%d", len(chosen), low, high)
        subgraphs = {int(i): subgraph_latents(node_info, int(i)) for i in chosen["subgraph_id"]}
    # One encoding pass over the cache serves every subgraph.
    results = subgraph_pcas(
        sae, snakemake.input.cache, subgraphs, max_examples=opts["max_examples"],
        max_tokens=opts["max_tokens"], batch_size=opts["batch_size"], split=opts["split"],
        encoding=opts["encoding"],
    )  # fmt: skip
    if snakemake.params.mode == "representative":
        ((subgraph, result),) = results.items()
        if isinstance(result, ValueError):
            raise result
        draw(result, f"{name} subgraph {subgraph} (tau {tau})", snakemake.output.figure,
             snakemake.output.html, tokenizer, log)  # fmt: skip
    else:
        with atomic_dir(snakemake.output.folder) as folder:
            for subgraph, result in results.items():
                if isinstance(result, ValueError):  # none of the scanned tokens fires it
                    log.warning("subgraph %s skipped: %s", subgraph, result)
                    continue
                draw(result, f"{name} subgraph {subgraph} (tau {tau})",
                     folder / f"pca_subgraph_{subgraph}.png",
                     folder / f"pca_subgraph_{subgraph}.html", tokenizer, log,
                     plotlyjs="directory")  # fmt: skip  # one plotly.min.js beside them
