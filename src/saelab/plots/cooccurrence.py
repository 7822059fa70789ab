"""Figures of the co-occurrence analysis; each function takes data and returns a Figure."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from saelab.plots.common import displayable, plt, uses_token_fonts


def subgraph_size_histogram(
    sizes_by_sae: dict[str, np.ndarray], bounds: tuple[int, int], tau: float
) -> Figure:
    """Density histogram (30 bins, log y) of each latent's subgraph size, with the target bounds
    dashed (the original's ``histograms/{sae}_subgraph_density_{thr}.png``, one panel per SAE)."""
    n = len(sizes_by_sae)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.5), squeeze=False, sharey=True)
    for ax, (name, sizes) in zip(axes[0], sizes_by_sae.items(), strict=True):
        ax.hist(sizes, bins=30, density=True, color="#3b75af")
        ax.set_yscale("log")
        for bound in bounds:
            ax.axvline(bound, color="#c03000", linestyle="--", linewidth=1)
        ax.set_title(f"{name} (τ = {tau:g})")
        ax.set_xlabel("subgraph size of a latent")
    axes[0][0].set_ylabel("density")
    fig.tight_layout()
    return fig


def group_box_plots(box_by_sae: dict[str, list[np.ndarray]], tau: float) -> Figure:
    """Per (pretend) Matryoshka group: subgraph size of latents in non-singleton, non-giant
    subgraphs."""
    n = len(box_by_sae)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.5), squeeze=False, sharey=True)
    for ax, (name, boxes) in zip(axes[0], box_by_sae.items(), strict=True):
        data = [b if len(b) else np.array([np.nan]) for b in boxes]
        ax.boxplot(data, tick_labels=[str(g) for g in range(len(boxes))])
        ax.set_title(f"{name} (τ = {tau:g})")
        ax.set_xlabel("group")
    axes[0][0].set_ylabel("subgraph size")
    fig.tight_layout()
    return fig


def group_subgraph_counts(
    counts_by_sae: dict[str, np.ndarray], per_latent_by_sae: dict[str, np.ndarray], tau: float
) -> Figure:
    """Non-singleton, non-giant subgraphs touching each group: raw and per latent of the group."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = list(counts_by_sae)
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        groups = np.arange(len(counts_by_sae[name]))
        axes[0].bar(groups + j * width, counts_by_sae[name], width, label=name)
        axes[1].bar(groups + j * width, per_latent_by_sae[name], width, label=name)
    for ax, label in zip(axes, ["subgraphs", "subgraphs per latent"], strict=True):
        ax.set_xlabel("group")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"Non-singleton subgraphs per group (τ = {tau:g})")
    fig.tight_layout()
    return fig


def cooccurrence_by_index(
    mean_by_sae: dict[str, np.ndarray], group_sizes: list[int], tau: float, n_bins: int = 64
) -> Figure:
    """Mean normalised co-occurrence of each latent with all others, against its index (dots),
    with means over ``n_bins`` equal index bins (lines); group boundaries dotted."""
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["#3b75af", "#e66a1f", "#519e3e", "#8d69b8"]
    for j, (name, means) in enumerate(mean_by_sae.items()):
        color = colors[j % len(colors)]
        index = np.arange(len(means))
        ax.scatter(index, means, s=2, alpha=0.25, color=color)
        bins = np.array_split(index, min(n_bins, len(index)))
        ax.plot([b.mean() for b in bins], [means[b].mean() for b in bins], color=color, label=name)
    for boundary in np.cumsum(group_sizes)[:-1]:
        ax.axvline(boundary, color="#555", linestyle=":", linewidth=1)
    ax.set_yscale("log", nonpositive="mask")  # latents that never co-occur are left out
    ax.set_xlabel("latent index")
    ax.set_ylabel("mean co-occurrence with other latents")
    ax.set_title(f"Co-occurrence by latent index (τ = {tau:g}); dotted: Matryoshka groups")
    ax.legend()
    fig.tight_layout()
    return fig


# The summary figures (registry rows subgraph_sizes, group_subgraph_sizes, group_subgraph_counts,
# cooccurrence_by_index): the summary JSON (``cooccurrence_summary``), each SAE's node_info table
# (in the summary's SAE order), the mean co-occurrence table and the plot options (threshold,
# component_size, group_sizes), all as scripts/plot.py loads them.


def draw_subgraph_sizes(summary, node_info, threshold, component_size, **_) -> Figure:
    tables = zip(summary["saes"], node_info, strict=True)
    sizes = {n: table["subgraph_size"].to_numpy() for n, table in tables}
    return subgraph_size_histogram(sizes, tuple(component_size), threshold)


def draw_group_subgraph_sizes(summary, threshold, **_) -> Figure:
    boxes = {n: [np.asarray(b) for b in s["box_sizes"]] for n, s in summary["saes"].items()}
    return group_box_plots(boxes, threshold)


def draw_group_subgraph_counts(summary, threshold, **_) -> Figure:
    per_group = {n: s["per_group"] for n, s in summary["saes"].items()}
    return group_subgraph_counts(
        {n: np.asarray(g["n_subgraphs"]) for n, g in per_group.items()},
        {n: np.asarray(g["subgraphs_per_latent"]) for n, g in per_group.items()},
        threshold,
    )


def draw_cooccurrence_by_index(summary, by_index, group_sizes, threshold, **_) -> Figure:
    means = {n: by_index[n].to_numpy() for n in summary["saes"]}
    return cooccurrence_by_index(means, group_sizes, threshold)


def _token_labels(token_strings: list[str], top: int = 10) -> list[str]:
    """Each token's string, or "other" outside the ``top`` most frequent."""
    common = {t for t, _ in Counter(token_strings).most_common(top)}
    return [repr(t) if t in common else "other" for t in token_strings]


_PAIRS = [(0, 1), (0, 2), (1, 2)]


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def category_styles(n: int) -> list[tuple[tuple, str]]:
    """(colour, marker) for ``n`` categories, every pair distinct: tab10 up to 10, tab20 up to
    20, beyond that tab20's colours again with the next marker shape (160 styles in all)."""
    if n > 20 * len(_MARKERS):
        raise ValueError(f"{n} categories: at most {20 * len(_MARKERS)} distinct styles")
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    size = cmap.N
    return [(cmap(i % size), _MARKERS[i // size]) for i in range(n)]


@uses_token_fonts
def pca_panels(
    coords: np.ndarray, token_strings: list[str], active_latent: np.ndarray, title: str
) -> Figure:
    """Rows: coloured by token (top 10, rest "other", grey) and by the most active latent of S;
    columns: PC1–2, PC1–3, PC2–3. Every category has its own colour and marker pair."""
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.5))
    dims = coords.shape[1]
    labelings = [("token", _token_labels(token_strings)), ("active latent", list(active_latent))]
    for r, (kind, labels) in enumerate(labelings):
        categories = sorted(set(labels), key=lambda v: (str(v) == "other", str(v)))
        named = [c for c in categories if str(c) != "other"]
        styles = dict(zip(named, category_styles(len(named)), strict=True))
        styles["other"] = ((0.6, 0.6, 0.6, 1.0), ".")
        for c, (a, b) in enumerate(_PAIRS):
            ax = axes[r][c]
            if max(a, b) >= dims:
                ax.set_axis_off()
                continue
            for category in categories:
                colour, marker = styles[category]
                mask = np.array([label == category for label in labels])
                ax.scatter(coords[mask, a], coords[mask, b], s=10, alpha=0.7, color=colour,
                           marker=marker, label=displayable(str(category)))  # fmt: skip
            ax.set_xlabel(f"PC{a + 1}")
            ax.set_ylabel(f"PC{b + 1}")
            ax.set_title(f"by {kind}: PC{a + 1} vs PC{b + 1}")
        axes[r][-1].legend(
            fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=1 + len(categories) // 25
        )
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pca_plotly(coords: np.ndarray, token_strings: list[str], active_latent: np.ndarray, title: str):
    """The same six panels as an interactive plotly figure (hover shows token and latent)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = [
        f"by {kind}: PC{a + 1} vs PC{b + 1}" for kind in ("token", "latent") for a, b in _PAIRS
    ]
    fig = make_subplots(rows=2, cols=3, subplot_titles=titles)
    hover = [f"{t!r} · latent {lat}" for t, lat in zip(token_strings, active_latent, strict=True)]
    dims = coords.shape[1]
    labelings = [_token_labels(token_strings), [f"latent {v}" for v in active_latent]]
    for r, labels in enumerate(labelings):
        categories = sorted(set(labels), key=lambda v: (v == "other", v))
        for c, (a, b) in enumerate(_PAIRS):
            if max(a, b) >= dims:
                continue
            for category in categories:
                idx = [i for i, label in enumerate(labels) if label == category]
                fig.add_trace(
                    go.Scattergl(
                        x=coords[idx, a], y=coords[idx, b], mode="markers", name=category,
                        legendgroup=f"{r}-{category}", showlegend=c == 0,
                        text=[hover[i] for i in idx], hoverinfo="text", marker={"size": 5},
                    ),
                    row=r + 1, col=c + 1,
                )  # fmt: skip
            fig.update_xaxes(title_text=f"PC{a + 1}", row=r + 1, col=c + 1)
            fig.update_yaxes(title_text=f"PC{b + 1}", row=r + 1, col=c + 1)
    fig.update_layout(title=title, height=850, width=1350)
    return fig


def _pca_args(series: dict, sae: str, threshold: float) -> tuple:
    """(coords, token strings, active latent, title) of one subgraph's PCA series
    (:func:`saelab.cooccurrence.pca.pca_series`)."""
    raw = np.asarray(series["token_strings_json"], dtype=np.uint8).tobytes()
    strings = json.loads(raw.decode("utf-8"))
    ratio = ", ".join(f"{r:.2f}" for r in series["explained_variance_ratio"])
    title = (f"{sae} subgraph {int(series['subgraph'])} (tau {threshold}): {len(strings)} tokens, "
             f"explained variance {ratio}")  # fmt: skip
    return series["coords"], strings, series["active_latent"], title


def draw_pca_subgraph(series: dict, sae: str, threshold: float) -> Figure:
    """Registry entry of ``pca_subgraph_tau{tau}.png``: :func:`pca_panels` of the series."""
    return pca_panels(*_pca_args(series, sae, threshold))


def draw_pca_subgraph_html(series: dict, sae: str, threshold: float):
    """Registry entry of ``pca_subgraph_tau{tau}.html``: :func:`pca_plotly` of the series."""
    return pca_plotly(*_pca_args(series, sae, threshold))


def draw_pca_all(folder: str, sae: str, threshold: float) -> Iterator[tuple[str, object]]:
    """Registry entry of the folder ``pca_all_tau{tau}``: for each ``pca_subgraph_<id>.npz`` of
    ``folder`` (by id), its PNG and its HTML page, one at a time."""
    paths = sorted(Path(folder).glob("pca_subgraph_*.npz"),
                   key=lambda p: int(p.stem.rsplit("_", 1)[1]))  # fmt: skip
    for path in paths:
        with np.load(path) as data:
            args = _pca_args(dict(data), sae, threshold)
        yield f"{path.stem}.png", pca_panels(*args)
        yield f"{path.stem}.html", pca_plotly(*args)
