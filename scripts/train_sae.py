"""Rule train_sae: a group of SAEs trained on the same batches of one activation cache."""

from saelab.cache import cache_manifest
from saelab.runtime import logged, set_torch_threads
from saelab.train import TrainConfig, build_saes, train_saes

with logged(snakemake.log[0]) as log:
    set_torch_threads(snakemake.threads)
    cache = snakemake.input.cache
    widths = cache_manifest(cache)["widths"]
    saes = build_saes(snakemake.params.saes, widths)
    outputs = dict(snakemake.output.items())
    missing = sorted(set(saes) - set(outputs))
    if missing:
        raise ValueError(f"the rule names no output directory for SAE(s) {missing}")
    cfg = TrainConfig.from_dict(dict(snakemake.params.train))
    log.info("training %s on %s: %d steps of %d tokens", sorted(saes), cache, cfg.steps,
             cfg.batch_size)  # fmt: skip
    results = train_saes(cache, saes, cfg, {name: outputs[name] for name in saes})
    for name, result in results.items():
        heldout = result.metrics["heldout"]
        log.info(
            "%s: %d steps, %.0f tokens/s; held-out FVU %.4f (centred %.4f), L0 %.1f",
            name,
            result.steps,
            result.tokens_per_s,
            heldout["fvu"],
            heldout["fvu_centered"],
            heldout["l0"],
        )
