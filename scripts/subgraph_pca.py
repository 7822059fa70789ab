"""Rules subgraph_pca and subgraph_pca_all: PCA of subgraph partial reconstructions, as PNG
panels and interactive plotly HTML (one subgraph, or every subgraph in a size range)."""

import json
from pathlib import Path

import pandas as pd

from saelab.cooccurrence.pca import subgraph_pca
from saelab.cooccurrence.summary import subgraph_latents, subgraph_table
from saelab.features import token_strings
from saelab.models import load_tokenizer
from saelab.plots.common import save_figure, write_plotly_html
from saelab.plots.cooccurrence import pca_panels, pca_plotly
from saelab.runtime import atomic_dir, logged, set_torch_threads
from saelab.saes.io import load_sae


def analyse(sae, latents, title, png, html, opts, tokenizer, log, plotlyjs=True):
    result = subgraph_pca(
        sae, snakemake.input.cache, latents, max_examples=opts["max_examples"],
        max_tokens=opts["max_tokens"], batch_size=opts["batch_size"], split=opts["split"],
        encoding=opts["encoding"],
    )  # fmt: skip
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
    name = sae.cfg.extra.get("run", Path(snakemake.input.sae).name)
    tau = snakemake.wildcards.tau.replace("_", ".")
    if snakemake.params.mode == "representative":
        choice = json.loads(Path(snakemake.input.choice).read_text())
        title = f"{choice['sae']} subgraph {choice['subgraph_id']} (tau {tau})"
        analyse(sae, choice["latents"], title, snakemake.output.figure, snakemake.output.html,
                opts, tokenizer, log)  # fmt: skip
    else:
        node_info = pd.read_csv(snakemake.input.node_info)
        low, high = opts["all_in_size_range"]
        table = subgraph_table(node_info)
        chosen = table[(table["subgraph_size"] >= low) & (table["subgraph_size"] <= high)]
        log.info("%d subgraphs of size %d..%d", len(chosen), low, high)
        with atomic_dir(snakemake.output.folder) as folder:
            for subgraph in chosen["subgraph_id"]:
                latents = subgraph_latents(node_info, int(subgraph))
                try:
                    analyse(sae, latents, f"{name} subgraph {subgraph} (tau {tau})",
                            folder / f"pca_subgraph_{subgraph}.png",
                            folder / f"pca_subgraph_{subgraph}.html", opts, tokenizer, log,
                            plotlyjs="directory")  # fmt: skip  # one plotly.min.js beside them
                except ValueError as err:  # a subgraph none of the scanned tokens fires
                    log.warning("subgraph %s skipped: %s", subgraph, err)
