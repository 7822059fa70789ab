"""Shared figure helpers."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> None:
    """Save atomically: a killed job leaves no half-written image that looks complete."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, target)


def draw_named(figures: Mapping[str, Callable[..., Figure]], name: str, *args) -> Figure:
    """``figures[name](*args)``: a figure from a module's table of figures by the name a rule
    passes; an unknown name fails with the names the table has."""
    if name not in figures:
        raise ValueError(f"unknown figure {name!r}; the figures here are {sorted(figures)}")
    return figures[name](*args)


def write_plotly_html(
    fig,
    path: str | os.PathLike,
    include_plotlyjs: bool | str = True,
    post_script: str | None = None,
) -> Path:
    """A plotly figure as a full HTML page, atomically. ``include_plotlyjs=True`` inlines
    plotly.js (the page opens offline on its own); ``"directory"`` writes one ``plotly.min.js``
    beside the pages and links it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    fig.write_html(tmp, include_plotlyjs=include_plotlyjs, full_html=True, post_script=post_script)
    os.replace(tmp, target)
    return target


def interval_yerr(rows, key: str, metric: str):
    """Asymmetric error bars [2, n] (``yerr`` of bar/errorbar) from each row's
    ``intervals[metric]`` ([low, high] around ``row[key]``), or None if any row lacks one."""
    spans = [(row.get("intervals") or {}).get(metric) for row in rows]
    if any(span is None for span in spans):
        return None
    return [[row[key] - lo for row, (lo, _) in zip(rows, spans, strict=True)],
            [hi - row[key] for row, (_, hi) in zip(rows, spans, strict=True)]]  # fmt: skip
