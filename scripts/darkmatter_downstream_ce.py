"""Rule darkmatter_downstream_ce: CE with x̂, x̂ + linear and x̂ + nonlinear error spliced in, for
the width sweep at fixed k and the k sweep at fixed width."""

import time

import torch

from saelab.cache import open_cache
from saelab.darkmatter.downstream import downstream_record
from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.regression import load_regression
from saelab.models import configured_device, load_prepared
from saelab.precision import model_precision
from saelab.runtime import configure_torch, logged, write_json_atomic

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = snakemake.params.downstream
    spec = opts["model"]
    device = configured_device(snakemake.config)
    precision = model_precision(spec, device, log)
    model = load_prepared(snakemake.input.model_dir, device=device, dtype=precision.dtype)
    cache = open_cache(snakemake.input.cache)
    names = list(dict.fromkeys([*opts["width_sweep"], *opts["k_sweep"]]))
    records = {}
    clean_ce = {}  # the grid SAEs share their window: one clean pass
    for name in names:
        t0 = time.perf_counter()
        sae_info = load_sae_info(snakemake.input[f"info_{name}"])
        regression = load_regression(snakemake.input[f"reg_{name}"])
        with torch.no_grad():
            records[name] = downstream_record(
                model, sae_info, regression, cache, opts["n_contexts"], opts["batch_size"], clean_ce,
                n_resamples=opts["bootstrap_resamples"], seed=opts["bootstrap_seed"],
            )  # fmt: skip
        r = records[name]
        log.info(
            "%s: CE clean %.4f sae %.4f +lin %.4f +nonlin %.4f -> %.1f%% / %.1f%% (%.1f s)",
            name, r["ce_clean"], r["ce_sae"], r["ce_sae_linear"], r["ce_sae_nonlinear"],
            r["linear_percent"], r["nonlinear_percent"], time.perf_counter() - t0,
        )  # fmt: skip
    write_json_atomic(
        {
            "width_sweep": opts["width_sweep"],
            "k_sweep": opts["k_sweep"],
            "saes": records,
            "precision": precision.record(),
        },
        snakemake.output.table,
    )
