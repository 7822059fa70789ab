"""Rule plot_darkmatter_fig10a: the FVU breakdown with gradient-pursuit reconstructions."""

import json
from pathlib import Path

from saelab.darkmatter.scaling import pursuit_power_law
from saelab.plots.common import save_figure
from saelab.plots.darkmatter_interventions import plot_pursuit_breakdown
from saelab.runtime import logged

with logged(snakemake.log[0]):
    records = {name: json.loads(Path(path).read_text()) for name, path in snakemake.input.items()}
    k_sweep = [records[name] for name in snakemake.params.sweeps["k_sweep"] if name in records]
    records = [records[name] for name in snakemake.params.sweeps["width_sweep"]]
    save_figure(
        plot_pursuit_breakdown(
            records, pursuit_power_law(records), k_sweep if len(k_sweep) > 1 else None
        ),
        snakemake.output.figure,
    )
