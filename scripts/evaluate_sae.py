"""Rule evaluate_sae: activation metrics, CE recovered and KL, and absorption of one SAE, as JSON.

Every metric is computed in saelab.evaluate; this script only wires the rule's files to it.
"""

from pathlib import Path

from saelab.config import TinyConfig
from saelab.evaluate import (
    ce_recovered,
    evaluate_sae,
    first_letter_absorption_from_cache,
    heldout_contexts,
    heldout_reader,
    write_metrics,
)
from saelab.models import default_device, load_model, load_tokenizer, resolve_model
from saelab.runtime import logged, set_torch_threads
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    set_torch_threads(snakemake.threads)
    opts = dict(snakemake.params.eval)  # defaults filled by config/schema.yaml
    spec = snakemake.params.model
    device = default_device(spec["device"])
    cache = snakemake.input.cache
    name = getattr(snakemake.wildcards, "sae", None) or Path(snakemake.input.sae).name
    sae = load_sae(snakemake.input.sae, device=device)
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
    log.info("FVU (%s) %.4f, L0 %.1f", opts["fvu"], metrics["fvu"], metrics["l0"]["mean"])

    metrics["ce_recovered"] = None
    if opts["ce_contexts"] > 0:
        info = resolve_model(
            spec["name"], tiny=TinyConfig(**spec["tiny"]), model_path=spec["model_path"]
        )
        model = load_model(info, snakemake.input.model_dir, device=device)
        tokens, special = heldout_contexts(
            cache, cfg.hook_name, opts["ce_contexts"], opts["ce_context_len"]
        )
        log.info("CE recovered on %d contexts of %d tokens", *tokens.shape)
        ce = ce_recovered(
            model,
            tokens,
            {name: sae},
            special_mask=special,
            splice_special=opts["splice_special"],
            batch_size=opts["ce_batch_size"],
        )[name]
        metrics["ce_recovered"] = ce._asdict()
        log.info("CE loss score %.4f, KL %.4f", ce.ce_loss_score, ce.kl_sae)
        del model

    metrics["first_letter_absorption"] = None
    if opts["absorption"]:
        absorption = first_letter_absorption_from_cache(
            sae, cache, load_tokenizer(snakemake.input.model_dir), split=opts["absorption_split"]
        )
        metrics["first_letter_absorption"] = absorption._asdict()
        log.info(
            "first-letter absorption: %s",
            absorption.reason or f"{absorption.full_absorption_rate:.4f}",
        )

    write_metrics(metrics, snakemake.output.metrics)
