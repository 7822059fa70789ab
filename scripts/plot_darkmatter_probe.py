"""Rule plot_darkmatter_fig14: latents' mean activations against the norm probe."""

import numpy as np

from saelab.plots.common import save_figure
from saelab.plots.darkmatter import plot_probe
from saelab.runtime import logged

with logged(snakemake.log[0]):
    opts = snakemake.params.options
    with np.load(snakemake.input.data) as data:
        probe = dict(data)
    fig = plot_probe(probe, opts["probe_running_window"], opts["probe_limit"])
    save_figure(fig, snakemake.output.figure)
