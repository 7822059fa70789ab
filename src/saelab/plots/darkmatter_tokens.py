"""Per-token figures of the dark-matter analysis (Figs 4, 5, 6, 12) from per_token.npz."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def _trace_slice(data, start: int, length: int) -> slice:
    n = data["total"].shape[1]
    start = min(start, max(n - 2, 0))
    return slice(start, min(start + length, n))


def trace_zoom(span: slice, first: int = 85, last: int = 95) -> slice:
    """Tokens of Fig 4's inset: the paper magnifies positions 85–95 of its 100-token trace; the
    same positions of this trace, moved inside it when the trace is shorter."""
    n = span.stop - span.start
    width = min(last - first, max(n - 1, 1))
    lo = min(first, max(n - 1 - width, 0))
    return slice(span.start + lo, span.start + lo + width + 1)


def plot_token_trace(data, start: int = 0, length: int = 100) -> Figure:
    """Fig 4: the error norm of every width on a span of consecutive window tokens, with the
    paper's magnified inset (:func:`trace_zoom`)."""
    span = _trace_slice(data, start, length)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(data["widths"])))
    zoom = trace_zoom(span)
    inset = ax.inset_axes((0.60, 0.56, 0.38, 0.40)) if zoom.stop - zoom.start >= 2 else None
    for row, (width, colour) in enumerate(zip(data["widths"], colours, strict=True)):
        ax.plot(np.arange(span.start, span.stop), data["total"][row, span], color=colour, lw=1,
                label=f"width {width}")  # fmt: skip
        if inset is not None:
            inset.plot(np.arange(zoom.start, zoom.stop), data["total"][row, zoom], color=colour,
                       lw=1.2, marker=".", ms=3)  # fmt: skip
    if inset is not None:
        bottom, top = ax.get_ylim()  # headroom: the inset sits above the traces
        ax.set_ylim(bottom, top + 0.8 * (top - bottom))
        values = np.asarray(data["total"])[:, zoom]
        lo, hi = float(values.min()), float(values.max())
        pad = 0.08 * max(hi - lo, 1e-6)
        inset.set_xlim(zoom.start - 0.3, zoom.stop - 0.7)
        inset.set_ylim(lo - pad, hi + pad)
        inset.tick_params(labelsize=6)
        inset.set_title(f"tokens {zoom.start}–{zoom.stop - 1}", fontsize=6.5)
        ax.indicate_inset_zoom(inset, edgecolor="0.3")
    ax.set_xlabel("window token")
    ax.set_ylabel("‖x − x̂‖")
    ax.set_title("Per-token SAE error norms across widths", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig


def _heatmap(ax, matrix: np.ndarray, widths, title: str, fmt: str, cmap="viridis"):
    masked = np.ma.masked_invalid(matrix)
    image = ax.imshow(masked, cmap=cmap)
    for i in range(len(widths)):
        for j in range(len(widths)):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="w")  # fmt: skip
    labels = [str(w) for w in widths]
    ax.set_xticks(range(len(widths)), labels, fontsize=7, rotation=45)
    ax.set_yticks(range(len(widths)), labels, fontsize=7)
    ax.set_xlabel("predicted width")
    ax.set_ylabel("predictor width")
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(image, ax=ax)


def plot_cross_width(data) -> Figure:
    """Fig 5: held-out R² of ‖e_j‖ from [‖e_i‖, 1] (narrower row predicts wider column)."""
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    _heatmap(ax, data["r2_basic"], data["widths"], "R² of error norms across widths", ".2f")
    fig.tight_layout()
    return fig


def plot_nonlinear_extra(data) -> Figure:
    """Fig 12: % of the remaining variance explained by adding ‖nonlinear_i‖ as a predictor."""
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    _heatmap(ax, data["extra_percent"], data["widths"],
             "% remaining variance explained\nby adding the nonlinear error norm", ".1f", "magma")  # fmt: skip
    fig.tight_layout()
    return fig


def plot_linear_nonlinear_trace(data, start: int = 0, length: int = 100) -> Figure:
    """Fig 6: linear-error and nonlinear-error norms of every width on the token span."""
    span = _trace_slice(data, start, length)
    fig, axes = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(data["widths"])))
    xs = np.arange(span.start, span.stop)
    for row, (width, colour) in enumerate(zip(data["widths"], colours, strict=True)):
        axes[0].plot(xs, data["linear"][row, span], color=colour, lw=1, label=f"width {width}")
        axes[1].plot(xs, data["nonlinear"][row, span], color=colour, lw=1)
    axes[0].set_ylabel("‖x·W‖ (linear)")
    axes[1].set_ylabel("‖e − x·W‖ (nonlinear)")
    axes[1].set_xlabel("window token")
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title("Linear and nonlinear error norms per token", fontsize=9)
    fig.tight_layout()
    return fig
