"""Rule feature_summary: per-latent firing counts, top activations with contexts, histograms."""

from pathlib import Path

from saelab.features import collect_feature_summary, save_feature_summary
from saelab.runtime import configure_torch, logged
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = dict(snakemake.params.features)  # defaults filled by config/schema.yaml
    name = snakemake.wildcards.sae
    sae = load_sae(snakemake.input.sae)
    log.info("feature summary of %s over %d tokens of %s", name, opts["n_tokens"],
             snakemake.input.cache)  # fmt: skip
    summary = collect_feature_summary(
        sae,
        snakemake.input.cache,
        n_tokens=opts["n_tokens"],
        top_n=opts["top_n"],
        before=opts["before"],
        after=opts["after"],
        batch_size=opts["batch_size"],
        n_bins=opts["n_bins"],
        split=opts["split"],
        sae_name=name,
    )
    dead = int((summary.firing_count == 0).sum())
    log.info("%d tokens; %d of %d latents never fired", summary.n_tokens, dead, summary.width)
    save_feature_summary(summary, Path(snakemake.output.summary))
