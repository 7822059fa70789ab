"""Rule trajectory_evolution_plot: latent ranks against the step at one layer, full prompt."""

from saelab.plots.common import save_figure
from saelab.plots.trajectories import evolution_figure
from saelab.runtime import logged
from saelab.trajectories import load_evolution
from saelab.trajectories.evolution import steps_at

with logged(snakemake.log[0]):
    evolution = load_evolution(snakemake.input.evolution)
    meta = evolution["metadata"]
    layer = int(snakemake.wildcards.layer)
    length = meta["max_prompt_length"]
    top = snakemake.params.top
    title = f"{meta['prompt_name']}: SAE latent ranks through attention, layer {layer}" + (
        f" (top {top})" if top else ""
    )
    steps = steps_at(evolution, length, layer)
    figure = evolution_figure(steps, meta["tokens"], layer, title, top=top)
    save_figure(figure, snakemake.output.figure)
