"""Rule prepare_model: dequantize the offline gemma, or fetch / point at a hub model."""

from saelab.models import prepare_model, resolve_model
from saelab.runtime import logged

with logged(snakemake.log[0]) as log:
    spec = snakemake.params.model
    info = resolve_model(spec["name"], model_path=spec["model_path"])
    prepare_model(info, snakemake.output.model_dir)
    log.info("prepared %s (%s) in %s", info.model_id, info.source, snakemake.output.model_dir)
