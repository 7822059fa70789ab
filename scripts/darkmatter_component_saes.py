"""Rule darkmatter_component_saes: TopK SAEs on the hooks of the other components (Fig 10b)."""

from saelab.cache import cache_manifest
from saelab.runtime import atomic_dir, configure_torch, logged
from saelab.train import TrainConfig, build_saes, train_saes

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    cache = snakemake.input.cache
    specs = snakemake.params.train["saes"]
    cfg = TrainConfig.from_dict(dict(snakemake.params.train["train"]))
    with atomic_dir(snakemake.output.saes) as out:
        if not specs:
            log.warning("no predictor hook is cached: Fig 10b shows only 'res'")
        else:
            saes = build_saes(specs, cache_manifest(cache)["widths"])
            log.info("training %s: %d steps of %d tokens", sorted(saes), cfg.steps, cfg.batch_size)
            results = train_saes(cache, saes, cfg, {label: out / label for label in saes})
            for label, result in results.items():
                log.info(
                    "%s: held-out FVU %.4f", label, result.metrics["heldout"]["fvu_element_global"]
                )
