"""Rule plot_matryoshka_prefix_fvu: FVU of every nested prefix of every Matryoshka SAE."""

import json
from pathlib import Path

from saelab.metrics import fvu_key
from saelab.plots.common import save_figure
from saelab.plots.saes import plot_matryoshka_prefix_fvu
from saelab.runtime import logged

with logged(snakemake.log[0]):
    fvu_name = snakemake.params.fvu
    prefixes = {}
    for path in snakemake.input:
        evaluation = json.loads(Path(path).read_text())
        if evaluation.get("matryoshka"):
            rows = evaluation["matryoshka"]["prefix_fvu"]
            prefixes[evaluation["sae"]] = {
                "sizes": [row["n_latents"] for row in rows],
                "fvu": [row[fvu_key(fvu_name)] for row in rows],
            }
    save_figure(plot_matryoshka_prefix_fvu(prefixes), snakemake.output.figure)
