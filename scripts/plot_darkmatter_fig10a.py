"""Rule plot_darkmatter_fig10a: the FVU breakdown with gradient-pursuit reconstructions."""

import json
from pathlib import Path

from saelab.darkmatter.scaling import ScalingError, fit_power_law
from saelab.plots.common import save_figure
from saelab.plots.darkmatter_interventions import plot_pursuit_breakdown
from saelab.runtime import logged

with logged(snakemake.log[0]) as log:
    records = {name: json.loads(Path(path).read_text()) for name, path in snakemake.input.items()}
    k_sweep = [records[name] for name in snakemake.params.sweeps["k_sweep"] if name in records]
    records = [records[name] for name in snakemake.params.sweeps["width_sweep"]]
    try:
        fit = fit_power_law([r["width"] for r in records], [r["pursuit_fvu"] for r in records])
    except ScalingError as err:  # fewer than 3 widths: draw the points without a fit
        log.warning("no power-law fit: %s", err)
        fit = None
    save_figure(
        plot_pursuit_breakdown(records, fit, k_sweep if len(k_sweep) > 1 else None),
        snakemake.output.figure,
    )
