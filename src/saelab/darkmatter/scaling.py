"""Scaling law, power-law fit and the dark-matter breakdown (methods.md §5.3).

* The width curve: one SAE per width at a fixed k (the original: the Gemma Scope SAE whose
  empirical L0 is closest to 60 at each width).
* :func:`fit_power_law`: FVU(W) = c + a·W^(−m) by nonlinear least squares
  (``scipy.optimize.curve_fit``, trust-region reflective with c, a, m ≥ 0), with approximate
  (Wald) 95 % confidence intervals from the parameter covariance (t-distribution, n − 3 degrees
  of freedom; undefined, reported as NaN, with 3 points or fewer). c and m: estimate ± t·se.
  a: the fit runs in units of the smallest width w0 (a' = a·w0^m), so a's interval comes from
  the delta method on log a = log a' + m·log w0, which carries m's uncertainty and its
  covariance with a' (a and m are strongly correlated), exponentiated (so a > 0 and the
  interval is asymmetric). Checked against a Monte-Carlo coverage study in the tests. The original fitted |c| + |a|·W^(−|m|)
  with 50,000 unseeded Adam steps from N(0, 1) initialisations and gave no intervals.
* :func:`breakdown`: the four areas of Fig 1 — absent features (fit − c), linear error
  (c − the mean over widths of the FVU after adding the linear error prediction), encoder error
  (that mean − the gradient-pursuit curve, when pursuit FVUs exist) and nonlinear error (the rest).
* :func:`contour_grid`: linear interpolation over (log width, log L0) for the contour figures.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger("saelab.darkmatter")


class ScalingError(ValueError):
    """A sweep or choice of SAEs that the scaling analysis cannot use."""


def _attr(point: Any, key: str):
    return point[key] if isinstance(point, dict) else getattr(point, key)


def curve_points(points: Sequence[Any], k: int | None = None) -> list[Any]:
    """Sweep points at ``k`` (default: the middle of the sweep's distinct k values, the lower
    one of two), sorted by width."""
    ks = sorted({_attr(p, "k") for p in points if _attr(p, "k") is not None})
    if not points:
        return []
    if k is None:
        if not ks:
            raise ScalingError("the sweep has no k axis; set darkmatter.curve_k")
        k = ks[(len(ks) - 1) // 2]
    chosen = sorted((p for p in points if _attr(p, "k") == k), key=lambda p: _attr(p, "width"))
    if not chosen:
        raise ScalingError(f"darkmatter.curve_k: no SAE of the sweep has k = {k}; its k: {ks}")
    return chosen


def pick_sae(points: Sequence[Any], name: str | None, rule: str, k: int | None = None) -> str:
    """``name`` if given (it must be in the sweep), else by ``rule``: ``widest`` (widest at
    ``k``, default the middle k) or ``narrowest_largest_k`` (the original simulation's 16k SAE at its largest L0)."""
    names = [_attr(p, "name") for p in points]
    if name is not None:
        if name not in names:
            raise ScalingError(f"SAE {name!r} is not in the dark-matter sweep; its SAEs: {names}")
        return name
    if not points:
        raise ScalingError("the dark-matter sweep is empty")
    if rule == "widest":
        return _attr(curve_points(points, k)[-1], "name")
    if rule == "narrowest_largest_k":
        narrowest = min(_attr(p, "width") for p in points)
        candidates = [p for p in points if _attr(p, "width") == narrowest]
        return _attr(max(candidates, key=lambda p: _attr(p, "k") or 0), "name")
    raise ScalingError(f"unknown rule {rule!r}; use widest or narrowest_largest_k")


def power_law(width, c: float, a: float, m: float):
    """c + a·W^(−m)."""
    return c + a * np.power(np.asarray(width, dtype=np.float64), -m)


class PowerLawFit(NamedTuple):
    c: float
    a: float
    m: float
    """FVU ≈ c + a·W^(−m) with W in latents."""
    c_ci: tuple[float, float]
    a_ci: tuple[float, float]
    m_ci: tuple[float, float]
    """Approximate 95 % intervals (:data:`CI_METHOD`; NaN when the points do not determine
    them)."""
    rmse: float
    n_points: int
    method: str
    ci_method: str = ""
    """How the intervals were computed (:data:`CI_METHOD`); empty in fits saved before it."""

    def __call__(self, width):
        return power_law(width, self.c, self.a, self.m)


CI_METHOD = (
    "Wald 95 % from curve_fit's covariance, t with n - 3 dof: c, m estimate +- t se; "
    "a: delta method on log a = log a' + m log w0 (m's uncertainty and its covariance included)"
)


def _exp(x: float) -> float:
    """exp that saturates at inf instead of raising (math.exp overflows above ~709.78)."""
    return math.exp(x) if x < 709.0 else math.inf


def _wald_intervals(
    c: float, a_scaled: float, m: float, cov: np.ndarray, w0: float, t: float
) -> list[tuple[float, float]]:
    """95 % intervals of (c, a, m) from the covariance of (c, a', m), a = a'·w0^m."""
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    log_w0 = math.log(w0)
    # d log a / d(c, a', m) = (0, 1/a', log w0)
    grad = np.array([0.0, 1.0 / a_scaled, log_w0]) if a_scaled > 0 else None
    if grad is None:
        a_ci = (math.nan, math.nan)
    else:
        log_a = math.log(a_scaled) + m * log_w0
        se_log_a = math.sqrt(max(float(grad @ cov @ grad), 0.0))
        # a flat curve leaves a unidentified: its bound is then infinite, not an overflow
        a_ci = (_exp(log_a - t * se_log_a), _exp(log_a + t * se_log_a))
    return [(c - t * se[0], c + t * se[0]), a_ci, (m - t * se[2], m + t * se[2])]


def fit_power_law(widths: Sequence[float], fvus: Sequence[float]) -> PowerLawFit:
    """Fit FVU = c + a·W^(−m) (c, a, m ≥ 0) with ``scipy.optimize.curve_fit``; intervals as
    :data:`CI_METHOD` (the module docstring explains them)."""
    from scipy import stats
    from scipy.optimize import OptimizeWarning, curve_fit

    W = np.asarray(widths, dtype=np.float64)
    y = np.asarray(fvus, dtype=np.float64)
    if W.shape != y.shape or len(W) < 3:
        raise ScalingError(
            f"a power law c + a W^-m needs at least 3 (width, FVU) points; got {len(W)}"
        )
    if len(np.unique(W)) < 3:
        raise ScalingError(f"a power-law fit needs 3 distinct widths; got {sorted(set(W))}")
    # Fit in units of the smallest width: a is then O(FVU) and the problem well scaled.
    w0 = W.min()
    u = W / w0

    def model(u, c, a, m):
        return c + a * np.power(u, -m)

    best = None
    for m_init in (0.25, 0.5, 1.0, 2.0):
        c_init = max(y.min() * 0.5, 0.0)
        p0 = [c_init, max(y.max() - c_init, 1e-6), m_init]
        try:
            with warnings.catch_warnings():
                # 3 points leave no degrees of freedom for the covariance: reported as NaN CIs
                warnings.simplefilter("ignore", OptimizeWarning)
                params, cov = curve_fit(
                    model, u, y, p0=p0, bounds=([0, 0, 0], [np.inf, np.inf, 10.0]), maxfev=20000
                )
        except RuntimeError:
            continue
        sse = float(np.square(model(u, *params) - y).sum())
        if best is None or sse < best[2]:
            best = (params, cov, sse)
    if best is None:
        raise ScalingError(f"the power-law fit did not converge on widths {W} and FVUs {y}")
    (c, a_scaled, m), cov, sse = best
    dof = len(W) - 3
    a = a_scaled * w0**m
    if dof > 0 and np.all(np.isfinite(cov)):
        cis = _wald_intervals(c, a_scaled, m, cov, w0, float(stats.t.ppf(0.975, dof)))
    else:
        cis = [(math.nan, math.nan)] * 3
    return PowerLawFit(
        float(c), float(a), float(m),
        *((float(lo), float(hi)) for lo, hi in cis),
        rmse=float(math.sqrt(sse / len(W))), n_points=len(W), method="scipy.optimize.curve_fit",
        ci_method=CI_METHOD,
    )  # fmt: skip


class Breakdown(NamedTuple):
    """The four dark-matter areas at each width of ``widths`` (FVU units)."""

    widths: np.ndarray
    fitted: np.ndarray
    """The power law at each width."""
    asymptote: float
    """c: FVU at infinite width."""
    linear_level: float
    """Mean over the curve's widths of FVU(x, x̂ + x W_vec) (the original's "average")."""
    pursuit: np.ndarray | None
    """Gradient-pursuit FVUs interpolated to ``widths`` (held constant beyond the last), or None."""
    absent_features: np.ndarray
    linear_error: float
    encoder_error: np.ndarray | None
    nonlinear_error: np.ndarray


def pursuit_power_law(records: Sequence[dict[str, Any]]) -> PowerLawFit | None:
    """Fig 10a's fit of the gradient-pursuit FVU over width (records of the width sweep's
    ``pursuit.json``), or ``None``, with a warning, when fewer than 3 widths allow no fit."""
    try:
        return fit_power_law([r["width"] for r in records], [r["pursuit_fvu"] for r in records])
    except ScalingError as err:
        log.warning("no power-law fit of the pursuit FVU: %s", err)
        return None


def breakdown(
    fit: PowerLawFit,
    curve_widths: Sequence[float] | np.ndarray,
    nonlinear_fvus: Sequence[float],
    widths: Sequence[float] | None = None,
    pursuit_fvus: Sequence[float] | None = None,
) -> Breakdown:
    """Areas of Fig 1 at ``widths`` (default: the curve's widths)."""
    curve = np.asarray(curve_widths, dtype=np.float64)
    W = curve if widths is None else np.asarray(widths, dtype=np.float64)
    fitted = fit(W)
    level = float(np.mean(nonlinear_fvus))
    pursuit = None
    if pursuit_fvus is not None:
        order = np.argsort(curve)
        # Linear in log width between the points, constant beyond them (np.interp clamps).
        pursuit = np.interp(
            np.log(W),
            np.log(curve[order]),
            np.asarray(pursuit_fvus, dtype=np.float64)[order],
        )
    floor = pursuit if pursuit is not None else np.full_like(W, level)
    return Breakdown(
        widths=W,
        fitted=fitted,
        asymptote=fit.c,
        linear_level=level,
        pursuit=pursuit,
        absent_features=fitted - fit.c,
        linear_error=fit.c - level,
        encoder_error=None if pursuit is None else level - pursuit,
        nonlinear_error=floor,
    )


class ContourGrid(NamedTuple):
    widths: np.ndarray
    """[n] grid of widths (log-spaced)."""
    l0s: np.ndarray
    """[n] grid of L0s (log-spaced)."""
    values: np.ndarray
    """[n, n] interpolated values (rows: L0, columns: width); NaN outside the points' hull."""


def contour_grid(
    widths: Sequence[float], l0s: Sequence[float], values: Sequence[float], n: int = 100
) -> ContourGrid:
    """``scipy.interpolate.griddata`` (linear) on an n×n grid over log width and log L0, as the
    original's contours."""
    from scipy.interpolate import griddata

    lw = np.log(np.asarray(widths, dtype=np.float64))
    ll = np.log(np.asarray(l0s, dtype=np.float64))
    if len(lw) < 3:
        raise ScalingError(f"a contour needs at least 3 (width, L0) points; got {len(lw)}")
    gw = np.linspace(lw.min(), lw.max(), n)
    gl = np.linspace(ll.min(), ll.max(), n)
    mesh_w, mesh_l = np.meshgrid(gw, gl)
    points = np.column_stack([lw, ll])
    try:
        grid = griddata(points, np.asarray(values, dtype=np.float64), (mesh_w, mesh_l), "linear")
    except Exception:  # degenerate hull (e.g. one k): fall back to nearest
        grid = griddata(points, np.asarray(values, dtype=np.float64), (mesh_w, mesh_l), "nearest")
    return ContourGrid(np.exp(gw), np.exp(gl), grid)


def scaling_summary(
    rows: list[dict[str, Any]], curve_k: int | None, pursuit: dict[str, dict] | None = None
) -> dict[str, Any]:
    """Everything the scaling figures draw, from the per-SAE ``regression.json`` rows (each with
    name, width, k, l0_mean, fvu, nonlinear_error_fvu, r2_vector, r2_norm)."""
    curve = curve_points(rows, curve_k)
    widths = [r["width"] for r in curve]
    fvus = [r["fvu"] for r in curve]
    nonlinear = [r["nonlinear_error_fvu"] for r in curve]
    fit = fit_power_law(widths, fvus)
    pursuit_fvus, pursuit_key = None, None
    paired = ("encoder_nonlinear_error_fvu", "pursuit_nonlinear_error_fvu")
    if pursuit and all(all(key in pursuit[r["name"]] for key in paired) for r in curve):
        # The encoder-error area is what pursuit removes from the nonlinear error, measured on
        # pursuit's own tokens and fit for both encoders (its absolute levels come from a smaller
        # fit than the regression's, so they are not comparable with ``nonlinear`` directly).
        pursuit_key = "nonlinear_error_fvu - (encoder - pursuit nonlinear error fvu)"
        level = float(np.mean(nonlinear))
        pursuit_fvus = [
            level - (float(pursuit[r["name"]][paired[0]]) - float(pursuit[r["name"]][paired[1]]))
            for r in curve
        ]
    elif pursuit:
        pursuit_key = "pursuit_fvu"
        pursuit_fvus = [float(pursuit[r["name"]][pursuit_key]) for r in curve]
    parts = breakdown(fit, widths, nonlinear, pursuit_fvus=pursuit_fvus)
    return {
        "saes": rows,
        "curve": [r["name"] for r in curve],
        "curve_k": curve[0]["k"],
        "curve_widths": widths,
        "curve_fvu": fvus,
        "curve_nonlinear_fvu": nonlinear,
        "curve_pursuit_fvu": pursuit_fvus,
        "pursuit_key": pursuit_key,
        "power_law": fit._asdict(),
        "breakdown_at_widest": {
            "width": widths[-1],
            "fvu": fvus[-1],
            "absent_features": float(parts.absent_features[-1]),
            "linear_error": parts.linear_error,
            "encoder_error": None
            if parts.encoder_error is None
            else float(parts.encoder_error[-1]),
            "nonlinear_error": float(parts.nonlinear_error[-1]),
        },
        "fvu_falls_with_width": bool(np.all(np.diff(fvus) < 0)),
    }


def fit_from_summary(summary: dict[str, Any]) -> PowerLawFit:
    values = dict(summary["power_law"])
    for key in ("c_ci", "a_ci", "m_ci"):
        values[key] = tuple(math.nan if v is None else float(v) for v in values[key])
    return PowerLawFit(**values)


def scaling_series(summary: dict[str, Any], n_grid: int = 200) -> dict[str, np.ndarray]:
    """The series the scaling figures draw (Figs 1, 2, 3, 11), from a scaling summary as
    written to ``scaling.json``: the breakdown on a log grid from the narrowest width to 10x the
    widest (``grid``, ``fitted``, ``asymptote``, ``linear_level``, ``linear_error``, and with
    pursuit ``pursuit`` and ``encoder_error``), and per contour value (``r2_norm``,
    ``r2_vector``, ``nonlinear_error_fvu``) its :func:`contour_grid` as
    ``contour_{key}_{widths,l0s,values}`` when the sweep has 3 SAEs or more."""
    fit = fit_from_summary(summary)
    widths = np.asarray(summary["curve_widths"], dtype=float)
    grid = np.geomspace(widths.min(), widths.max() * 10, n_grid)
    pursuit = summary.get("curve_pursuit_fvu")
    parts = breakdown(fit, widths, summary["curve_nonlinear_fvu"], grid, pursuit)
    series = {
        "grid": grid,
        "fitted": parts.fitted,
        "asymptote": np.float64(parts.asymptote),
        "linear_level": np.float64(parts.linear_level),
        "linear_error": np.float64(parts.linear_error),
    }
    if parts.pursuit is not None:
        series["pursuit"] = parts.pursuit
        series["encoder_error"] = parts.encoder_error
    rows = summary["saes"]
    if len(rows) >= 3:
        sae_widths = [r["width"] for r in rows]
        l0s = [max(r["l0_mean"], 1e-3) for r in rows]
        for key in ("r2_norm", "r2_vector", "nonlinear_error_fvu"):
            contour = contour_grid(sae_widths, l0s, [r[key] for r in rows])
            for field, values in contour._asdict().items():
                series[f"contour_{key}_{field}"] = values
    return series


def pursuit_breakdown(
    width_records: Sequence[dict[str, Any]],
    k_records: Sequence[dict[str, Any]] | None = None,
    n_grid: int = 200,
) -> dict[str, Any]:
    """What Fig 10a draws, from ``pursuit.json`` records: the width sweep's records (widths
    ascending), the k sweep's (k ascending; None with fewer than two), the power-law fit of the
    pursuit FVU (:func:`pursuit_power_law`, None below 3 widths) and the fit on a log grid from
    the narrowest width to 10x the widest (``grid``, ``fit_curve``)."""
    records = sorted(width_records, key=lambda r: r["width"])
    widths = np.asarray([r["width"] for r in records], dtype=float)
    grid = np.geomspace(widths.min(), widths.max() * 10, n_grid)
    fit = pursuit_power_law(records)
    k_records = (
        sorted(k_records, key=lambda r: r["k"]) if k_records and len(k_records) > 1 else None
    )
    return {
        "width_records": records,
        "k_records": k_records,
        "fit": None if fit is None else fit._asdict(),
        "grid": grid,
        "fit_curve": None if fit is None else fit(grid),
    }
