"""Figures of the SAE stage. Each function takes plain data and returns a Figure."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import ticker
from matplotlib.figure import Figure

from saelab.metrics import fvu_key
from saelab.plots.common import interval_yerr, readable_log_axis

ARCH_COLOURS = {
    "topk": "tab:blue",
    "batchtopk": "tab:orange",
    "matryoshka": "tab:green",
    "relu": "tab:red",
    "jumprelu": "tab:purple",
}

log = logging.getLogger(__name__)


def _colour(arch: str) -> str:
    return ARCH_COLOURS.get(arch, "tab:gray")


#: What the training loop logs as ``fvu``: element-global FVU of the training batch.
TRAIN_FVU_LABEL = "batch FVU, element-global\n(MSE / variance of all elements)"


def plot_training_curves(logs: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Loss, FVU, L0 and dead fraction against training tokens, one line per run.

    ``logs`` maps a run name to its ``train_log.jsonl`` records (``tokens``, ``loss``, ``fvu``,
    ``l0``, ``dead``). The logged ``fvu`` is the training batch's element-global FVU (MSE over
    the variance of all elements about one mean), not the held-out per-dimension-centred FVU of
    the evaluation tables; the panel says so.
    """
    panels = [("loss", "loss", True), ("fvu", TRAIN_FVU_LABEL, True), ("l0", "L0", False),
              ("dead", "dead latents (fraction)", False)]  # fmt: skip
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    for ax, (key, label, log_scale) in zip(axes.flat, panels, strict=True):
        drawn = False
        for name, records in logs.items():
            points = [(r["tokens"], r[key]) for r in records if r.get(key) is not None]
            if log_scale:
                points = [(x, y) for x, y in points if y > 0]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=name, lw=1.2)
                drawn = True
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
        # "100k", "1.5M": at most 5 ticks so long token counts never run together
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
        if log_scale and drawn:
            ax.set_yscale("log")
            readable_log_axis(ax, "y")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(
        "SAE training curves: metrics of the training batches (the evaluation's held-out FVU "
        "is per-dimension-centred)",
        fontsize=10,
    )
    return fig


def plot_l0_fvu_frontier(
    points: Sequence[Mapping], fvu_name: str, grid: Sequence[Mapping] = ()
) -> Figure:
    """Held-out FVU against mean L0: one marker per named SAE (``name``, ``arch``, ``l0``,
    ``fvu``, optional ``hook``), and the dark-matter grid (``grid``: ``width``, ``k``, ``l0``,
    ``fvu``, ``hook``, ``arch``) as one line per width through its k values, so the figure shows
    the frontier that the named SAEs sit on (or off)."""
    fig, ax = plt.subplots(figsize=(7.5, 5), constrained_layout=True)
    named_hooks = sorted({p["hook"] for p in points if p.get("hook")})
    grid_hooks = sorted({g["hook"] for g in grid if g.get("hook")})
    widths = sorted({g["width"] for g in grid})
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, max(len(widths), 1)))
    for width, colour in zip(widths, colours, strict=False):
        row = sorted((g for g in grid if g["width"] == width), key=lambda g: g["l0"])
        arch = row[0].get("arch", "")
        ax.plot([g["l0"] for g in row], [g["fvu"] for g in row], "-", color=colour, lw=1,
                marker="s", ms=4, label=f"grid {arch} width {width}")  # fmt: skip
    if widths:  # k once, at the widest SAEs (the bottom line)
        for g in (g for g in grid if g["width"] == widths[-1]):
            ax.annotate(f"k = {g['k']}", (g["l0"], g["fvu"]), fontsize=7, color=colours[-1],
                        xytext=(0, -11), textcoords="offset points", ha="center")  # fmt: skip
    seen = set()
    ordered = sorted(points, key=lambda p: p["l0"])
    for point, left in zip(ordered, _crowded(ordered, grid), strict=True):
        arch = point["arch"]
        ax.scatter(point["l0"], point["fvu"], color=_colour(arch), s=55, edgecolor="k",
                   zorder=3, label=None if arch in seen else arch)  # fmt: skip
        seen.add(arch)
        # a point close to an earlier one is labelled below-left, so the two names do not collide
        ax.annotate(point["name"], (point["l0"], point["fvu"]), fontsize=7,
                    xytext=(-5, -10) if left else (5, 3), ha="right" if left else "left",
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    readable_log_axis(ax, "x")
    ax.set_xlabel("mean L0 (held-out)")
    ax.set_ylabel(f"FVU ({fvu_name}, held-out)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    notes = []
    if named_hooks:
        notes.append("named SAEs: " + ", ".join(named_hooks))
    if grid_hooks:
        notes.append("grid: " + ", ".join(grid_hooks) + " (dark-matter analysis window)")
    if named_hooks and grid_hooks and named_hooks != grid_hooks:
        notes.append("different hooks: FVUs are not on one frontier")
    if notes:
        fig.supxlabel("\n".join(notes), fontsize=7, color="0.3")
    bottom, top = ax.get_ylim()
    ax.set_ylim(min(bottom, 0), top)
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


def _short_hook(hook: str) -> str:
    return hook.replace("blocks.", "L").replace(".hook_", " ").replace("hook_", "")


def _crowded(points: Sequence[Mapping], grid: Sequence[Mapping]) -> list[bool]:
    """For each point (in order), whether it lies within 6 % of the y range and 8 % of the log-x
    range of an earlier point that kept its label at the default place."""
    everything = [*points, *grid]
    if not points:
        return []
    ys = [p["fvu"] for p in everything]
    xs = [np.log(max(p["l0"], 1e-9)) for p in everything]
    dy, dx = (max(ys) - min(ys)) or 1.0, (max(xs) - min(xs)) or 1.0
    placed: list[tuple[float, float]] = []
    crowded = []
    for p in points:
        x, y = np.log(max(p["l0"], 1e-9)), p["fvu"]
        near = any(abs(x - px) < 0.08 * dx and abs(y - py) < 0.06 * dy for px, py in placed)
        crowded.append(near)
        if not near:
            placed.append((x, y))
    return crowded


def plot_ce_recovered(rows: Sequence[Mapping]) -> Figure:
    """Bars of CE loss recovered (vs zero and vs mean ablation) and KL per SAE.

    Each row: ``name``, ``arch``, ``ce_recovered_zero``, ``ce_recovered_mean``, ``kl``, and
    ``hook`` (the hook the reconstruction replaces: a transcoder's target). Bars are grouped by
    that hook and each group is labelled with it: SAEs spliced at different hooks are measured
    against different ablation baselines (zeroing ``mlp_out`` costs far less than zeroing the
    residual stream), so their scores and KLs are not comparable across groups. Optional
    ``intervals`` (``{"ce_loss_score": [lo, hi], ...}``) are drawn as 95 % error bars.
    """
    fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    if not rows:
        ax.text(0.5, 0.5, "CE evaluation disabled (evaluation.ce_contexts = 0)", ha="center")
        ax.set_axis_off()
        ax_kl.set_axis_off()
        return fig
    rows = sorted(rows, key=lambda r: r.get("hook") or "")  # stable: config order within a hook
    hooks = [r.get("hook") or "" for r in rows]
    names = [r["name"] for r in rows]
    positions = list(range(len(rows)))
    colours = [_colour(r["arch"]) for r in rows]
    width = 0.38
    ax.bar([p - width / 2 for p in positions], [r["ce_recovered_zero"] for r in rows], width,
           label="vs zero ablation", color=colours,
           yerr=interval_yerr(rows, "ce_recovered_zero", "ce_loss_score"), capsize=3)  # fmt: skip
    ax.bar([p + width / 2 for p in positions], [r["ce_recovered_mean"] for r in rows], width,
           label="vs mean ablation", color=colours, alpha=0.5, hatch="//",
           yerr=interval_yerr(rows, "ce_recovered_mean", "ce_loss_score_mean"),
           capsize=3)  # fmt: skip
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_ylabel("fraction of CE loss recovered")
    # "best": negative bars (a transcoder with BOS spliced) can fill the bottom
    ax.legend(fontsize=8, loc="best")
    ax.set_title("CE loss recovered (baseline: ablating the spliced hook; bars: bootstrap 95 %)",
                 fontsize=10, pad=24)  # fmt: skip
    ax_kl.bar(positions, [r["kl"] for r in rows], color=colours,
              yerr=interval_yerr(rows, "kl", "kl_sae"), capsize=3)  # fmt: skip
    ax_kl.set_ylabel("KL(clean || spliced), nats per token")
    ax_kl.set_title("KL divergence", fontsize=10, pad=24)
    groups = [
        (hook, [i for i, h in enumerate(hooks) if h == hook]) for hook in dict.fromkeys(hooks)
    ]
    for axis in (ax, ax_kl):
        axis.set_xticks(positions, names, rotation=20, ha="right")
        for n, (hook, members) in enumerate(groups):
            if n:
                axis.axvline(members[0] - 0.5, color="0.4", lw=0.8, ls=":")
            if hook:
                axis.text((members[0] + members[-1]) / 2, 1.0, f"spliced at\n{_short_hook(hook)}",
                          transform=axis.get_xaxis_transform(), ha="center", va="bottom",
                          fontsize=7, color="0.25")  # fmt: skip
    if len(groups) > 1:
        fig.supxlabel("Groups are spliced at different hooks, so their ablation baselines differ: "
                      "compare bars within a group, not across groups.", fontsize=8,
                      color="firebrick")  # fmt: skip
    return fig


# ---------------------------------------------------------------- registry entries
# The drawing functions of the registry rows (saelab.figures): inputs as scripts/plot.py loads
# them (evaluation JSONs of the named SAEs, the trained SAEs' directories, the grid's
# regression.json), the rows' options as keywords.


def draw_training_curves(saes: Sequence[str]) -> Figure:
    """Every trained SAE's train_log.jsonl (in its directory, named as the SAE) as curves."""
    logs = {
        Path(path).name: [
            json.loads(line) for line in (Path(path) / "train_log.jsonl").read_text().splitlines()
        ]
        for path in saes
    }
    return plot_training_curves(logs)


def draw_l0_fvu_frontier(
    evaluations: Sequence[Mapping],
    grid: Sequence[Mapping],
    fvu: str,
    grid_points: Sequence[Mapping],
) -> Figure:
    """Held-out FVU (definition ``fvu``) against L0 of the named SAEs, and the dark-matter grid
    (its regression.json: dim-centred FVU and L0 over the analysis window)."""
    points = []
    for e in evaluations:
        ce = e.get("ce_recovered") or {}
        points.append({"name": e["sae"], "arch": e["arch"], "l0": e["l0"]["mean"],
                       "fvu": e[fvu_key(fvu)], "hook": ce.get("hook_name")})  # fmt: skip
    rows = [
        {**point, "l0": regression["l0_mean"], "fvu": regression["fvu"]}
        for point, regression in zip(grid_points, grid, strict=True)
    ]
    if rows and fvu != "dim_centred":
        log.warning("the grid's FVU is dim_centred while the named SAEs show %s", fvu)
    return plot_l0_fvu_frontier(points, fvu, rows)


def draw_matryoshka_prefix_fvu(evaluations: Sequence[Mapping], fvu: str) -> Figure:
    """FVU (definition ``fvu``) of every nested prefix of every Matryoshka SAE."""
    prefixes = {}
    for evaluation in evaluations:
        if evaluation.get("matryoshka"):
            rows = evaluation["matryoshka"]["prefix_fvu"]
            prefixes[evaluation["sae"]] = {
                "sizes": [row["n_latents"] for row in rows],
                "fvu": [row[fvu_key(fvu)] for row in rows],
            }
    return plot_matryoshka_prefix_fvu(prefixes)


def draw_ce_recovered(evaluations: Sequence[Mapping]) -> Figure:
    """CE loss recovered and KL of every named SAE that has them."""
    rows = []
    for evaluation in evaluations:
        ce = evaluation.get("ce_recovered")
        if ce:
            rows.append({
                "name": evaluation["sae"], "arch": evaluation["arch"],
                "ce_recovered_zero": ce["ce_loss_score"],
                "ce_recovered_mean": ce["ce_loss_score_mean"], "kl": ce["kl_sae"],
                "intervals": ce.get("intervals"),
                "hook": ce.get("hook_name"),
            })  # fmt: skip
    return plot_ce_recovered(rows)
