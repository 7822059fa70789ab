"""Rule plot_darkmatter_fig10b: R² of the error parts from other components' reconstructions."""

import json
from pathlib import Path

from saelab.plots.common import save_figure
from saelab.plots.darkmatter_interventions import plot_components
from saelab.runtime import logged

with logged(snakemake.log[0]):
    table = json.loads(Path(snakemake.input.table).read_text())
    save_figure(plot_components(table), snakemake.output.figure)
