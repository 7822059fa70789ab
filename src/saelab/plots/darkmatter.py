"""Figures of the dark-matter analysis (one function per figure; data in, Figure out); the
per-token figures are in :mod:`saelab.plots.darkmatter_tokens`."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from saelab.plots.common import readable_log_axis, ticks_at_values

#: Fig 7's labels of the norms (the original's, with its wrong one corrected).
NORM_LABELS = {
    "x": "x",
    "sae": "SAE(x)",
    "sae_plus_nonlinear": "SAE(x) + NonlinearError(x)",
    "sae_error": "SaeError(x)",
    "linear_error": "LinearError(x)",
    "nonlinear_error": "NonlinearError(x)",
}

AREA_COLOURS = {
    "absent": "#9ecae1",
    "linear": "#a1d99b",
    "encoder": "#fdae6b",
    "nonlinear": "#fc9272",
}


def _fit_label(fit) -> str:
    return f"FVU ≈ {fit['c']:.3f} + {fit['a']:.3g}·W^(−{fit['m']:.2f})"


def _draw_breakdown(ax, series, widths, fvus, nonlinear_fvus, fit, k, labels=True) -> None:
    """The areas, level lines, fit and points of Fig 1 on ``ax`` (main plot or its inset)."""

    def label(text):
        return text if labels else None

    grid, fitted, pursuit = series["grid"], series["fitted"], series.get("pursuit")
    asymptote, level = float(series["asymptote"]), float(series["linear_level"])
    floor = pursuit if pursuit is not None else np.full_like(grid, level)
    ax.fill_between(grid, 0, floor, color=AREA_COLOURS["nonlinear"], label=label("Nonlinear error"))
    if pursuit is not None:
        ax.fill_between(grid, floor, level, color=AREA_COLOURS["encoder"],
                        label=label("Encoder error"))  # fmt: skip
    ax.fill_between(grid, level, asymptote, color=AREA_COLOURS["linear"],
                    label=label("Linear error"))  # fmt: skip
    ax.fill_between(grid, asymptote, fitted, color=AREA_COLOURS["absent"],
                    label=label("Absent features"))  # fmt: skip
    # Level lines keep the picture readable when an area is negative (small SAEs can fit an
    # asymptote below the nonlinear FVU, or pursuit can end above the encoder's level).
    ax.axhline(asymptote, color="k", ls=":", lw=0.8)
    ax.axhline(level, color="darkgreen", ls="--", lw=0.8,
               label=label("mean FVU after adding x·W"))  # fmt: skip
    ax.scatter(widths, nonlinear_fvus, color="darkgreen", marker="s", s=14, zorder=3)
    if pursuit is not None:
        ax.plot(grid, pursuit, color="darkorange", lw=1, label=label("gradient pursuit"))
    inside = grid <= widths.max()
    ax.plot(grid[inside], fitted[inside], "k-", lw=1, label=label(_fit_label(fit)))
    ax.plot(grid[~inside], fitted[~inside], "k:", lw=1)
    ax.scatter(widths, fvus, color="k", zorder=3, s=18, label=label(f"SAEs (k = {k})"))
    ax.set_xscale("log")


def breakdown_zoom(widths: np.ndarray, series) -> tuple[tuple, tuple]:
    """((x0, x1), (y0, y1)) of Fig 1's inset: the paper zooms on its widest SAEs and the
    extrapolation (x 2·10⁵–10⁷ for widths 16k–1M), where the encoder-error sliver between the
    linear level and the pursuit curve is too thin to see. Here: from the second-widest SAE to
    the end of the extrapolated grid, y around the levels that meet there."""
    grid, pursuit = series["grid"], series.get("pursuit")
    x0 = float(np.sort(widths)[-2]) if len(widths) > 1 else float(widths[0])
    x1 = float(grid.max())
    zone = grid >= x0
    levels = [float(series["asymptote"]), float(series["linear_level"]),
              *np.ravel(series["fitted"][zone])]  # fmt: skip
    if pursuit is not None:
        levels += list(np.ravel(pursuit[zone]))
    lo, hi = float(np.min(levels)), float(np.max(levels))
    pad = 0.15 * max(hi - lo, 1e-3 * max(abs(hi), 1e-12))
    return (x0, x1), (max(lo - pad, 0.0), hi + pad)


def plot_scaling_breakdown(summary: dict[str, Any], series: dict[str, np.ndarray]) -> Figure:
    """Fig 1: FVU against width at fixed k with the four dark-matter areas (``series`` from
    :func:`saelab.darkmatter.scaling.scaling_series`), and the paper's zoomed inset on the widest
    SAEs and the extrapolation (:func:`breakdown_zoom`)."""
    fit = summary["power_law"]
    widths = np.asarray(summary["curve_widths"], dtype=float)
    fvus = np.asarray(summary["curve_fvu"])
    grid = series["grid"]
    nonlinear_fvus = summary["curve_nonlinear_fvu"]
    encoder = series.get("encoder_error")
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    _draw_breakdown(ax, series, widths, fvus, nonlinear_fvus, fit, summary["curve_k"])
    negative = [name for name, value in [
        ("linear error", float(series["linear_error"])),
        ("encoder error", None if encoder is None else encoder[-1]),
    ] if value is not None and value < 0]  # fmt: skip
    if negative:
        ax.text(0.02, 0.02, "negative here: " + ", ".join(negative), transform=ax.transAxes,
                fontsize=7, color="firebrick")  # fmt: skip
    ax.set_xlim(grid.min(), grid.max())
    readable_log_axis(ax, "x")
    ax.set_xlabel("SAE width (latents)")
    ax.set_ylabel("FVU")
    # headroom above the curve for the inset
    ax.set_ylim(0, max(fvus.max(), series["fitted"].max()) * 1.55)
    pursuit = summary.get("curve_pursuit_fvu")
    ax.set_title("Dark matter of SAEs: breakdown of FVU" + ("" if pursuit else " (no pursuit)"))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    (x0, x1), (y0, y1) = breakdown_zoom(widths, series)
    inset = ax.inset_axes((0.5, 0.55, 0.47, 0.36))  # room for its title below the frame
    _draw_breakdown(inset, series, widths, fvus, nonlinear_fvus, fit, summary["curve_k"],
                    labels=False)  # fmt: skip
    inset.set_xlim(x0, x1)
    inset.set_ylim(y0, y1)
    readable_log_axis(inset, "x", max_ticks=4)
    inset.tick_params(labelsize=6)
    inset.set_title("zoom: widest SAEs and extrapolation", fontsize=6.5)
    ax.indicate_inset_zoom(inset, edgecolor="0.3")
    fig.tight_layout()
    return fig


def plot_power_law_fit(summary: dict[str, Any], series: dict[str, np.ndarray]) -> Figure:
    """Fig 2: FVU and FVU after adding the linear error prediction against width, log-log."""
    fit = summary["power_law"]
    widths = np.asarray(summary["curve_widths"], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(widths, summary["curve_fvu"], color="C0", zorder=3, label="SAE FVU")
    ax.plot(series["grid"], series["fitted"], "C0-", lw=1, label=_fit_label(fit))
    ax.axhline(fit["c"], color="C0", ls=":", lw=1, label=f"asymptote c = {fit['c']:.3f}")
    ax.scatter(widths, summary["curve_nonlinear_fvu"], color="C3", marker="s", zorder=3,
               label="FVU after adding x·W (nonlinear FVU)")  # fmt: skip
    ax.axhline(np.mean(summary["curve_nonlinear_fvu"]), color="C3", ls="--", lw=1,
               label="mean nonlinear FVU")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    readable_log_axis(ax, "x")
    readable_log_axis(ax, "y")
    ax.set_xlabel("SAE width (latents)")
    ax.set_ylabel("FVU")
    ci = [math.nan if v is None else float(v) for v in fit["m_ci"]]
    ci_text = (
        f"m 95% CI [{ci[0]:.2f}, {ci[1]:.2f}]"
        if np.all(np.isfinite(ci))
        else "no CI: as many parameters as widths"
    )
    ax.set_title(f"Power-law fit ({ci_text})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _contour(ax, rows: list[dict], series, key: str, title: str):
    if f"contour_{key}_values" not in series:
        raise ValueError(f"a contour needs at least 3 (width, L0) points; got {len(rows)}")
    widths = [r["width"] for r in rows]
    l0s = [max(r["l0_mean"], 1e-3) for r in rows]
    grid_w, grid_l0, values = (series[f"contour_{key}_{f}"] for f in ("widths", "l0s", "values"))
    filled = ax.contourf(grid_w, grid_l0, values, levels=15, cmap="viridis")
    ax.scatter(widths, l0s, c="w", edgecolors="k", s=14)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks_at_values(ax, "x", widths)
    readable_log_axis(ax, "y", max_ticks=5)
    ax.set_xlabel("SAE width")
    ax.set_ylabel("L0")
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(filled, ax=ax)


def plot_error_r2_contours(summary: dict[str, Any], series: dict[str, np.ndarray]) -> Figure:
    """Fig 3: held-out R² of the error norm and of the error vector from x over (width, L0)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    _contour(axes[0], summary["saes"], series, "r2_norm", "R² of ‖x − x̂‖² from x")
    _contour(axes[1], summary["saes"], series, "r2_vector", "R² of x − x̂ from x (mean over dims)")
    fig.tight_layout()
    return fig


def plot_nonlinear_fvu_contour(summary: dict[str, Any], series: dict[str, np.ndarray]) -> Figure:
    """Fig 11: FVU after adding the linear error prediction (nonlinear FVU) over (width, L0)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    _contour(ax, summary["saes"], series, "nonlinear_error_fvu", "Nonlinear SAE FVU")
    fig.tight_layout()
    return fig


def plot_norm_violin(norms: dict[str, Any]) -> Figure:
    """Fig 7: held-out R² of predicting each squared norm from x, over the sweep's SAEs."""
    results = norms["r2"]
    targets = list(next(iter(results.values())))  # the analysis's order (NORM_TARGETS)
    values = [[results[name][target] for name in results] for target in targets]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.violinplot(values, showmeans=True)
    for i, vals in enumerate(values, start=1):
        ax.scatter(np.full(len(vals), i), vals, s=8, color="k", zorder=3)
    ax.set_xticks(range(1, len(targets) + 1), [NORM_LABELS[t] for t in targets],
                  rotation=20, fontsize=7)  # fmt: skip
    ax.set_ylabel("held-out R² of ‖·‖² from x")
    ax.set_title(f"Norm prediction over {len(results)} SAEs", fontsize=9)
    fig.tight_layout()
    return fig


BASELINE_LABELS = {
    "x_affine": "[x, 1] (linear probe)",
    "token_id": "token id (mean per id)",
    "model_loss": "[model loss, 1]",
    "l0": "[L0, 1]",
    "x_norm": "[‖x‖, 1]",
}


def plot_baselines(baselines: dict[str, Any]) -> Figure:
    """Fig 13: R² of the squared error norm from x against simple baselines, per layer/SAE.
    The token-id baseline's legend says whether it was scored in-sample (the original) or on
    held-out tokens (``baselines["token_id_in_sample"]``; files without it were in-sample)."""
    saes = baselines["saes"]
    in_sample = baselines.get("token_id_in_sample", True)
    labels = {
        **BASELINE_LABELS,
        "token_id": "token id (mean per id, IN-SAMPLE)"
        if in_sample
        else "token id (mean per id, held out)",
    }
    by_layer = all(s.get("layer") is not None for s in saes)
    xs = [s["layer"] for s in saes] if by_layer else list(range(len(saes)))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, label in labels.items():
        ys = [s["r2"].get(key, np.nan) for s in saes]
        if np.all(np.isnan(ys)):
            continue
        ax.plot(xs, ys, marker="o", ms=3, lw=1, label=label)
    if by_layer:
        ax.set_xlabel("layer")
    else:
        ax.set_xticks(xs, [s["name"] for s in saes], rotation=45, fontsize=6)
    ax.set_ylabel("R² of ‖x − x̂‖²")
    ax.set_title("Predicting the SAE error norm: linear probe vs baselines", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_probe(probe) -> Figure:
    """Fig 14: W_dec[i]·a* against each latent's mean activation when active (sorted), for the
    latents the probe's ``running_mean`` covers (rule darkmatter_probe: the first probe_limit)."""
    smooth = np.asarray(probe["running_mean"])
    window = int(probe["running_window"])
    dots = np.asarray(probe["probe_dot"])[: len(smooth)]
    acts = np.asarray(probe["mean_active"])[: len(smooth)]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = np.arange(len(dots))
    ax.plot(xs, dots, lw=0.4, alpha=0.4, color="C0", label="(a*)ᵀ · decoder row")
    ax.plot(xs, smooth, lw=1.5, color="C1", label=f"running mean ({window})")
    if len(dots):
        lo, hi = np.percentile(dots, [1, 99])
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    ax.set_ylabel("(a*)ᵀ · decoder row")
    # The mean activation gets its own axis: the probe's scale is arbitrary.
    twin = ax.twinx()
    twin.plot(xs, acts, lw=1.5, color="C2", label="mean activation when active")
    twin.set_ylabel("mean activation when active", color="C2")
    ax.set_xlabel("latent, sorted by mean active value")
    ax.set_title(
        f"{probe['sae']}: probe R² {float(probe['probe_r2']):.3f}, "
        f"corr {float(probe['correlation']):.2f}",
        fontsize=9,
    )
    lines = ax.get_legend_handles_labels()
    twin_lines = twin.get_legend_handles_labels()
    ax.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], fontsize=7)
    fig.tight_layout()
    return fig


def plot_noise(noise: dict[str, Any]) -> Figure:
    """Fig 15: FVU of the reconstruction and of reconstruction + linear prediction against the
    ablated percent per noise setting, and the grid's estimated linear / nonlinear error."""
    points = noise["points"]
    cfg = noise["config"]
    settings = [tuple(s) for s in cfg["line_settings"]]
    grid = list(cfg["grid"])
    fig, axes = plt.subplots(2, max(len(settings), 2), figsize=(4 * max(len(settings), 2), 6.4))
    for ax, (act, rec) in zip(axes[0], settings, strict=False):
        chosen = sorted(
            (p for p in points if p["sigma_act"] == act and p["sigma_rec"] == rec),
            key=lambda p: -p["ablate_percent"],
        )
        seen, rows = set(), []
        for p in chosen:
            if p["ablate_percent"] not in seen:
                seen.add(p["ablate_percent"])
                rows.append(p)
        xs = [f"{p['ablate_percent']:.0f}%" for p in rows]
        ax.plot(xs, [p["fvu_recon"] for p in rows], "-", label="SAE reconstruction")
        ax.plot(xs, [p["fvu_recon_plus_linear"] for p in rows], "--",
                label="reconstruction + error prediction")  # fmt: skip
        ax.set_title(f"σ_rec = {rec}, σ_act = {act}", fontsize=9)
        ax.set_xlabel("% latents ablated")
        ax.set_ylabel("FVU (1 − R²)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6)
    for ax in axes[0][len(settings) :]:
        ax.axis("off")
    cells = {(p["sigma_act"], p["sigma_rec"]): p for p in points if p["ablate_percent"] == 0}
    for ax, key, title in [
        (axes[1][0], "nonlinear_estimate", "Est. nonlinear error (FVU)"),
        (axes[1][1], "linear_estimate", "Est. linear error (FVU difference)"),
    ]:
        matrix = np.array([[cells[(a, r)][key] for r in grid] for a in grid])
        image = ax.imshow(matrix, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(grid)), grid, fontsize=7)
        ax.set_yticks(range(len(grid)), grid, fontsize=7)
        ax.set_xlabel("reconstruction noise σ_rec")
        ax.set_ylabel("activation noise σ_act")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax)
    for ax in axes[1][2:]:
        ax.axis("off")
    fig.suptitle(f"Synthetic noise simulation on {noise['sae']} (σ in {cfg['units']} units)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig
