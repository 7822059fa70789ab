"""Rule ce_recovered: CE loss recovered and KL of every named SAE, in one job.

The model loads once and every costly pass is shared (saelab.ce.ce_recovered): one clean
pass per batch, zero- and mean-ablation passes per spliced hook, one spliced pass per SAE.
"""

from saelab.ce import ce_recovered
from saelab.evaluate import heldout_contexts, write_metrics
from saelab.models import configured_device, load_prepared
from saelab.precision import model_precision
from saelab.runtime import configure_torch, logged
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = dict(snakemake.params.eval)  # defaults filled by config/schema.yaml
    spec = snakemake.params.model
    device = configured_device(snakemake.config)
    names = list(snakemake.params.saes)
    results = {}
    if opts["ce_contexts"] > 0:
        saes = {
            name: load_sae(path, device=device)
            for name, path in zip(names, snakemake.input.saes, strict=True)
        }
        precision = model_precision(spec, device, log)
        model = load_prepared(snakemake.input.model_dir, device=device, dtype=precision.dtype)
        first = saes[names[0]]
        tokens, special = heldout_contexts(
            snakemake.input.cache, first.cfg.hook_name, opts["ce_contexts"], opts["ce_context_len"]
        )
        log.info("CE recovered of %d SAEs on %d contexts of %d tokens", len(saes), *tokens.shape)
        scores = ce_recovered(
            model,
            tokens,
            saes,
            special_mask=special,
            splice_special=opts["splice_special"],
            both_conventions=opts["ce_both_conventions"],
            batch_size=opts["ce_batch_size"],
            n_resamples=opts["bootstrap_resamples"],
            seed=opts["bootstrap_seed"],
        )
        for name, ce in scores.items():
            results[name] = ce._asdict()
            low, high = (ce.intervals or {}).get("ce_loss_score", (float("nan"),) * 2)
            log.info(
                "%s: CE loss score %.4f [%.4f, %.4f] (BOS %s; %d predictions), KL %.4f",
                name, ce.ce_loss_score, low, high, ce.bos_convention, ce.n_tokens, ce.kl_sae,
            )  # fmt: skip
    else:
        log.info("evaluation.ce_contexts is 0: CE recovered skipped")
    record = precision.record() if opts["ce_contexts"] > 0 else None
    write_metrics({"saes": results, "options": opts, "precision": record}, snakemake.output.scores)
