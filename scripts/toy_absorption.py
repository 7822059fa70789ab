"""Rule toy_absorption: absorption of flat vs Matryoshka SAEs on the toy feature hierarchy.

``params.toy``: HierarchyConfig fields plus archs, seeds and training settings
(see :func:`saelab.toy.split_params`). Writes the per-arch, per-seed table (CSV) and the figure.
Runs train one after another on one thread each (the toy's tensors are tiny: more threads only
slow them down), so the rule needs one thread.
"""

import os
from pathlib import Path

from saelab.runtime import logged

with logged(snakemake.log[0]) as log:
    import matplotlib.pyplot as plt

    from saelab.plots.toy import plot_toy_absorption
    from saelab.toy import compare_from_params

    params = dict(snakemake.params.toy)
    log.info("toy absorption experiment: %s", params)
    result = compare_from_params(params)

    table = Path(snakemake.output.table)
    table.parent.mkdir(parents=True, exist_ok=True)
    tmp_table = table.with_name(f".{table.name}.tmp")
    result.runs.to_csv(tmp_table, index=False, float_format="%.6g")
    os.replace(tmp_table, table)

    figure = Path(snakemake.output.figure)
    figure.parent.mkdir(parents=True, exist_ok=True)
    tmp_figure = figure.with_name(f".{figure.stem}.tmp{figure.suffix}")
    fig = plot_toy_absorption(result)
    fig.savefig(tmp_figure, dpi=150)
    plt.close(fig)
    os.replace(tmp_figure, figure)

    for arch, row in result.by_arch().iterrows():
        log.info(
            "%s: absorption rate %.3f (min %.3f, max %.3f, %d seeds)",
            arch, row["mean"], row["min"], row["max"], row["count"],
        )  # fmt: skip
