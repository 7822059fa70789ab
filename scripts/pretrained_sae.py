"""Rule pretrained_sae: a released SAE written in saelab's format (saelab.saes.pretrained)."""

from saelab.runtime import logged
from saelab.saes.pretrained import ReleaseInfo, write_release_sae

with logged(snakemake.log[0]) as log:
    info = ReleaseInfo(**snakemake.params.release)
    log.info("%s / %s from %s (repo %s, folder %s)", info.release, info.sae_id,
             snakemake.params.store, info.repo_id, info.folder)  # fmt: skip
    sae = write_release_sae(info, snakemake.params.store, snakemake.output.sae)
    log.info("wrote %s: %s, %d latents at %s", snakemake.output.sae, sae.cfg.arch,
             sae.cfg.width, sae.cfg.hook_name)  # fmt: skip
