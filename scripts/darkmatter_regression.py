"""Rule darkmatter_regression: no-intercept least squares of x -> error and x -> |error|^2."""

from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.regression import fit_regression, write_regression
from saelab.runtime import configure_torch, logged

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    info = load_sae_info(snakemake.input.info)
    reg = fit_regression(info, **snakemake.params.regression)
    m = reg.metrics
    log.info(
        "%s: R2 vector %.4f, R2 norm %.4f, FVU %.4f, nonlinear FVU %.4f",
        info.attrs["sae"], m["r2_vector"], m["r2_norm"], m["fvu"], m["nonlinear_error_fvu"],
    )  # fmt: skip
    write_regression(reg, snakemake.output.npz, snakemake.output.json)
