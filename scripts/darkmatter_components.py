"""Rule darkmatter_components: R² of the error, its linear and its nonlinear part, predicted
from the SAE reconstructions of the other components (Fig 10b)."""

from pathlib import Path

from saelab.cache import open_cache
from saelab.darkmatter.components import components_record
from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.regression import load_regression
from saelab.runtime import configure_torch, logged, write_json_atomic
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
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
    write_json_atomic(record, snakemake.output.table)
