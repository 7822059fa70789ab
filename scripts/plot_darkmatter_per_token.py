"""Rules plot_darkmatter_fig04/05/06/12: the per-token figures from per_token.npz."""

from functools import partial

import numpy as np

from saelab.plots.common import draw_named, save_figure
from saelab.plots.darkmatter import (
    plot_cross_width,
    plot_linear_nonlinear_trace,
    plot_nonlinear_extra,
    plot_token_trace,
)
from saelab.runtime import logged

with logged(snakemake.log[0]):
    opts = snakemake.params.options
    trace = {"start": opts["trace_start"], "length": opts["trace_len"]}
    figures = {
        "fig04": partial(plot_token_trace, **trace),
        "fig05": plot_cross_width,
        "fig06": partial(plot_linear_nonlinear_trace, **trace),
        "fig12": plot_nonlinear_extra,
    }
    with np.load(snakemake.input.data) as data:
        data = dict(data)
    save_figure(draw_named(figures, snakemake.params.figure, data), snakemake.output.figure)
