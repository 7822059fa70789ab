"""Figures of the SAE stage. Each function takes plain data and returns a Figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from saelab.plots.common import interval_yerr

ARCH_COLOURS = {
    "topk": "tab:blue",
    "batchtopk": "tab:orange",
    "matryoshka": "tab:green",
    "relu": "tab:red",
    "jumprelu": "tab:purple",
}


def _colour(arch: str) -> str:
    return ARCH_COLOURS.get(arch, "tab:gray")


def plot_training_curves(logs: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Loss, FVU, L0 and dead fraction against training tokens, one line per run.

    ``logs`` maps a run name to its ``train_log.jsonl`` records (``tokens``, ``loss``, ``fvu``,
    ``l0``, ``dead``).
    """
    panels = [("loss", "loss", True), ("fvu", "FVU (batch)", True), ("l0", "L0", False),
              ("dead", "dead latents (fraction)", False)]  # fmt: skip
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    for ax, (key, label, log_scale) in zip(axes.flat, panels, strict=True):
        for name, records in logs.items():
            points = [(r["tokens"], r[key]) for r in records if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=name, lw=1.2)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("SAE training curves")
    return fig


def plot_l0_fvu_frontier(points: Sequence[Mapping], fvu_name: str) -> Figure:
    """Held-out FVU against mean L0, one marker per SAE (``name``, ``arch``, ``l0``, ``fvu``)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    seen = set()
    for point in sorted(points, key=lambda p: p["l0"]):
        arch = point["arch"]
        ax.scatter(point["l0"], point["fvu"], color=_colour(arch), s=40,
                   label=None if arch in seen else arch)  # fmt: skip
        seen.add(arch)
        ax.annotate(point["name"], (point["l0"], point["fvu"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("mean L0 (held-out)")
    ax.set_ylabel(f"FVU ({fvu_name}, held-out)")
    ax.grid(alpha=0.3)
    ax.legend(title="architecture")
    ax.set_title("Sparsity-fidelity frontier")
    return fig


def plot_matryoshka_prefix_fvu(prefixes: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """FVU of each nested prefix: ``prefixes[name] = {"sizes": cumulative sizes, "fvu": [...]}``."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    if not prefixes:
        ax.text(0.5, 0.5, "no Matryoshka SAE in this config", ha="center", va="center")
        ax.set_axis_off()
        return fig
    for name, data in prefixes.items():
        ax.plot(data["sizes"], data["fvu"], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latents in the prefix (cumulative group size)")
    ax.set_ylabel("held-out FVU of the prefix reconstruction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Matryoshka prefix FVU by group")
    return fig


def plot_ce_recovered(rows: Sequence[Mapping]) -> Figure:
    """Bars of CE loss recovered (vs zero and vs mean ablation) and KL per SAE.

    Each row: ``name``, ``arch``, ``ce_recovered_zero``, ``ce_recovered_mean``, ``kl``, and
    optionally ``intervals`` (``{"ce_loss_score": [lo, hi], ...}``, drawn as 95 % error bars).
    """
    fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    if not rows:
        ax.text(0.5, 0.5, "CE evaluation disabled (evaluation.ce_contexts = 0)", ha="center")
        ax.set_axis_off()
        ax_kl.set_axis_off()
        return fig
    names = [r["name"] for r in rows]
    positions = range(len(rows))
    width = 0.38
    ax.bar([p - width / 2 for p in positions], [r["ce_recovered_zero"] for r in rows], width,
           label="vs zero ablation", color=[_colour(r["arch"]) for r in rows],
           yerr=interval_yerr(rows, "ce_recovered_zero", "ce_loss_score"), capsize=3)  # fmt: skip
    ax.bar([p + width / 2 for p in positions], [r["ce_recovered_mean"] for r in rows], width,
           label="vs mean ablation", color=[_colour(r["arch"]) for r in rows], alpha=0.5,
           hatch="//", yerr=interval_yerr(rows, "ce_recovered_mean", "ce_loss_score_mean"),
           capsize=3)  # fmt: skip
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(list(positions), names, rotation=20, ha="right")
    ax.set_ylabel("fraction of CE loss recovered")
    ax.legend(fontsize=8)
    ax.set_title("CE loss recovered (bars: bootstrap 95 % over contexts)")
    ax_kl.bar(list(positions), [r["kl"] for r in rows], color=[_colour(r["arch"]) for r in rows],
              yerr=interval_yerr(rows, "kl", "kl_sae"), capsize=3)  # fmt: skip
    ax_kl.set_xticks(list(positions), names, rotation=20, ha="right")
    ax_kl.set_ylabel("KL(clean || spliced), nats per token")
    ax_kl.set_title("KL divergence")
    return fig
