"""Figures of the dark-matter interventions: Fig 8 (train on error), Fig 9 (downstream CE),
Fig 10a (pursuit breakdown), Fig 10b (predicting the error from other components)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from saelab.plots.common import plt

_TARGET_LABELS = {
    "linear": "SAE trained on linear error",
    "nonlinear": "SAE trained on nonlinear error",
}


def plot_train_on_error(scores: Mapping[str, Any]) -> Figure:
    """Fig 8: detection accuracy per bin ("Not", Q1 strongest .. Qn) of the latents of SAEs
    trained on the linear and on the nonlinear error, with 95 % binomial error bars."""
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = None
    for offset, (name, result) in zip((-0.1, 0.1), scores["targets"].items(), strict=False):
        bins = result["bins"]
        x = np.arange(len(bins)) + offset
        acc = np.asarray(result["accuracy"], dtype=float)
        ci = np.asarray(result["ci95"], dtype=float)
        label = f"{_TARGET_LABELS.get(name, name)} ({result['n_latents']} latents)"
        ax.errorbar(x, acc, yerr=ci, marker="o", capsize=3, linestyle="-", label=label)
    ax.set_xticks(np.arange(len(bins or [])), bins or [])
    ax.set_xlabel("examples: non-activating, then activation quantile (Q1 = strongest)")
    ax.set_ylabel("detection accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Train on error: detection scores (scorer: {scores['scorer']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _ce_panel(ax, records: Sequence[Mapping[str, Any]], labels: Sequence[str], title: str):
    x = np.arange(len(records))
    width = 0.38
    lin = [r["linear_percent"] for r in records]
    nonlin = [r["nonlinear_percent"] for r in records]
    from saelab.plots.common import interval_yerr

    ax.bar(x - width / 2, lin, width, label="SAE + linear error", color="tab:orange",
           yerr=interval_yerr(records, "linear_percent", "linear_percent"), capsize=3)  # fmt: skip
    ax.bar(x + width / 2, nonlin, width, label="SAE + nonlinear error", color="tab:purple",
           yerr=interval_yerr(records, "nonlinear_percent", "nonlinear_percent"), capsize=3)  # fmt: skip
    for i, r in enumerate(records):
        for dx, part in ((-width / 2, "linear"), (width / 2, "nonlinear")):
            ax.hlines(r[f"r2_percent_{part}"], i + dx - width / 2, i + dx + width / 2,
                      colors="red", linestyles="dashed")  # fmt: skip
            ax.hlines(r[f"norm_percent_{part}"], i + dx - width / 2, i + dx + width / 2,
                      colors="blue", linestyles="dashed")  # fmt: skip
    ax.set_xticks(x, labels)
    ax.set_ylim(min(0, *lin, *nonlin) - 5, max(100, *lin, *nonlin) + 5)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title(title)


def plot_downstream_ce(table: Mapping[str, Any]) -> Figure:
    """Fig 9: % of the CE gap (SAE-only loss → clean loss) recovered by splicing x̂ + linear
    error and x̂ + nonlinear error; red dashes: % of the SAE's unexplained variance (R²),
    blue dashes: % of the error's squared norm, of each part."""
    saes = table["saes"]
    width_sweep = [saes[n] for n in table["width_sweep"]]
    k_sweep = [saes[n] for n in table["k_sweep"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    k = width_sweep[0]["k"] if width_sweep else None
    w = k_sweep[0]["width"] if k_sweep else None
    _ce_panel(axes[0], width_sweep, [str(r["width"]) for r in width_sweep], f"widths at k = {k}")
    _ce_panel(axes[1], k_sweep, [str(r["k"]) for r in k_sweep], f"k at width {w}")
    axes[0].set_xlabel("SAE width")
    axes[1].set_xlabel("SAE k (L0)")
    axes[0].set_ylabel("% of CE loss recovered (0 = SAE alone, 100 = clean)")
    handles, labels = axes[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [Line2D([], [], color="red", linestyle="dashed"),
                Line2D([], [], color="blue", linestyle="dashed")]  # fmt: skip
    labels += ["% of variance (R²)", "% of error norm²"]
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)
    n = width_sweep[0]["n_predictions"] if width_sweep else 0
    fig.suptitle(
        f"Downstream CE with parts of the SAE error spliced back ({n} predictions per SAE; "
        "bars: bootstrap 95 % over contexts)"
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_pursuit_breakdown(breakdown: Mapping[str, Any]) -> Figure:
    """Fig 10a: FVU against width of the encoder and of gradient pursuit at the same L0, each
    alone and plus its own linear error prediction, with the paper's breakdown drawn for
    pursuit (``breakdown`` from :func:`saelab.darkmatter.scaling.pursuit_breakdown`): the
    power-law ``fit`` curve above its asymptote c = absent features; c down to the mean
    nonlinear FVU of pursuit = linear error (empty when c lies below it); below = nonlinear
    error. With ``k_records`` (pursuit on the k sweep at one width), a second panel of FVU
    against L0."""
    records, k_records = breakdown["width_records"], breakdown["k_records"]
    fit = breakdown["fit"]
    n_panels = 2 if k_records else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(7 * n_panels, 4.5), squeeze=False)
    ax = axes[0, 0]
    widths = np.asarray([r["width"] for r in records], dtype=float)
    _fvu_lines(ax, widths, records)
    nonlinear = np.asarray([r["pursuit_nonlinear_error_fvu"] for r in records])
    grid = np.asarray(breakdown["grid"])
    floor = float(nonlinear.mean())
    ax.fill_between(grid, 0, floor, color="tab:purple", alpha=0.2, label="nonlinear error")
    if fit is not None:
        curve = np.asarray(breakdown["fit_curve"])
        c = float(fit["c"])
        top = max(c, floor)
        ax.plot(grid, curve, ":", color="black",
                label=f"pursuit fit FVU ≈ {c:.3f} + {fit['a']:.3g} W^-{fit['m']:.2f}")  # fmt: skip
        if c > floor:
            ax.fill_between(grid, floor, c, color="tab:orange", alpha=0.25, label="linear error")
        ax.fill_between(grid, top, np.maximum(curve, top), color="tab:red", alpha=0.15,
                        label="absent features")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("SAE width (latents)")
    ax.set_ylabel("FVU")
    ax.set_ylim(0, None)
    k = records[0]["k"] if records else None
    n = records[0]["n_tokens"] if records else 0
    ax.set_title(f"widths at k = {k} ({n} tokens, pursuit at each token's L0)", fontsize=10)
    ax.legend(fontsize=7)
    if k_records:
        ax = axes[0, 1]
        _fvu_lines(ax, np.asarray([r["l0_mean"] for r in k_records]), k_records)
        l0s = [r["l0_mean"] for r in k_records]
        ax.set_xscale("log")
        ax.set_xticks(l0s, [f"{v:.3g}" for v in l0s])
        ax.minorticks_off()
        ax.set_xlabel("L0 (mean over tokens)")
        ax.set_ylim(0, None)
        ax.set_title(f"k sweep at width {k_records[0]['width']}", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Inference-time optimisation: gradient pursuit over the SAE decoder")
    fig.tight_layout()
    return fig


def _fvu_lines(ax, xs: np.ndarray, records: Sequence[Mapping[str, Any]]) -> None:
    ax.plot(xs, [r["encoder_fvu"] for r in records], "o-", color="tab:blue", label="SAE encoder")
    ax.plot(xs, [r["pursuit_fvu"] for r in records], "s-", color="tab:green",
            label="gradient pursuit (same L0)")  # fmt: skip
    ax.plot(xs, [r["encoder_nonlinear_error_fvu"] for r in records], "o--", color="tab:blue",
            alpha=0.6, label="encoder + linear error prediction")  # fmt: skip
    ax.plot(xs, [r["pursuit_nonlinear_error_fvu"] for r in records], "s--", color="tab:green",
            alpha=0.6, label="pursuit + linear error prediction")  # fmt: skip


def _short_hook(hook: str) -> str:
    """blocks.6.hook_mlp_out -> L6 mlp_out."""
    parts = hook.split(".")
    if len(parts) >= 3 and parts[0] == "blocks":
        return f"L{parts[1]} " + ".".join(parts[2:]).replace("hook_", "")
    return hook


_PANEL_TITLES = {"nonlinear": "Nonlinear error", "error": "SAE error", "linear": "Linear error"}


def plot_components(table: Mapping[str, Any]) -> Figure:
    """Fig 10b: held-out R² of the nonlinear error, the SAE error and the linear error from the
    SAE reconstruction of each component."""
    r2 = table["r2"]
    targets = list(r2)
    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, target in zip(axes, targets, strict=True):
        labels = list(r2[target])
        values = [r2[target][label] for label in labels]
        hooks = table.get("predictor_hooks", {})
        names = [
            f"{label}\n{_short_hook(hooks[label])}" if label in hooks else label for label in labels
        ]
        ax.bar(names, values, color=plt.cm.tab10(np.arange(len(labels))))
        ax.set_title(_PANEL_TITLES.get(target, target))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.tick_params(axis="x", labelsize=7)
    axes[0].set_ylabel("held-out R² (from the SAE reconstruction)")
    fig.suptitle(f"Predicting {table['sae']}'s error from other components' SAE reconstructions")
    fig.tight_layout()
    return fig
