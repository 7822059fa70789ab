"""Rules train_saes_<group>: a group of SAEs trained on the same batches of one activation cache, or
(``source: stream``) straight from the model's forward over the tokenized corpus."""

from saelab.cache import cache_manifest
from saelab.models import configured_device, prepared_model_info
from saelab.precision import model_precision
from saelab.runtime import configure_torch, logged
from saelab.stream import model_stream
from saelab.tracking import tracker_for
from saelab.train import TrainConfig, build_saes, spec_hooks, train_saes

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    cfg = TrainConfig.from_dict(dict(snakemake.params.train))
    specs = snakemake.params.saes
    device = configured_device(snakemake.config)  # where the job runs, not a rule param
    if cfg.source == "stream":
        spec, cache = snakemake.params.model, snakemake.params.cache
        info = prepared_model_info(snakemake.input.model_dir)
        hooks = spec_hooks(specs)
        forward = model_precision(spec, device, log)
        data = model_stream(
            info, snakemake.input.model_dir, snakemake.input.tokens, hooks, cfg,
            batch_contexts=cache["batch_contexts"], backend=cache["backend"],
            device=device, cache_n_tokens=cache["n_tokens"], dtype=forward.dtype,
        )  # fmt: skip
        widths, where = data.probe_widths(), f"a stream of {snakemake.input.tokens}"
    else:
        data = snakemake.input.cache
        widths, where = cache_manifest(data)["widths"], data
    # Built (seeded) on the CPU, then moved: the same initial weights on every device.
    saes = {name: sae.to(device) for name, sae in build_saes(specs, widths).items()}
    outputs = dict(snakemake.output.items())
    missing = sorted(set(saes) - set(outputs))
    if missing:
        raise ValueError(f"the rule names no output directory for SAE(s) {missing}")
    log.info("training %s on %s: %d steps of %d tokens", sorted(saes), where, cfg.steps,
             cfg.batch_size)  # fmt: skip
    with tracker_for(snakemake.params.tracking, snakemake.params.group, cfg, specs) as track:
        results = train_saes(
            data, saes, cfg, {name: outputs[name] for name in saes}, on_log=track.log
        )
        for name, result in results.items():
            heldout = result.metrics["heldout"]
            track.summary(name, {"heldout": heldout, "tokens_per_s": result.tokens_per_s})
            log.info(
                "%s: %d steps, %.0f tokens/s; held-out FVU %.4f (centred %.4f), L0 %.1f",
                name,
                result.steps,
                result.tokens_per_s,
                heldout["fvu_element_global"],
                heldout["fvu_dim_centred"],
                heldout["l0"],
            )
