"""Rule evaluate_sae: activation metrics and absorption of one SAE, plus its CE recovered and KL
(computed for every SAE of the cache at once by rule ce_recovered), as JSON.

Every metric is computed in saelab.evaluate; this script only wires the rule's files to it.
"""

import json
from pathlib import Path

from saelab.absorption import first_letter_absorption_from_probe_file
from saelab.evaluate import evaluate_sae, heldout_reader, write_metrics
from saelab.metrics import fvu_key
from saelab.models import configured_device
from saelab.runtime import configure_torch, logged
from saelab.saes.io import load_sae
from saelab.tracking import log_evaluation

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = dict(snakemake.params.eval)  # defaults filled by config/schema.yaml
    cache = snakemake.input.cache
    name = getattr(snakemake.wildcards, "sae", None) or Path(snakemake.input.sae).name
    sae = load_sae(snakemake.input.sae, device=configured_device(snakemake.config))
    cfg = sae.cfg
    metrics = {
        "sae": name,
        "arch": cfg.arch,
        "width": cfg.width,
        "k": cfg.k,
        "hook_name": cfg.hook_name,
        "target_hook_name": cfg.target_hook_name,
        "group_sizes": cfg.group_sizes,
        "options": opts,
    }
    log.info("evaluating %s (%s) on the held-out split of %s", name, cfg.arch, cache)
    reader = heldout_reader(sae, cache, opts["batch_size"])
    metrics.update(
        evaluate_sae(
            sae,
            reader,
            n_tokens=opts["n_tokens"],
            fvu_definition=opts["fvu"],
            seed001=opts["seed001"],
        )
    )
    log.info(
        "FVU (%s) %.4f, L0 %.1f", opts["fvu"], metrics[fvu_key(opts["fvu"])], metrics["l0"]["mean"]
    )

    ce_scores = json.loads(Path(snakemake.input.ce).read_text())["saes"]
    metrics["ce_recovered"] = ce_scores.get(name)
    if metrics["ce_recovered"] is not None:
        log.info("CE loss score %.4f (rule ce_recovered)", metrics["ce_recovered"]["ce_loss_score"])

    metrics["first_letter_absorption"] = None
    if opts["absorption"]:
        # The probe is the hook's (rule first_letter_probe; none for a transcoder).
        probe = getattr(snakemake.input, "probe", None)
        absorption = first_letter_absorption_from_probe_file(sae, cache, probe)
        metrics["first_letter_absorption"] = absorption._asdict()
        log.info(
            "first-letter absorption: %s",
            absorption.reason or f"{absorption.full_absorption_rate:.4f}",
        )

    write_metrics(metrics, snakemake.output.metrics)
    log_evaluation(snakemake.params.tracking, snakemake.params.group, name, metrics)
