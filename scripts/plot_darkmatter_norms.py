"""Rules plot_darkmatter_fig07 (norm prediction violin) and fig13 (baselines)."""

import json
from pathlib import Path

from saelab.plots.common import draw_named, save_figure
from saelab.plots.darkmatter import plot_baselines, plot_norm_violin
from saelab.runtime import logged

FIGURES = {"fig07": plot_norm_violin, "fig13": plot_baselines}

with logged(snakemake.log[0]):
    data = json.loads(Path(snakemake.input.data).read_text())
    save_figure(draw_named(FIGURES, snakemake.params.figure, data), snakemake.output.figure)
