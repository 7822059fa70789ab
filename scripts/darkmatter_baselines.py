"""Rule darkmatter_baselines: R² of the squared error norm from x and from baselines (Fig 13).

The SAEs of a ``baselines_sweep`` family (one per layer by default) are encoded here over the
same window as sae_info, in one job: their info groups are not needed by anything else. Without
that family the grid's SAEs are used, through the info groups sae_info already wrote.
"""

from pathlib import Path

import numpy as np

from saelab.darkmatter.info import WindowConfig, compute_sae_info, load_sae_info
from saelab.darkmatter.norms import baseline_r2, losses_for_rows
from saelab.darkmatter.regression import shuffled_split
from saelab.models import configured_device
from saelab.runtime import configure_torch, logged, write_json_atomic
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = snakemake.params.baselines
    device = configured_device(snakemake.config)
    window = WindowConfig.from_section(opts["window"])
    losses = {}
    for key in snakemake.input.keys():
        if key.startswith("loss_"):
            with np.load(Path(snakemake.input[key])) as data:
                losses[key[len("loss_") :]] = (data["rows"], data["loss"])
    results = []
    for point in opts["points"]:
        name, cache = point["name"], opts["caches"][point["name"]]
        if f"info_{name}" in snakemake.input.keys():  # the grid's own info group
            info = load_sae_info(snakemake.input[f"info_{name}"])
        else:
            sae = load_sae(snakemake.input[f"sae_{name}"], device=device)
            info = compute_sae_info(sae, snakemake.input[f"cache_{cache}"], window, name, device)
        split = shuffled_split(len(info.x), opts["seed"], opts["train_fraction"])
        token_loss = losses_for_rows(*losses[cache], info.rows) if cache in losses else None
        r2 = baseline_r2(info, split, token_loss, snakemake.params.token_id_in_sample)
        results.append({**point, "n_tokens": len(info.x), "r2": r2})
        log.info("%s: %s", name, {k: round(v, 4) for k, v in r2.items()})
    in_sample = bool(snakemake.params.token_id_in_sample)
    write_json_atomic({"saes": results, "token_id_in_sample": in_sample}, snakemake.output.json)
