"""Rule plot_training_curves: every run's train_log.jsonl as loss/FVU/L0/dead curves."""

import json
from pathlib import Path

from saelab.plots.common import save_figure
from saelab.plots.saes import plot_training_curves
from saelab.runtime import logged

with logged(snakemake.log[0]):
    logs = {
        name: [
            json.loads(line) for line in (Path(path) / "train_log.jsonl").read_text().splitlines()
        ]
        for name, path in snakemake.input.items()
    }
    save_figure(plot_training_curves(logs), snakemake.output.figure)
