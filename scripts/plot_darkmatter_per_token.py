"""Rules plot_darkmatter_fig04/05/06/12: the per-token figures from per_token.npz."""

import numpy as np

from saelab.plots.common import save_figure
from saelab.plots.darkmatter import (
    plot_cross_width,
    plot_linear_nonlinear_trace,
    plot_nonlinear_extra,
    plot_token_trace,
)
from saelab.runtime import logged

with logged(snakemake.log[0]):
    opts = snakemake.params.options
    figure = snakemake.params.figure
    with np.load(snakemake.input.data) as data:
        data = dict(data)
    trace = (opts["trace_start"], opts["trace_len"])
    if figure == "fig04":
        fig = plot_token_trace(data, *trace)
    elif figure == "fig05":
        fig = plot_cross_width(data)
    elif figure == "fig06":
        fig = plot_linear_nonlinear_trace(data, *trace)
    elif figure == "fig12":
        fig = plot_nonlinear_extra(data)
    else:
        raise ValueError(f"plot_darkmatter_per_token draws fig04/05/06/12, not {figure}")
    save_figure(fig, snakemake.output.figure)
