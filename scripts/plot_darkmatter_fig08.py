"""Rule plot_darkmatter_fig08: detection scores of SAEs trained on the linear and nonlinear error."""

import json
from pathlib import Path

from saelab.plots.common import save_figure
from saelab.plots.darkmatter_interventions import plot_train_on_error
from saelab.runtime import logged

with logged(snakemake.log[0]):
    scores = json.loads(Path(snakemake.input.scores).read_text())
    save_figure(plot_train_on_error(scores), snakemake.output.figure)
