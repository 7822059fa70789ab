"""Rule trajectory_graph: newcomers, edges, backward trace; for every T the graph JSON (rule
plot_trajectory_graph draws its PNG) and the interactive HTML of one prompt (a document: its
hover describes each latent from the feature summaries and the tokenizer)."""

from saelab.features import load_feature_summary
from saelab.models import load_tokenizer
from saelab.plots.trajectories import graph_title, trajectory_graph_html_figure, write_html_atomic
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
        html = trajectory_graph_html_figure(
            traced.graph, meta["tokens"], layers, T, hover, graph_title(meta["prompt_name"], T)
        )
        write_html_atomic(html, snakemake.output[f"html_T{T}"])
