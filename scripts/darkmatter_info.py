"""Rule darkmatter_info: one SAE's x, x̂, error, norms, L0 and active latents over the analysis window."""

from saelab.darkmatter.info import WindowConfig, compute_sae_info, write_sae_info
from saelab.models import configured_device
from saelab.runtime import configure_torch, logged
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    device = configured_device(snakemake.config)
    window = WindowConfig.from_section(snakemake.params.window)
    sae = load_sae(snakemake.input.sae, device=device)
    name = snakemake.wildcards.sae
    info = compute_sae_info(sae, snakemake.input.cache, window, name, device=device)
    log.info(
        "%s: %d tokens (positions %s of the %s split), mean L0 %.1f, mean |error|^2 %.4g",
        name, len(info.x), info.attrs["window"], window.split, info.l0.mean(),
        info.error_sq_norm.mean(),
    )  # fmt: skip
    write_sae_info(info, snakemake.output.info)
