"""Rule plot_ce_recovered: CE loss recovered and KL per SAE."""

import json
from pathlib import Path

from saelab.plots.common import save_figure
from saelab.plots.saes import plot_ce_recovered
from saelab.runtime import logged

with logged(snakemake.log[0]):
    rows = []
    for path in snakemake.input:
        evaluation = json.loads(Path(path).read_text())
        ce = evaluation.get("ce_recovered")
        if ce:
            rows.append({
                "name": evaluation["sae"], "arch": evaluation["arch"],
                "ce_recovered_zero": ce["ce_loss_score"],
                "ce_recovered_mean": ce["ce_loss_score_mean"], "kl": ce["kl_sae"],
                "intervals": ce.get("intervals"),
                "hook": ce.get("hook_name"),
            })  # fmt: skip
    save_figure(plot_ce_recovered(rows), snakemake.output.figure)
