"""Rules plot_subgraph_sizes, plot_group_subgraph_sizes, plot_group_subgraph_counts and
plot_cooccurrence_by_index: one figure each (``params.figure``) from the summary's tables."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from saelab.plots.common import save_figure
from saelab.plots.cooccurrence import (
    cooccurrence_by_index,
    group_box_plots,
    group_subgraph_counts,
    subgraph_size_histogram,
)
from saelab.runtime import logged

with logged(snakemake.log[0]):
    opts = snakemake.params.plot
    tau = opts["threshold"]
    summary = json.loads(Path(snakemake.input.summary).read_text())
    names = list(summary["saes"])
    figure = snakemake.params.figure
    if figure == "subgraph_sizes":
        sizes = {n: pd.read_csv(snakemake.input[n])["subgraph_size"].to_numpy() for n in names}
        fig = subgraph_size_histogram(sizes, tuple(opts["component_size"]), tau)
    elif figure == "group_subgraph_sizes":
        boxes = {n: [np.asarray(b) for b in summary["saes"][n]["box_sizes"]] for n in names}
        fig = group_box_plots(boxes, tau)
    elif figure == "group_subgraph_counts":
        counts = {n: np.asarray(summary["saes"][n]["per_group"]["n_subgraphs"]) for n in names}
        per_latent = {
            n: np.asarray(summary["saes"][n]["per_group"]["subgraphs_per_latent"]) for n in names
        }
        fig = group_subgraph_counts(counts, per_latent, tau)
    elif figure == "cooccurrence_by_index":
        frame = pd.read_csv(snakemake.input.by_index)
        fig = cooccurrence_by_index(
            {n: frame[n].to_numpy() for n in names}, opts["group_sizes"], tau
        )
    else:
        raise ValueError(f"unknown co-occurrence figure {figure!r}")
    save_figure(fig, snakemake.output.figure)
