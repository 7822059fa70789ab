"""Figures of the trajectory analysis (saelab.trajectories): the trajectory graph (static PNG and
interactive HTML) and the rank evolution of latents through one layer's attention."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt
import networkx as nx
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from saelab.plots.common import displayable, uses_token_fonts, write_plotly_html

#: Best final rank -> colour: red (the newcomer ends at the top) through purple to blue.
RANK_CMAP = LinearSegmentedColormap.from_list("rank", ["red", "purple", "blue"])
EMPTY_EDGE_COLOUR = "gold"
INITIAL_COLOUR, INITIAL_DROPPED_COLOUR, NEWCOMER_DROPPED_COLOUR = "lightblue", "silver", "green"

HOVER_DATA_ID = "trajectory-hover-data"
"""Id of the hidden element the HTML fills with its hover texts once plotly has drawn the graph
(so a headless browser's DOM shows that the plot rendered and what its hover holds)."""


def _short(token: str, width: int = 12) -> str:
    text = repr(token)[1:-1]
    return text if len(text) <= width else text[: width - 1] + "…"


def _label(token: str, width: int = 12) -> str:
    """:func:`_short` for a matplotlib figure: characters no installed font has are escaped."""
    return displayable(_short(token, width))


def _edge_widths(graph: nx.DiGraph) -> dict[tuple, float]:
    counts = [d["num_trajectories"] for _, _, d in graph.edges(data=True) if not d["empty"]]
    low, high = (min(counts), max(counts)) if counts else (0, 0)
    widths = {}
    for u, v, d in graph.edges(data=True):
        if d["empty"]:
            widths[(u, v)] = 1.0
        elif high > low:
            widths[(u, v)] = 1 + 3 * (d["num_trajectories"] - low) / (high - low)
        else:
            widths[(u, v)] = 2.0
    return widths


@uses_token_fonts
def trajectory_graph_figure(
    graph: nx.DiGraph,
    tokens: Sequence[str],
    layers: Sequence[int],
    T: int,
    lens_by_layer: Mapping[int, Mapping[str, Any]] | None = None,
    arrivals_by_layer: Mapping[int, Sequence[int]] | None = None,
    title: str = "",
) -> Figure:
    """The traced trajectory graph: x = token, y = layer; edge width by number of trajectories,
    colour by best final rank (red = top), empty scaffolding edges gold. Right of each layer:
    the top-2 logit-lens tokens (green) and the newcomers arriving at the last token (red)."""
    n_tokens = len(tokens)
    # ~0.8 in per token and 0.5 in per layer: node labels at 7 pt fit inside their markers
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * n_tokens + 5), max(5, 0.5 * len(layers) + 3)))
    norm = Normalize(vmin=0, vmax=max(T, 1))
    widths = _edge_widths(graph)
    for u, v, d in sorted(graph.edges(data=True), key=lambda e: not e[2]["empty"]):
        colour = EMPTY_EDGE_COLOUR if d["empty"] else RANK_CMAP(norm(d["best_final_position"]))
        ax.plot([u[0], v[0]], [u[1], v[1]], color=colour, lw=widths[(u, v)], alpha=0.9, zorder=1)
    if graph.number_of_nodes():
        xs, ys = zip(*graph.nodes(), strict=True)
        ax.scatter(xs, ys, s=420, color="whitesmoke", edgecolor="grey", zorder=2)
        for t, layer in graph.nodes():
            ax.text(t, layer, f"T{t}\nL{layer}", fontsize=7, ha="center", va="center", zorder=3,
                    linespacing=0.95)  # fmt: skip
    ax.set_xticks(
        range(n_tokens), [_label(tok) for tok in tokens], rotation=60, ha="right", fontsize=9
    )
    ax.set_yticks(list(layers), [str(layer) for layer in layers], fontsize=9)
    ax.set_xlim(-0.7, n_tokens - 0.3)
    ax.set_ylim(min(layers) - 0.7, max(layers) + 0.7)
    ax.set_xlabel("source token")
    ax.set_ylabel("layer")
    ax.grid(alpha=0.2)
    for layer in layers:
        notes = []
        if lens_by_layer and layer in lens_by_layer:
            top = lens_by_layer[layer]["top_tokens"][:2]
            notes.append(("lens: " + ", ".join(_label(t, 8) for t in top), "green"))
        arrivals = (arrivals_by_layer or {}).get(layer, ())
        if arrivals:
            shown = ", ".join(str(i) for i in arrivals[:4]) + (" …" if len(arrivals) > 4 else "")
            notes.append((f"new: {shown}", "red"))
        for i, (text, colour) in enumerate(notes):
            ax.annotate(text, (1.01, layer), xycoords=("axes fraction", "data"), fontsize=7,
                        color=colour, va="center", xytext=(0, 5 - 10 * i), textcoords="offset points")  # fmt: skip
    mappable = ScalarMappable(norm=norm, cmap=RANK_CMAP)
    fig.colorbar(mappable, ax=ax, pad=0.16, fraction=0.03, label="best final rank of the newcomers")
    handles = [
        Line2D([], [], color="grey", lw=1, label="fewest trajectories"),
        Line2D([], [], color="grey", lw=4, label="most trajectories"),
        Line2D([], [], color=EMPTY_EDGE_COLOUR, lw=1, label="no newcomer (scaffold)"),
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=6)
    ax.set_title(title or f"SAE trajectory graph (final rank <= {T})", fontsize=9)
    fig.tight_layout()
    return fig


def trajectory_graph_html_figure(
    graph: nx.DiGraph,
    tokens: Sequence[str],
    layers: Sequence[int],
    T: int,
    node_hover: Mapping[tuple[int, int], str],
    title: str = "",
):
    """The same graph as an interactive plotly figure; hovering a node shows ``node_hover``
    (the newcomers arriving there, each with its description), hovering an edge its latents."""
    import plotly.graph_objects as go

    traces = []
    widths = _edge_widths(graph)
    for u, v, d in sorted(graph.edges(data=True), key=lambda e: not e[2]["empty"]):
        if d["empty"]:
            colour = EMPTY_EDGE_COLOUR
            text = f"T{u[0]} L{u[1]} → T{v[0]} L{v[1]}: no newcomer"
        else:
            r, g, b, _ = RANK_CMAP(min(d["best_final_position"] / max(T, 1), 1.0))
            colour = f"rgb({int(255 * r)},{int(255 * g)},{int(255 * b)})"
            latents = ", ".join(f"#{i} (rank {rank})" for rank, i in d["trajectories"])
            text = (f"T{u[0]} L{u[1]} → T{v[0]} L{v[1]}: {d['num_trajectories']} newcomer(s), "
                    f"best final rank {d['best_final_position']}<br>{latents}")  # fmt: skip
        traces.append(
            go.Scatter(
                x=[u[0], (u[0] + v[0]) / 2, v[0]],
                y=[u[1], (u[1] + v[1]) / 2, v[1]],
                mode="lines",
                line={"color": colour, "width": 1.5 * widths[(u, v)]},
                hoverinfo="text",
                text=[text] * 3,
                showlegend=False,
            )
        )
    nodes: list[tuple[int, int]] = sorted(graph.nodes())
    hover = []
    for t, layer in nodes:
        head = f"<b>T{t} {_short(tokens[t], 30)!s} · layer {layer}</b>"
        hover.append(head + "<br>" + node_hover.get((t, layer), "no newcomer arrives here"))
    traces.append(
        go.Scatter(
            x=[t for t, _ in nodes],
            y=[layer for _, layer in nodes],
            mode="markers",
            marker={"size": 11, "color": "lightgrey", "line": {"color": "grey", "width": 1}},
            hoverinfo="text",
            hovertext=hover,
            name="nodes",
            showlegend=False,
        )
    )
    fig = go.Figure(traces)
    fig.update_layout(
        title=title or f"SAE trajectory graph (final rank <= {T}); hover a node for its newcomers",
        xaxis={"tickmode": "array", "tickvals": list(range(len(tokens))),
               "ticktext": [_short(tok) for tok in tokens], "title": "source token"},
        yaxis={"tickmode": "array", "tickvals": list(layers), "title": "layer"},
        hoverlabel={"align": "left"}, plot_bgcolor="white",
        width=max(800, 45 * len(tokens) + 200), height=max(500, 34 * len(layers) + 200),
    )  # fmt: skip
    return fig


def write_html_atomic(fig, path: str | os.PathLike) -> Path:
    """Write a self-contained HTML (plotly.js inline, so it opens offline) atomically. Once
    plotly has drawn the graph, a hidden ``#trajectory-hover-data`` element receives the node
    hover texts as JSON."""
    post_script = (
        "var gd = document.getElementById('{plot_id}');"
        f"var out = document.createElement('pre'); out.id = {json.dumps(HOVER_DATA_ID)};"
        "out.hidden = true; out.textContent = JSON.stringify("
        "gd.data.filter(function (t) { return t.name === 'nodes'; })"
        ".map(function (t) { return t.hovertext; }));"
        "document.body.appendChild(out);"
    )
    return write_plotly_html(fig, path, post_script=post_script)


def _presence(steps: Sequence[Sequence[int]], latent: int) -> list[int | None]:
    return [step.index(latent) if latent in step else None for step in steps]


@uses_token_fonts
def evolution_figure(
    steps: Sequence[Sequence[int]],
    tokens: Sequence[str],
    layer: int,
    title: str = "",
    top: int | None = None,
) -> Figure:
    """Rank (y, inverted) of every latent that is ever active, against the step (x: initial
    resid_pre, then each source token's contribution added). Initial latents light blue (silver
    if they drop out), newcomers red-to-blue by final rank, green if they drop out; dashed lines
    bridge steps where a latent is absent. The original's ``layer_8_indices_evolution.png``
    (which showed a top 40). ``top`` keeps only the first ``top`` ranks of every step, so
    "initial", "newcomer" and "dropped out" refer to that top list."""
    if top is not None:
        steps = [list(step[:top]) for step in steps]
    n_steps = len(steps)
    if n_steps != len(tokens) + 1:
        raise ValueError(f"{n_steps} steps need {n_steps - 1} tokens, got {len(tokens)}")
    initial = list(steps[0])
    seen = set(initial)
    newcomers = []
    for step in steps[1:]:
        for latent in step:
            if latent not in seen:
                seen.add(latent)
                newcomers.append(latent)
    max_rank = max((len(step) for step in steps), default=1)
    fig, ax = plt.subplots(figsize=(max(9, 0.5 * n_steps + 3), max(5, 0.18 * max_rank + 2)))
    norm = Normalize(vmin=0, vmax=max(max_rank - 1, 1))

    def draw(latent: int, colour, lw: float, z: int) -> None:
        ranks = _presence(steps, latent)
        present = [(t, r) for t, r in enumerate(ranks) if r is not None]
        for (t0, r0), (t1, r1) in itertools.pairwise(present):
            style = "-" if t1 == t0 + 1 else "--"
            ax.plot(
                [t0, t1],
                [r0, r1],
                style,
                color=colour,
                lw=lw if style == "-" else 0.8 * lw,
                alpha=0.85,
                zorder=z,
            )
        ax.scatter([t for t, _ in present], [r for _, r in present], s=9, color=colour, zorder=z)

    final = list(steps[-1])
    for latent in initial:
        draw(latent, INITIAL_COLOUR if latent in final else INITIAL_DROPPED_COLOUR, 1.0, 1)
    for latent in newcomers:
        colour = (
            RANK_CMAP(norm(final.index(latent))) if latent in final else NEWCOMER_DROPPED_COLOUR
        )
        draw(latent, colour, 1.8, 2)
    labels = ["initial"] + [f"T{j} {_label(tok, 10)}" for j, tok in enumerate(tokens)]
    ax.set_xticks(range(n_steps), labels, rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.5, n_steps - 0.5)
    ax.set_ylim(max_rank - 0.5, -0.5)
    ax.set_yticks(range(max_rank))
    ax.tick_params(axis="y", labelsize=6)
    ax.set_ylabel("rank among firing latents (0 = largest)")
    ax.set_xlabel("step: attention contributions of source tokens 0..j added")
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(range(len(final)), [f"[{i}]" for i in final], fontsize=6)
    right.set_ylabel("latent at the last step")
    n_kept = sum(1 for latent in newcomers if latent in final)
    ax.text(0.01, 0.99, f"initial latents: {len(initial)}\nnewcomers: {len(newcomers)} "
            f"({n_kept} at the end)", transform=ax.transAxes, va="top", fontsize=7,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})  # fmt: skip
    handles = [
        Line2D([], [], color=INITIAL_COLOUR, label="initial"),
        Line2D([], [], color=INITIAL_DROPPED_COLOUR, label="initial, dropped out"),
        Line2D([], [], color=RANK_CMAP(0.0), lw=2, label="newcomer, final rank top"),
        Line2D([], [], color=RANK_CMAP(1.0), lw=2, label="newcomer, final rank low"),
        Line2D([], [], color=NEWCOMER_DROPPED_COLOUR, lw=2, label="newcomer, dropped out"),
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=6)
    ax.set_title(title or f"SAE latent ranks through attention, layer {layer}", fontsize=9)
    fig.tight_layout()
    return fig


def arrivals_at_last_token(graph: nx.DiGraph, last: int) -> dict[int, list[int]]:
    """Latents (best rank first) of the edges into (last, layer), per layer."""
    out: dict[int, list[tuple[int, int]]] = {}
    for _, (t, layer), d in graph.in_edges(data=True):
        if t == last and not d["empty"]:
            out.setdefault(layer, []).extend(d["trajectories"])
    return {layer: [i for _, i in sorted(pairs)] for layer, pairs in out.items()}


__all__ = [
    "arrivals_at_last_token",
    "evolution_figure",
    "trajectory_graph_figure",
    "trajectory_graph_html_figure",
    "write_html_atomic",
]


def draw_evolution(evolution: Mapping[str, Any], layer: int, top: int | None) -> Figure:
    """Registry entry of ``plots/trajectories/{prompt}/evolution_L{layer}.png``: latent ranks
    against the step at ``layer`` for the full prompt of an evolution JSON."""
    meta = evolution["metadata"]
    length = meta["max_prompt_length"]
    title = f"{meta['prompt_name']}: SAE latent ranks through attention, layer {layer}" + (
        f" (top {top})" if top else ""
    )
    try:
        steps = evolution["data"][str(length)][str(layer)]["indices"]
    except KeyError:
        raise KeyError(
            f"the evolution data has no layer {layer}; layers {meta['layers']}"
        ) from None
    return evolution_figure(steps, meta["tokens"], layer, title, top=top)


def graph_title(prompt_name: str, T: int) -> str:
    """Title of a prompt's trajectory graph (PNG and HTML)."""
    return f"{prompt_name}: SAE trajectory graph, final rank <= {T}"


def graph_from_json(data: Mapping[str, Any]) -> nx.DiGraph:
    """The traced graph of a graph JSON (:func:`saelab.trajectories.graph.graph_to_json`), its
    edges in the file's order, with the attributes the figures read."""
    graph = nx.DiGraph()
    for edge in data["edges"]:
        graph.add_edge(
            tuple(edge["from"]),
            tuple(edge["to"]),
            num_trajectories=edge["num_trajectories"],
            best_final_position=edge["best_final_position"],
            trajectories=[(t["final_position"], t["sae_index"]) for t in edge["trajectories"]],
            empty=edge["empty"],
            length=edge["length"],
        )
    return graph


def draw_graph(graph: Mapping[str, Any], evolution: Mapping[str, Any]) -> Figure:
    """Registry entry of ``plots/trajectories/{prompt}/graph_T{T}.png``: the traced graph of a
    graph JSON, with the full prompt's logit lens from its evolution JSON."""
    meta = graph["metadata"]
    T = int(meta["filter_T"])
    full = int(evolution["metadata"]["max_prompt_length"])
    lens = {int(layer): entry for layer, entry in evolution["logit_lens"][str(full)].items()}
    traced = graph_from_json(graph)
    return trajectory_graph_figure(
        traced, meta["tokens"], [int(layer) for layer in meta["layers"]], T, lens,
        arrivals_at_last_token(traced, full - 1), graph_title(meta["prompt_name"], T),
    )  # fmt: skip
