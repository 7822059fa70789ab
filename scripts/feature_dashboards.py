"""Rule feature_dashboards: an offline HTML page per latent of the representative subgraph."""

import json
from pathlib import Path

import numpy as np

from saelab.cooccurrence.dashboards import write_dashboards
from saelab.features import load_feature_summary
from saelab.models import load_tokenizer, load_unembedding
from saelab.runtime import atomic_dir, logged
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    opts = snakemake.params.dashboards
    choice = json.loads(Path(snakemake.input.choice).read_text())
    summary = load_feature_summary(snakemake.input.features)
    sae = load_sae(snakemake.input.sae)
    tokenizer = load_tokenizer(snakemake.input.tokenizer)
    W_U = load_unembedding(snakemake.input.model_dir)
    latents = np.asarray(choice["latents"])
    # the most frequent latents first, when the subgraph has more than max_latents
    order = np.argsort(-summary.firing_count[latents], kind="stable")
    shown = sorted(latents[order][: opts["max_latents"]].tolist())
    title = (
        f"{choice['sae']}: subgraph {choice['subgraph_id']} "
        f"(tau {choice['activation_threshold']:g}, {len(latents)} latents)"
    )
    log.info("%s: pages for %d latents", title, len(shown))
    with atomic_dir(snakemake.output.pages) as folder:
        write_dashboards(summary, shown, tokenizer, sae.W_dec, W_U, folder, title=title,
                         n_logits=opts["n_logits"], single_page=snakemake.output.page)  # fmt: skip
