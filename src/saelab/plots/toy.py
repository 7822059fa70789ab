"""Figure of the toy-hierarchy absorption experiment (:mod:`saelab.toy`). Data in, Figure out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

_ARCH_COLOURS = {
    "topk": "tab:blue",
    "batchtopk": "tab:orange",
    "matryoshka": "tab:green",
    "relu": "tab:red",
    "jumprelu": "tab:purple",
}


def _colour(name: str) -> str:
    """Colour of a run label; ``matryoshka:official`` takes matryoshka's."""
    return _ARCH_COLOURS.get(name.split(":")[0], "tab:gray")


def _table(results: Any, key: str) -> pd.DataFrame | None:
    """``results.<key>`` or ``results[key]`` as a DataFrame (records or a frame), or None."""
    if isinstance(results, Mapping):
        data = results.get(key)
    else:
        data = getattr(results, key, None)
    if data is None:
        return None
    return data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))


def _spread_bars(ax, runs: pd.DataFrame, column: str, order: list[str]) -> None:
    """Mean bar per architecture, min-max whisker, one dot per seed."""
    grouped = runs.groupby("arch", sort=False)[column]
    # pandas annotates a groupby reduction as a scalar union; on one column it is a Series
    means = cast(pd.Series, grouped.mean()).reindex(order)
    lows = cast(pd.Series, grouped.min()).reindex(order)
    highs = cast(pd.Series, grouped.max()).reindex(order)
    x = np.arange(len(order))
    ax.bar(x, means, color=[_colour(a) for a in order], alpha=0.75, width=0.6)
    ax.errorbar(x, means, yerr=[means - lows, highs - means], fmt="none", ecolor="black",
                capsize=4, lw=1)  # fmt: skip
    for i, arch in enumerate(order):
        values = runs.loc[runs["arch"] == arch, column].to_numpy()
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(i + jitter, values, color="black", s=12, zorder=3)
        ax.annotate(f"{means[arch]:.2f}", (i, highs[arch]), xytext=(0, 4),
                    textcoords="offset points", ha="center", fontsize=8)  # fmt: skip
    ax.set_xticks(x, order, rotation=20, ha="right")
    ax.grid(axis="y", alpha=0.3)


def plot_toy_absorption(results: Any) -> Figure:
    """Absorption per architecture on the toy hierarchy.

    ``results`` has ``runs`` (one row per arch and seed: ``arch``, ``seed``,
    ``absorption_rate``, ``child_parent_cos``) and optionally ``pairs`` (one row per arch, seed,
    parent and child: ``parent``, ``child``, ``parent_recall``), as attributes (a
    :class:`saelab.toy.ToyComparison`) or mapping keys; tables may be DataFrames or records.

    Panels: the absorption rate (bars: mean over seeds; whiskers: min-max; dots: seeds); the
    cosine of the child latents' decoder rows with their parent's direction (1/sqrt 2 when each
    child latent is parent + child); and, if ``pairs`` is given, the parent latent's recall on
    every (parent, child) pair, averaged over seeds.
    """
    runs = _table(results, "runs")
    if runs is None or runs.empty:
        raise ValueError("results need a non-empty 'runs' table")
    pairs = _table(results, "pairs")
    order = list(dict.fromkeys(runs["arch"]))
    n_seeds = cast(pd.Series, runs.groupby("arch")["seed"].nunique())
    has_pairs = pairs is not None and not pairs.empty
    ratios = [1, 1, 1.6] if has_pairs else [1, 1]
    fig = plt.figure(figsize=(13 if has_pairs else 9, 4.6), constrained_layout=True)
    grid = fig.add_gridspec(1, len(ratios), width_ratios=ratios)

    ax = fig.add_subplot(grid[0, 0])
    _spread_bars(ax, runs, "absorption_rate", order)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("absorption rate\n(parent latent silent | parent and child active)")
    ax.set_title("Absorption rate")

    ax = fig.add_subplot(grid[0, 1])
    _spread_bars(ax, runs, "child_parent_cos", order)
    ax.axhline(1 / math.sqrt(2), color="gray", ls="--", lw=0.8)
    ax.text(len(order) - 0.5, 1 / math.sqrt(2), "parent + child", ha="right", va="bottom",
            fontsize=7, color="gray")  # fmt: skip
    ax.set_ylim(min(0.0, float(cast(float, runs["child_parent_cos"].min())) - 0.05), 1.0)
    ax.set_ylabel("cos(child latent decoder, parent direction)")
    ax.set_title("Parent direction in child latents")

    if has_pairs and pairs is not None:
        ax = fig.add_subplot(grid[0, 2])
        by_pair = pairs.groupby(["arch", "parent", "child"], sort=False)["parent_recall"]
        recall = cast(pd.Series, by_pair.mean())
        table = recall.unstack(["parent", "child"]).reindex(order).sort_index(axis=1)
        image = ax.imshow(table.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis",
                          aspect="auto")  # fmt: skip
        ax.set_yticks(range(len(order)), order)
        labels = [f"p{p}c{c}" for p, c in table.columns]
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_xlabel("(parent, child) pair")
        ax.set_title("Parent-latent recall per child (mean over seeds)")
        fig.colorbar(image, ax=ax, shrink=0.8, label="recall")

    if n_seeds.nunique() == 1:
        seeds = f"{int(n_seeds.iloc[0])} seeds per architecture"
    else:
        seeds = "seeds: " + ", ".join(f"{a} {n_seeds[a]}" for a in order)
    fig.suptitle(f"Feature absorption on the toy hierarchy ({seeds})")
    return fig
