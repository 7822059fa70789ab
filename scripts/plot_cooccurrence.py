"""Rules plot_subgraph_sizes, plot_group_subgraph_sizes, plot_group_subgraph_counts and
plot_cooccurrence_by_index: one figure each (``params.figure``) from the summary's tables."""

import json
from pathlib import Path

from saelab.plots.common import draw_named, save_figure
from saelab.plots.cooccurrence import SUMMARY_FIGURES
from saelab.runtime import logged

with logged(snakemake.log[0]):
    summary = json.loads(Path(snakemake.input.summary).read_text())
    fig = draw_named(
        SUMMARY_FIGURES, snakemake.params.figure, summary, snakemake.input, snakemake.params.plot
    )
    save_figure(fig, snakemake.output.figure)
