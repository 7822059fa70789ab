"""Rule darkmatter_probe: the norm probe a* against each latent's mean activation, and the
running mean Fig 14 draws over the first ``probe_limit`` latents."""

from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.norms import probe_vs_latents, running_mean
from saelab.darkmatter.regression import shuffled_split
from saelab.runtime import logged, savez_atomic
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    info = load_sae_info(snakemake.input.info)
    sae = load_sae(snakemake.input.sae)
    common = snakemake.params.common
    split = shuffled_split(len(info.x), common["seed"], common["train_fraction"])
    result = probe_vs_latents(info, sae.W_dec.detach().numpy(), sae.b_dec.detach().numpy(), split)
    log.info(
        "%s: probe R2 %.4f, %d latents fired, corr(W_dec a*, mean activation) %.3f",
        info.attrs["sae"], result.probe_r2, len(result.latents), result.correlation,
    )  # fmt: skip
    shown = snakemake.params.shown
    smooth = running_mean(result.probe_dot[: shown["limit"]], shown["window"])
    savez_atomic(
        snakemake.output.npz,
        {"sae": info.attrs["sae"], **result._asdict(), "running_mean": smooth,
         "running_window": shown["window"]},
    )  # fmt: skip
