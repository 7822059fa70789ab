"""Rules darkmatter_component_saes (TopK SAEs on the other components' hooks) and
darkmatter_components (R² of the error, its linear and its nonlinear part from the SAE
reconstructions of those components)."""

from pathlib import Path

from saelab.cache import cache_manifest, open_cache
from saelab.darkmatter.components import components_record
from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.pursuit import write_json
from saelab.darkmatter.regression import load_regression
from saelab.runtime import atomic_dir, logged, set_torch_threads
from saelab.saes.io import load_sae
from saelab.train import TrainConfig, build_saes, train_saes


def train(log):
    cache = snakemake.input.cache
    specs = snakemake.params.train["saes"]
    cfg = TrainConfig.from_dict(dict(snakemake.params.train["train"]))
    with atomic_dir(snakemake.output.saes) as out:
        if not specs:
            log.warning("no predictor hook is cached: Fig 10b shows only 'res'")
            return
        saes = build_saes(specs, cache_manifest(cache)["widths"])
        log.info("training %s: %d steps of %d tokens", sorted(saes), cfg.steps, cfg.batch_size)
        results = train_saes(cache, saes, cfg, {label: out / label for label in saes})
        for label, result in results.items():
            log.info("%s: held-out FVU %.4f", label, result.metrics["heldout"]["fvu"])


def components(log):
    opts = snakemake.params.components
    for label, reason in opts["skipped"].items():
        log.warning("predictor %s skipped: %s", label, reason)
    info = load_sae_info(snakemake.input.info)
    regression = load_regression(snakemake.input.reg)
    saes = Path(snakemake.input.saes)
    predictors = {label: load_sae(saes / label) for label in opts["predictors"]}
    record = components_record(
        info, regression, predictors, open_cache(snakemake.input.cache), opts["seed"]
    )
    record["skipped"] = opts["skipped"]
    for target, row in record["r2"].items():
        log.info("%s: %s", target, ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    write_json(record, snakemake.output.table)


with logged(snakemake.log[0]) as log:
    set_torch_threads(snakemake.threads)
    if snakemake.rule == "darkmatter_component_saes":
        train(log)
    else:
        components(log)
