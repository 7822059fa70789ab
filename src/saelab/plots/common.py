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
