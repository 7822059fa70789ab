"""Rule trajectory_graph: newcomers, edges, backward trace; for every T the graph JSON, PNG and
HTML of one prompt."""

from saelab.features import load_feature_summary
from saelab.models import load_tokenizer
from saelab.plots.common import save_figure
from saelab.plots.trajectories import (
    arrivals_at_last_token,
    trajectory_graph_figure,
    trajectory_graph_html_figure,
    write_html_atomic,
)
from saelab.runtime import logged, write_json_atomic
from saelab.trajectories import load_evolution
from saelab.trajectories.describe import node_hover_texts
from saelab.trajectories.graph import trajectory_graph

with logged(snakemake.log[0]) as log:
    opts = snakemake.params.graph
    evolution = load_evolution(snakemake.input.evolution)
    meta = evolution["metadata"]
    layers = [int(layer) for layer in meta["layers"]]
    summaries = {
        layer: load_feature_summary(snakemake.input[f"features_l{layer}"])
        for layer in layers
        if f"features_l{layer}" in snakemake.input.keys()
    }
    tokenizer = load_tokenizer(snakemake.input.tokenizer)
    full = meta["max_prompt_length"]
    lens = {int(layer): entry for layer, entry in evolution["logit_lens"][str(full)].items()}
    for T in opts["T"]:
        traced = trajectory_graph(evolution, T)
        log.info(
            "T=%d: %d nodes, %d edges after the backward trace", T,
            traced.graph.number_of_nodes(), traced.graph.number_of_edges(),
        )  # fmt: skip
        hover = node_hover_texts(
            traced, summaries, tokenizer,
            n_tokens=opts["description_tokens"], neuronpedia=opts["neuronpedia"],
        )  # fmt: skip
        write_json_atomic(traced.to_json(), snakemake.output[f"graph_T{T}"], indent=None)
        title = f"{meta['prompt_name']}: SAE trajectory graph, final rank <= {T}"
        figure = trajectory_graph_figure(
            traced.graph, meta["tokens"], layers, T, lens,
            arrivals_at_last_token(traced.graph, full - 1), title,
        )  # fmt: skip
        save_figure(figure, snakemake.output[f"png_T{T}"])
        html = trajectory_graph_html_figure(traced.graph, meta["tokens"], layers, T, hover, title)
        write_html_atomic(html, snakemake.output[f"html_T{T}"])
