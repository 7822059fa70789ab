"""Rule darkmatter_per_token: error norms across widths and their cross-width predictability."""

import numpy as np

from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.per_token import cross_width_predictability, error_norms
from saelab.darkmatter.regression import load_regression
from saelab.runtime import logged, savez_atomic

with logged(snakemake.log[0]) as log:
    names = list(snakemake.params.names)
    infos = [load_sae_info(snakemake.input[f"info_{name}"]) for name in names]
    regs = [load_regression(snakemake.input[f"reg_{name}"]) for name in names]
    norms = error_norms(infos, regs)
    cross = cross_width_predictability(norms, **snakemake.params.common)
    log.info(
        "R2 of |e_j| from |e_i| (upper triangle):\n%s", np.array2string(cross.r2_basic, precision=3)
    )
    savez_atomic(snakemake.output.npz, dict(
        names=np.array(names), widths=np.array([i.attrs["width"] for i in infos]),
        total=norms.total, linear=norms.linear, nonlinear=norms.nonlinear,
        r2_basic=cross.r2_basic, r2_with_nonlinear=cross.r2_with_nonlinear,
        extra_percent=cross.extra_percent, token_ids=infos[0].token_ids, rows=infos[0].rows,
    ))  # fmt: skip
