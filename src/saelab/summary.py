"""``results/summary.md``: the README's results tables, rendered from one run's outputs.

Every number is printed with its interval (a bootstrap interval over contexts, a power-law
fit's interval, a Fisher-z interval of a correlation) or with the reason it has none, and the
page is stamped with the git commit and the command that made it, so the README's tables can be
refreshed from it and cannot drift from a run. Each section is a plain function of the JSON the
analysis rules write (no Snakemake here); :func:`render_summary` joins the sections a run has.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

NO_INTERVAL_EXACT = (
    "no interval: computed once on the held-out tokens, sampling error not estimated"
)


# ------------------------------------------------------------------ formatting
def num(value: Any, digits: int = 3) -> str:
    """A number for a table: ``digits`` significant decimals, n/a for None or NaN."""
    if value is None:
        return "n/a"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 10**-(digits)):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def with_interval(value: Any, interval: Sequence[float] | None, digits: int = 3) -> str:
    """``value [low, high]``, or the value alone (the caller states why there is no interval)."""
    if interval is None or any(v is None for v in interval):
        return num(value, digits)
    return f"{num(value, digits)} [{num(interval[0], digits)}, {num(interval[1], digits)}]"


def fisher_interval(r: float | None, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """The Fisher-z interval of a Pearson r over n pairs (as ``scipy.stats.pearsonr(...)
    .confidence_interval``), or None when n ≤ 3 or r is undefined or ±1."""
    from scipy import stats

    if r is None or n <= 3 or not -1 < r < 1:
        return None
    half = stats.norm.ppf((1 + level) / 2) / math.sqrt(n - 3)
    z = math.atanh(r)
    return math.tanh(z - half), math.tanh(z + half)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _interval_note(intervals: Mapping[str, Any] | None) -> str:
    method = (intervals or {}).get("_method")
    if not method:
        return "no interval: fewer than 2 contexts"
    return (
        f"{method['method']}, {100 * method['level']:.0f} %, {method['n_contexts']} contexts, "
        f"{method['n_resamples']} resamples, seed {method['seed']}"
    )


# ------------------------------------------------------------------ sections
def sae_section(evaluations: Mapping[str, Mapping[str, Any]]) -> str:
    """The SAE table (FVU, L0, never-firing fraction, CE loss score and KL with their bootstrap
    intervals under both BOS conventions, first-letter absorption) of the named SAEs."""
    rows, notes = [], set()
    n_tokens = set()
    for name, ev in evaluations.items():
        ce = ev.get("ce_recovered") or {}
        iv = ce.get("intervals") or {}
        other = ce.get("other_convention") or {}
        absorption = ev.get("first_letter_absorption") or {}
        n_tokens.add(ev.get("n_tokens"))
        rows.append([
            name,
            ev.get("arch", "?"),
            num(ev.get("fvu_dim_centred")),
            num((ev.get("l0") or {}).get("mean"), 1),
            num(ev.get("dead_fraction"), 2),
            with_interval(ce.get("ce_loss_score"), iv.get("ce_loss_score")) if ce else "n/a",
            with_interval(ce.get("kl_sae"), iv.get("kl_sae")) if ce else "n/a",
            with_interval(other.get("ce_loss_score"),
                          (other.get("intervals") or {}).get("ce_loss_score")) if other else "n/a",
            _absorption(absorption),
        ])  # fmt: skip
        if ce:
            notes.add(
                f"CE loss score (vs zero ablation) and KL: {ce.get('n_tokens')} predictions, BOS "
                f"convention `{ce.get('bos_convention', 'splice')}`; intervals: "
                f"{_interval_note(iv)}. The other column uses the other BOS convention "
                f"(`{other.get('bos_convention', 'n/a')}`; `splice` replaces BOS too, saelab's "
                "default and SAEBench's; `clean` keeps BOS clean, as SAE-Lens)."
            )
    header = ["SAE", "arch", "FVU", "L0", "never fired", "CE loss score [95 %]",
              "KL [95 %]", "CE loss score, other BOS convention [95 %]",
              "first-letter absorption (full rate / mean fraction)"]  # fmt: skip
    tokens = ", ".join(str(t) for t in sorted(t for t in n_tokens if t is not None))
    text = [
        "## SAEs",
        "",
        _table(header, rows),
        "",
        f"- FVU (per-dimension centred), L0, never-fired fraction and absorption: on {tokens} "
        f"held-out tokens; {NO_INTERVAL_EXACT}.",
    ]
    text += [f"- {note}" for note in sorted(notes)]
    return "\n".join(text)


def _absorption(absorption: Mapping[str, Any]) -> str:
    if not absorption:
        return "n/a"
    if absorption.get("full_absorption_rate") is None:
        return f"n/a ({absorption.get('reason') or 'not computed'})"
    return (
        f"{num(absorption['full_absorption_rate'])} / "
        f"{num(absorption.get('mean_absorption_fraction'))}"
    )


def darkmatter_section(
    scaling: Mapping[str, Any] | None = None,
    downstream: Mapping[str, Any] | None = None,
    baselines: Mapping[str, Any] | None = None,
    noise: Mapping[str, Any] | None = None,
    norms: Mapping[str, Any] | None = None,
) -> str:
    """The dark-matter headline numbers of the README, from the rules' JSON outputs."""
    rows: list[list[str]] = []
    if scaling:
        saes = scaling.get("saes", [])
        r2v = [s["r2_vector"] for s in saes if s.get("r2_vector") is not None]
        r2n = [s["r2_norm"] for s in saes if s.get("r2_norm") is not None]
        grid = f"range over the {len(saes)} grid SAEs; one seeded held-out split each, no interval"
        if r2v:
            rows.append(["R² of the error vector from x (held out)",
                         f"{num(min(r2v))}–{num(max(r2v))}", grid])  # fmt: skip
        if r2n:
            rows.append(["R² of the squared error norm from x (held out)",
                         f"{num(min(r2n))}–{num(max(r2n))}", grid])  # fmt: skip
        widths = scaling.get("curve_widths", [])
        k = scaling.get("curve_k")
        rows.append([f"FVU of the width curve (k = {k}) at {', '.join(map(str, widths))}",
                     ", ".join(num(v) for v in scaling.get("curve_fvu", [])),
                     "one SAE per width; no interval"])  # fmt: skip
        law = scaling.get("power_law") or {}
        if law:
            cis = {key: _finite_or_none(law.get(f"{key}_ci")) for key in "cam"}
            note = (
                f"the fit's 95 % intervals ({law.get('ci_method') or 'covariance, t'}; "
                f"{law.get('n_points')} widths)"
                if any(cis.values())
                else f"no interval: {law.get('n_points')} widths leave the 3-parameter fit no "
                "degrees of freedom"
            )
            rows.append([
                "power law FVU = c + a·W^(−m)",
                ", ".join(f"{key} = {with_interval(law.get(key), cis[key])}" for key in "cam"),
                note,
            ])  # fmt: skip
        rows.append([f"nonlinear FVU (after adding x·W), k = {k}",
                     ", ".join(num(v) for v in scaling.get("curve_nonlinear_fvu", [])),
                     "one SAE per width; no interval"])  # fmt: skip
        parts = scaling.get("breakdown_at_widest") or {}
        if parts:
            rows.append([
                f"Fig 1 at {parts.get('width')}: absent features, linear, encoder, nonlinear error",
                ", ".join(num(parts.get(key)) for key in
                          ("absent_features", "linear_error", "encoder_error", "nonlinear_error")),
                "differences of single-SAE FVUs and the fit; no interval",
            ])  # fmt: skip
    if norms:
        per_sae = norms.get("r2", {})
        if per_sae:
            keys = list(next(iter(per_sae.values())))
            medians = [float(np.median([v[key] for v in per_sae.values()])) for key in keys]
            rows.append([f"Fig 7 median R² of ‖·‖² from x: {', '.join(keys)}",
                         ", ".join(num(m) for m in medians),
                         f"median over {len(per_sae)} SAEs; no interval"])  # fmt: skip
    if downstream:
        saes = downstream.get("saes", {})
        for sweep, label in (("width_sweep", "width"), ("k_sweep", "k")):
            names = downstream.get(sweep, [])
            if not names:
                continue
            cells = []
            for name in names:
                r = saes[name]
                iv = r.get("intervals") or {}
                cells.append(
                    f"{label} {r.get(label)}: {with_interval(r['linear_percent'], iv.get('linear_percent'), 1)}"
                    f" / {with_interval(r['nonlinear_percent'], iv.get('nonlinear_percent'), 1)}"
                )
            first = saes[names[0]]
            rows.append(
                [
                    f"Fig 9: % of CE recovered by x̂ + linear error / x̂ + nonlinear error ({sweep})",
                    "; ".join(cells),
                    f"{first.get('n_predictions')} predictions per SAE; "
                    f"{_interval_note(first.get('intervals'))}",
                ]
            )
    if noise and noise.get("table"):
        table = noise["table"]
        cells = [f"corr({row}, {col}) = {num(v, 2)}" for row, cols in table.items()
                 for col, v in cols.items()]  # fmt: skip
        grid = (noise.get("config") or {}).get("grid") or []
        rows.append(["Table 1: noise ↔ error correlations", "; ".join(cells),
                     f"Pearson r over the {len(grid)}×{len(grid)} noise grid of a simulation, "
                     "not a sample; no interval"])  # fmt: skip
    if baselines and baselines.get("saes"):
        saes = baselines["saes"]
        keys = [k for k in ("x_affine", "token_id", "l0", "x_norm", "model_loss")
                if any(k in s["r2"] for s in saes)]  # fmt: skip
        medians = [float(np.nanmedian([s["r2"].get(k, np.nan) for s in saes])) for k in keys]
        in_sample = baselines.get("token_id_in_sample", True)
        rivals = [k for k in keys if k != "x_affine"]
        best = sum(
            1 for s in saes
            if all(s["r2"]["x_affine"] > s["r2"].get(k, -np.inf) for k in rivals
                   if not _nan(s["r2"].get(k)))
        )  # fmt: skip
        label = "in-sample" if in_sample else "held out"
        rows.append(
            [
                f"Fig 13 median R² of ‖error‖²: {', '.join(keys)} (token id {label})",
                ", ".join(num(m) for m in medians) + f"; x best at {best} of {len(saes)} SAEs",
                f"median over {len(saes)} SAEs, one held-out split each; no interval",
            ]
        )
    if not rows:
        return ""
    return "\n".join(["## Dark matter", "", _table(["quantity", "this run", "interval"], rows)])


def _finite_or_none(interval):
    """An interval with two finite ends, or None (JSON stores NaN ends as null)."""
    if not interval or any(_nan(v) for v in interval):
        return None
    return interval


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def cooccurrence_section(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Per threshold and SAE: the giant subgraph, subgraph count, mean co-occurrence and the
    group correlations with Fisher-z intervals."""
    rows = []
    for tag, summary in summaries.items():
        for name, rec in summary.get("saes", {}).items():
            corr = rec.get("correlations", {}).get("group_vs_subgraph_size", {})
            r, n = corr.get("pearson_r"), corr.get("n", 0)
            rows.append(
                [
                    f"{name} (τ = {tag})",
                    str(rec.get("giant_subgraph_size")),
                    str(rec.get("n_non_singleton_subgraphs")),
                    num(rec.get("mean_cooccurrence"), 4),
                    with_interval(r, fisher_interval(r, n)) + f" (n = {n})",
                ]
            )
    if not rows:
        return ""
    header = ["SAE", "giant subgraph (nodes)", "subgraphs (≥ 2 nodes)", "mean normalised co-occurrence",
              "Pearson r(group, subgraph size) [95 %]"]  # fmt: skip
    return "\n".join([
        "## Co-occurrence",
        "",
        _table(header, rows),
        "",
        "- Counts and mean co-occurrence: exact on the counted tokens; no interval. r: Fisher-z "
        "95 % interval over the n latents in non-singleton, non-giant subgraphs (latents of one "
        "subgraph are not independent, so it is optimistic).",
    ])  # fmt: skip


def trajectories_section(evolutions: Mapping[str, Mapping[str, Any]]) -> str:
    """Per prompt: tokens, layers and the check that the last step reproduces resid_mid."""
    rows = []
    for prompt, evolution in evolutions.items():
        meta = evolution.get("metadata", {})
        lengths = meta.get("lengths") or []
        rows.append(
            [
                prompt,
                str(max(lengths) if lengths else "n/a"),
                str(len(meta.get("layers") or [])),
                num(meta.get("max_relative_error"), 2),
                num(meta.get("check_tolerance"), 2),
            ]
        )
    if not rows:
        return ""
    header = ["prompt", "tokens", "layers", "max relative error of the last step vs resid_mid",
              "tolerance"]  # fmt: skip
    return "\n".join(
        [
            "## Trajectories",
            "",
            _table(header, rows),
            "",
            "- Deterministic: one forward of one prompt; no interval.",
        ]
    )


# ------------------------------------------------------------------ the page
def git_commit(repo: str | Path) -> str:
    """HEAD of ``repo``, with ``-dirty`` when tracked files differ from it, or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
            check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("-dirty" if dirty else "")


#: The header lines that name a run, in order: :func:`render_summary` writes them and
#: :func:`parse_summary` reads them back (``saelab.readme_results`` stamps README blocks).
STAMP_KEYS = ("model", "commit", "command", "machine")
SUMMARY_TITLE = "# saelab results summary"


def render_summary(
    sections: Sequence[str], *, commit: str, command: str, model: str, machine: str | None = None
) -> str:
    stamp = {"model": f"`{model}`", "commit": f"`{commit}`", "command": f"`{command}`",
             "machine": machine}  # fmt: skip
    header = [
        SUMMARY_TITLE,
        "",
        *(f"- {key}: {stamp[key]}" for key in STAMP_KEYS if stamp[key]),
        "- every number comes from this run's outputs; intervals are 95 % (bootstrap over "
        "contexts, or the fit's) or the row says why there is none",
    ]
    body = [s for s in sections if s]
    return "\n\n".join(["\n".join(header), *body]) + "\n"


def parse_summary(summary: str) -> tuple[dict[str, str], dict[str, str]]:
    """(stamp, sections) of a page :func:`render_summary` wrote: the :data:`STAMP_KEYS` lines
    of its header, and the body of every ``## name`` section (heading removed, surrounding
    blank lines stripped)."""
    head, *parts = re.split(r"^## ", summary, flags=re.M)
    stamp = {}
    for line in head.splitlines():
        m = re.match(r"- (\w+): (.*)$", line)
        if m and m[1] in STAMP_KEYS:
            stamp[m[1]] = m[2]
    sections = {}
    for part in parts:
        name, _, body = part.partition("\n")
        sections[name.strip()] = body.strip("\n")
    return stamp, sections
