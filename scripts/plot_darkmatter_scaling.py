"""Rules plot_darkmatter_fig01/02/03/11: the scaling figures from scaling.json."""

import json
from pathlib import Path

from saelab.plots.common import draw_named, save_figure
from saelab.plots.darkmatter import (
    plot_error_r2_contours,
    plot_nonlinear_fvu_contour,
    plot_power_law_fit,
    plot_scaling_breakdown,
)
from saelab.runtime import logged

FIGURES = {
    "fig01": plot_scaling_breakdown,
    "fig02": plot_power_law_fit,
    "fig03": plot_error_r2_contours,
    "fig11": plot_nonlinear_fvu_contour,
}

with logged(snakemake.log[0]):
    summary = json.loads(Path(snakemake.input.data).read_text())
    save_figure(draw_named(FIGURES, snakemake.params.figure, summary), snakemake.output.figure)
