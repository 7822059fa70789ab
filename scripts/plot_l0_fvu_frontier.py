"""Rule plot_l0_fvu_frontier: held-out FVU against L0 for every named SAE and the dark-matter
grid (its regression.json: dim-centred FVU and L0 over the analysis window)."""

import json
from pathlib import Path

from saelab.metrics import fvu_key
from saelab.plots.common import save_figure
from saelab.plots.saes import plot_l0_fvu_frontier
from saelab.runtime import logged

with logged(snakemake.log[0]) as log:
    fvu_name = snakemake.params.fvu
    points = []
    for path in snakemake.input.evaluations:
        e = json.loads(Path(path).read_text())
        ce = e.get("ce_recovered") or {}
        points.append({"name": e["sae"], "arch": e["arch"], "l0": e["l0"]["mean"],
                       "fvu": e[fvu_key(fvu_name)], "hook": ce.get("hook_name")})  # fmt: skip
    grid = []
    for point, path in zip(snakemake.params.grid, snakemake.input.grid, strict=True):
        regression = json.loads(Path(path).read_text())
        grid.append({**point, "l0": regression["l0_mean"], "fvu": regression["fvu"]})
    if grid and fvu_name != "dim_centred":
        log.warning("the grid's FVU is dim_centred while the named SAEs show %s", fvu_name)
    save_figure(plot_l0_fvu_frontier(points, fvu_name, grid), snakemake.output.figure)
