"""Rule plot_darkmatter_fig09: % of CE recovered by splicing the linear or nonlinear error back."""

import json
from pathlib import Path

from saelab.plots.common import save_figure
from saelab.plots.darkmatter_interventions import plot_downstream_ce
from saelab.runtime import logged

with logged(snakemake.log[0]):
    table = json.loads(Path(snakemake.input.table).read_text())
    save_figure(plot_downstream_ce(table), snakemake.output.figure)
