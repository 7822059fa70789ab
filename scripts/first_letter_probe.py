"""Rule first_letter_probe: the first-letter probe of one hook's single-word tokens, which every
SAE of the hook is measured against (rule evaluate_sae's absorption)."""

from saelab.letter_probe import first_letter_probe_from_cache, save_first_letter_probe
from saelab.models import load_tokenizer
from saelab.runtime import configure_torch, logged

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    hook = snakemake.wildcards.hook
    tokenizer = load_tokenizer(snakemake.input.model_dir)
    cached = first_letter_probe_from_cache(
        snakemake.input.cache, hook, tokenizer, split=snakemake.params.split
    )
    probe = cached.probe
    if probe.reason is None:
        log.info(
            "%s: probe over %d letters on %d single-word tokens of %d types; test accuracy %.3f",
            hook, len(probe.kept), len(probe.rows), probe.n_types, probe.probe_accuracy,
        )  # fmt: skip
    else:
        log.info("%s: no probe: %s", hook, probe.reason)
    save_first_letter_probe(snakemake.output.probe, cached)
