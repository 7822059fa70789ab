"""Rule darkmatter_norms: held-out R² of six squared norms from x for every SAE (Fig 7)."""

from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.norms import norm_prediction_r2
from saelab.darkmatter.regression import load_regression, shuffled_split
from saelab.runtime import logged, write_json_atomic

with logged(snakemake.log[0]) as log:
    common = snakemake.params.common
    results = {}
    for name in snakemake.params.names:
        info = load_sae_info(snakemake.input[f"info_{name}"])
        reg = load_regression(snakemake.input[f"reg_{name}"])
        split = shuffled_split(len(info.x), common["seed"], common["train_fraction"])
        results[name] = norm_prediction_r2(info, reg, split, common["norm_intercept"])
        log.info("%s: %s", name, {k: round(v, 4) for k, v in results[name].items()})
    write_json_atomic({"r2": results, **common}, snakemake.output.json)
