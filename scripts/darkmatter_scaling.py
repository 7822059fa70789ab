"""Rule darkmatter_scaling: FVU against width, power-law fit with CIs, breakdown, contour table,
and the series the scaling figures draw (scaling_series.npz)."""

import json
from pathlib import Path

from saelab.darkmatter.scaling import scaling_series, scaling_summary
from saelab.runtime import logged, savez_atomic, write_json_atomic

with logged(snakemake.log[0]) as log:
    opts = snakemake.params.scaling
    rows = []
    for point in opts["points"]:
        metrics = json.loads(Path(snakemake.input[f"reg_{point['name']}"]).read_text())
        rows.append({**metrics, "name": point["name"], "width": point["width"], "k": point["k"]})
    pursuit = None
    if opts["pursuit"]:
        pursuit = {
            key[len("pursuit_") :]: json.loads(Path(path).read_text())
            for key, path in snakemake.input.items()
            if key.startswith("pursuit_")
        }
    summary = scaling_summary(rows, opts["curve_k"], pursuit)
    fit = summary["power_law"]
    log.info(
        "FVU = %.4f + %.4g W^-%.3f (c 95%% CI %s); FVU falls with width: %s",
        fit["c"], fit["a"], fit["m"], fit["c_ci"], summary["fvu_falls_with_width"],
    )  # fmt: skip
    write_json_atomic(summary, snakemake.output.json)
    # the series from the summary as written (the figures' numbers are the JSON's)
    written = json.loads(Path(snakemake.output.json).read_text())
    savez_atomic(snakemake.output.series, scaling_series(written))
