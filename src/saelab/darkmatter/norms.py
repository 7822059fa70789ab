"""Norm prediction (Fig 7), its baselines (Fig 13) and latents against the norm probe (Fig 14).

* :func:`norm_prediction_r2`: held-out R² of predicting the squared norm of x, x̂, x̂ + nonlinear
  error, the SAE error, the linear error and the nonlinear error from x, no intercept
  (``norm_prediction_violin.py``; its label "Sae(x) − NonlinearError(x)" is wrong: the quantity
  is x̂ + nonlinear error).
* :func:`baseline_r2`: predicting the squared error norm from [x, 1], the token id (per-id mean
  fitted on the training half and scored on the held-out half by default; in-sample as the
  original with ``token_id_in_sample``), [model loss, 1], [L0, 1] and [‖x‖, 1]
  (``compare_norm_prediction_to_baselines.py``).
* :func:`probe_vs_latents`: a* = lstsq((x̂ − b_dec) → ‖x̂ − b_dec‖²); per latent, W_dec[i]·a*
  against its mean activation when active (``latent_activations_vs_probe_sim.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from saelab.darkmatter.info import SAEInfo
from saelab.darkmatter.regression import (
    ErrorParts,
    Regression,
    Split,
    heldout_r2,
    lstsq,
    predict,
)

#: Fig 7's quantities, in the original's order (its labels: saelab.plots.darkmatter.NORM_LABELS).
NORM_TARGETS = ("x", "sae", "sae_plus_nonlinear", "sae_error", "linear_error", "nonlinear_error")


def _sq(v: np.ndarray) -> np.ndarray:
    return np.square(v, dtype=np.float64).sum(1)


def norm_prediction_r2(
    info: SAEInfo, reg: Regression, split: Split, norm_intercept: bool = False
) -> dict[str, float]:
    """Held-out R² of each quantity's squared norm from x (no intercept, as the original,
    unless ``norm_intercept``)."""
    _, linear, nonlinear = ErrorParts.of_info(info, reg)
    targets = {
        "x": info.x_sq_norm.astype(np.float64),
        "sae": _sq(info.x_hat),
        "sae_plus_nonlinear": _sq(info.x_hat + nonlinear),
        "sae_error": info.error_sq_norm.astype(np.float64),
        "linear_error": _sq(linear),
        "nonlinear_error": _sq(nonlinear),
    }
    x = info.x.astype(np.float64)
    Y = np.column_stack([targets[name] for name in NORM_TARGETS])
    W = lstsq(x[split.train_idx], Y[split.train_idx], norm_intercept)
    pred = predict(x[split.test_idx], W, norm_intercept)
    out = {}
    for j, name in enumerate(NORM_TARGETS):
        y = Y[split.test_idx, j]
        out[name] = float(1 - np.square(y - pred[:, j]).sum() / np.square(y - y.mean()).sum())
    return out


def token_mean_prediction(token_ids: np.ndarray, y: np.ndarray, fit_idx: np.ndarray) -> np.ndarray:
    """Per-token-id mean of ``y`` over ``fit_idx`` for every row (ids unseen there get the
    overall mean)."""
    ids, inverse = np.unique(token_ids, return_inverse=True)
    sums = np.bincount(inverse[fit_idx], weights=y[fit_idx], minlength=len(ids))
    counts = np.bincount(inverse[fit_idx], minlength=len(ids))
    means = np.where(counts > 0, sums / np.maximum(counts, 1), y[fit_idx].mean())
    return means[inverse]


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1 - np.square(y - pred).sum() / np.square(y - y.mean()).sum())


def baseline_r2(
    info: SAEInfo,
    split: Split,
    token_loss: np.ndarray | None = None,
    token_id_in_sample: bool = False,
) -> dict[str, float]:
    """R² of the squared error norm from each predictor, all on the held-out half (the
    token-id mean in-sample, as the original, with ``token_id_in_sample``). ``token_loss`` [N]
    (NaN where unknown) adds the model-loss baseline on the tokens that have one."""
    y = info.error_sq_norm.astype(np.float64)
    test = split.test_idx
    out = {
        "x_affine": heldout_r2(info.x.astype(np.float64), y, split, intercept=True).r2,
        "l0": heldout_r2(info.l0[:, None].astype(np.float64), y, split, intercept=True).r2,
        "x_norm": heldout_r2(
            np.sqrt(info.x_sq_norm.astype(np.float64))[:, None], y, split, intercept=True
        ).r2,
    }
    if token_id_in_sample:
        out["token_id"] = _r2(y, token_mean_prediction(info.token_ids, y, np.arange(len(y))))
    else:
        out["token_id"] = _r2(
            y[test], token_mean_prediction(info.token_ids, y, split.train_idx)[test]
        )
    if token_loss is not None:
        known = np.isfinite(token_loss)
        train = split.train_idx[known[split.train_idx]]
        held = test[known[test]]
        if len(train) > 2 and len(held) > 2:
            sub = Split(train, held)
            out["model_loss"] = heldout_r2(token_loss[:, None], y, sub, intercept=True).r2
        else:
            out["model_loss"] = float("nan")
    return out


class ProbeComparison(NamedTuple):
    probe_r2: float
    """Held-out R² of the probe a* (no intercept)."""
    latents: np.ndarray
    """Latents that fired in the window, sorted by mean activation when active (descending)."""
    probe_dot: np.ndarray
    """W_dec[i] · a* for those latents."""
    mean_active: np.ndarray
    """Their mean activation when active."""
    correlation: float
    """Pearson correlation of the two."""


def latent_mean_when_active(info: SAEInfo, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per latent: mean activation when active (NaN if never) and firing count."""
    idx = info.latent_idx.reshape(-1)
    val = info.latent_val.reshape(-1)
    keep = idx >= 0
    counts = np.bincount(idx[keep], minlength=width)
    sums = np.bincount(idx[keep], weights=val[keep], minlength=width)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan), counts


def probe_vs_latents(
    info: SAEInfo, W_dec: np.ndarray, b_dec: np.ndarray, split: Split
) -> ProbeComparison:
    """Fit a* = lstsq((x̂ − b_dec) → ‖x̂ − b_dec‖²) and compare W_dec·a* with mean activations."""
    data = info.x_hat.astype(np.float64) - b_dec.astype(np.float64)
    y = _sq(data)
    fit = heldout_r2(data, y, split)
    probe = fit.W
    mean_active, _ = latent_mean_when_active(info, W_dec.shape[0])
    fired = np.flatnonzero(np.isfinite(mean_active))
    order = fired[np.argsort(-mean_active[fired], kind="stable")]
    dots = W_dec[order].astype(np.float64) @ probe
    acts = mean_active[order]
    corr = float(np.corrcoef(dots, acts)[0, 1]) if len(order) > 2 else float("nan")
    return ProbeComparison(fit.r2, order, dots, acts, corr)


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean over a sliding window of ``window`` (shrunk at the ends)."""
    values = np.asarray(values, dtype=np.float64)
    window = max(1, min(window, len(values)))
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    half = window // 2
    lo = np.clip(np.arange(len(values)) - half, 0, len(values))
    hi = np.clip(lo + window, 0, len(values))
    lo = np.clip(hi - window, 0, len(values))
    return (cumsum[hi] - cumsum[lo]) / (hi - lo)


def losses_for_rows(loss_rows: np.ndarray, losses: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The loss of each of ``rows`` from a (``loss_rows``, ``losses``) table; NaN where absent."""
    order = np.argsort(loss_rows)
    sorted_rows = loss_rows[order]
    pos = np.clip(np.searchsorted(sorted_rows, rows), 0, max(len(sorted_rows) - 1, 0))
    out = np.full(len(rows), np.nan)
    if len(sorted_rows):
        hit = sorted_rows[pos] == rows
        out[hit] = losses[order][pos[hit]]
    return out
