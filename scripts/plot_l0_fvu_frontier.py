"""Rule plot_l0_fvu_frontier: held-out FVU against L0 for every SAE."""

import json
from pathlib import Path

from saelab.plots.common import save_figure
from saelab.plots.saes import plot_l0_fvu_frontier
from saelab.runtime import logged

with logged(snakemake.log[0]):
    evaluations = [json.loads(Path(path).read_text()) for path in snakemake.input]
    points = [
        {"name": e["sae"], "arch": e["arch"], "l0": e["l0"]["mean"],
         "fvu": e["fvu_all"][snakemake.params.fvu]}
        for e in evaluations
    ]  # fmt: skip
    save_figure(plot_l0_fvu_frontier(points, snakemake.params.fvu), snakemake.output.figure)
