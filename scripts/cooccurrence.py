"""Rule cooccurrence: firing and pair counts of one SAE at every activation threshold."""

import time

from saelab.cooccurrence import save_counts
from saelab.cooccurrence.collect import cooccurrence_from_cache
from saelab.runtime import configure_torch, logged
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = dict(snakemake.params.cooc)  # defaults filled by config/schema.yaml
    name = snakemake.wildcards.sae
    sae = load_sae(snakemake.input.sae)
    t0 = time.perf_counter()
    results = cooccurrence_from_cache(
        sae,
        snakemake.input.cache,
        opts["n_tokens"],
        opts["thresholds"],
        batch_size=opts["batch_size"],
        split=opts["split"],
        encoding=opts["encoding"],
        method=opts["method"],
        sae_name=name,
    )
    for (threshold, counts), path in zip(results.items(), snakemake.output.counts, strict=True):
        log.info(
            "%s tau=%g: %d tokens, mean L0 %.1f, %d latents fire, %d stored pairs",
            name, threshold, counts.n_tokens, counts.meta["l0_mean"],
            int((counts.firing_count > 0).sum()), counts.counts.nnz,
        )  # fmt: skip
        save_counts(counts, path)
    log.info("done in %.1f s", time.perf_counter() - t0)
