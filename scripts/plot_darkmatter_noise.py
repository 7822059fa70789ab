"""Rule plot_darkmatter_fig15: the synthetic noise simulation."""

import json
from pathlib import Path

from saelab.plots.common import save_figure
from saelab.plots.darkmatter import plot_noise
from saelab.runtime import logged

with logged(snakemake.log[0]):
    noise = json.loads(Path(snakemake.input.data).read_text())
    save_figure(plot_noise(noise), snakemake.output.figure)
