"""Linear predictability of SAE error (methods.md §5.2): the core regression.

The original's ``run_lstsq``: shuffle the rows, fit a least-squares map with **no intercept** on
the first part, and report R² on the rest as the **mean over output dimensions** of
1 − SSE_j/SST_j (SST about each column's mean). Here the split is seeded and by fraction (the
original took 150k train / the next 150k test tokens of 300k, an unseeded torch permutation).

``norm_intercept=True`` (an option, not the original) appends a ones column to x in the *norm*
fit only, stored as ``b_norm`` (0 without it); the vector fit never has one, so the linear error
is always x @ W_vec. The original needs no intercept because a large LM's residual stream has a
big constant component that acts as one; a small model's does not, and there a no-intercept fit
of the (positive) squared norm can score R² < 0.

Two targets, both from x:
* vector: error = x − x̂ (d outputs): ``W_vec`` with x @ W_vec ≈ error;
* norm: ‖x − x̂‖² (**squared**, as the original): ``w_norm`` with x @ w_norm ≈ ‖error‖².

The *linear error* is x @ W_vec, the *nonlinear error* error − x @ W_vec. FVUs are
per-dimension-centred (:func:`saelab.metrics.fvu_dim_centred_np`): ``fvu`` = FVU(x, x̂),
``nonlinear_error_fvu`` = FVU(x, x̂ + x W_vec) (what is left after adding the linear prediction;
like the original, over all window tokens with W_vec fitted on the training half), and
``linear_error_fvu`` = fvu − nonlinear_error_fvu (the part the linear prediction removes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from saelab.darkmatter.info import SAEInfo
from saelab.metrics import fvu_dim_centred_np
from saelab.runtime import savez_atomic, write_json_atomic


class Split(NamedTuple):
    train_idx: np.ndarray
    """Rows the map is fitted on (int64)."""
    test_idx: np.ndarray
    """Held-out rows R² is measured on (int64)."""


def shuffled_split(n: int, seed: int = 0, train_fraction: float = 0.5) -> Split:
    """A seeded permutation of ``range(n)`` cut into a training and a held-out part."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction {train_fraction} must be in (0, 1)")
    n_train = round(n * train_fraction)
    if n_train < 1 or n_train >= n:
        raise ValueError(f"{n} rows cannot be split {train_fraction}:{1 - train_fraction}")
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return Split(np.sort(perm[:n_train]), np.sort(perm[n_train:]))


def lstsq(X: np.ndarray, Y: np.ndarray, intercept: bool = False) -> np.ndarray:
    """argmin_W ‖X W − Y‖² in float64 (minimum-norm when X is numerically rank deficient).

    With ``intercept`` a ones column is appended to X and W has one more row (the bias, last).
    """
    X = np.asarray(X, dtype=np.float64)
    if intercept:
        X = np.hstack([X, np.ones((len(X), 1))])
    Y = np.asarray(Y, dtype=np.float64)
    if len(X) != len(Y):
        raise ValueError(f"X has {len(X)} rows but Y has {len(Y)}")
    # Singular values below 1e-6 of the largest are treated as zero: the inputs are float32 (or
    # float16) values, so directions that small are rounding noise. SAE reconstructions with
    # many dead latents are nearly rank deficient, and numpy's default cutoff (~1e-13) let
    # such noise directions blow held-out predictions up by orders of magnitude.
    return np.linalg.lstsq(X, Y, rcond=1e-6)[0]


def predict(X: np.ndarray, W: np.ndarray, intercept: bool = False) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if intercept:
        return X @ W[:-1] + W[-1]
    return X @ W


def r2_mean_over_dims(Y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over output columns of 1 − SSE_j/SST_j (``run_lstsq``'s R²); a 1-d Y is one column.
    Columns constant over the rows (SST_j = 0) are left out."""
    Y = np.asarray(Y, dtype=np.float64).reshape(len(Y), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(Y), -1)
    sse = np.square(Y - pred).sum(0)
    sst = np.square(Y - Y.mean(0)).sum(0)
    keep = sst > 0
    if not keep.any():
        return float("nan")
    return float(1 - (sse[keep] / sst[keep]).mean())


class HeldoutFit(NamedTuple):
    W: np.ndarray
    r2: float
    """Held-out R² (mean over output dimensions)."""


def heldout_r2(X: np.ndarray, Y: np.ndarray, split: Split, intercept: bool = False) -> HeldoutFit:
    """Fit on ``split.train_idx``, R² on ``split.test_idx``."""
    W = lstsq(X[split.train_idx], Y[split.train_idx], intercept)
    return HeldoutFit(
        W, r2_mean_over_dims(Y[split.test_idx], predict(X[split.test_idx], W, intercept))
    )


class Regression(NamedTuple):
    """The core regression of one SAE."""

    W_vec: np.ndarray
    """[d, d] float32: x @ W_vec ≈ error."""
    w_norm: np.ndarray
    """[d] float32: x @ w_norm ≈ ‖error‖²."""
    b_norm: float
    """Intercept of the norm fit (0 without ``norm_intercept``)."""
    train_idx: np.ndarray
    test_idx: np.ndarray
    metrics: dict[str, Any]
    """r2_vector, r2_norm, fvu, nonlinear_error_fvu, linear_error_fvu (+ held-out variants)."""


def fit_regression(
    info: SAEInfo, seed: int = 0, train_fraction: float = 0.5, norm_intercept: bool = False
) -> Regression:
    """Both fits of §5.2 on one SAE's window, with R² on the held-out part."""
    split = shuffled_split(len(info.x), seed, train_fraction)
    x = info.x.astype(np.float64)
    W_vec = lstsq(x[split.train_idx], info.error[split.train_idx])
    w_norm = lstsq(x[split.train_idx], info.error_sq_norm[split.train_idx], norm_intercept)
    b_norm = float(w_norm[-1]) if norm_intercept else 0.0
    w_norm = w_norm[:-1] if norm_intercept else w_norm
    test = split.test_idx
    r2_vector = r2_mean_over_dims(info.error[test], x[test] @ W_vec)
    r2_norm = r2_mean_over_dims(info.error_sq_norm[test], x[test] @ w_norm + b_norm)
    linear = ErrorParts.of_info(info, W_vec).linear
    with_linear = info.x_hat + linear
    total = fvu_dim_centred_np(info.x, info.x_hat)
    nonlinear = fvu_dim_centred_np(info.x, with_linear)
    metrics = {
        "sae": info.attrs.get("sae"),
        "width": info.attrs.get("width"),
        "k": info.attrs.get("k"),
        "n_tokens": len(info.x),
        "n_train": len(split.train_idx),
        "n_test": len(test),
        "seed": seed,
        "norm_intercept": norm_intercept,
        "l0_mean": float(info.l0.mean()),
        "r2_vector": r2_vector,
        "r2_norm": r2_norm,
        "fvu": total,
        "nonlinear_error_fvu": nonlinear,
        "linear_error_fvu": total - nonlinear,
        "fvu_test": fvu_dim_centred_np(info.x[test], info.x_hat[test]),
        "nonlinear_error_fvu_test": fvu_dim_centred_np(info.x[test], with_linear[test]),
        "error_sq_norm_mean": float(info.error_sq_norm.mean()),
        "linear_error_sq_norm_mean": float(np.square(linear, dtype=np.float64).sum(1).mean()),
    }
    return Regression(
        W_vec.astype(np.float32), w_norm.astype(np.float32), b_norm,
        split.train_idx, split.test_idx, metrics,
    )  # fmt: skip


class ErrorParts(NamedTuple):
    """The SAE error and its linear and nonlinear parts, [N, d] each (numpy or torch).

    ``error`` = x − x̂, ``linear`` = x W_vec (what x predicts linearly), ``nonlinear`` =
    error − linear. Every dark-matter analysis reads its parts from here: build them once with
    :meth:`of_info` (an SAE's info group and its regression) or :meth:`of` (any x, x̂, W_vec).
    """

    error: Any
    linear: Any
    nonlinear: Any

    @classmethod
    def of(cls, x, x_hat, W_vec) -> ErrorParts:
        """The parts of ``x`` and ``x_hat`` [N, d] under ``W_vec`` [d, d], computed in the
        inputs' own type and dtype (numpy float64 for exact tables, torch float32 on the
        SAE's device for training targets and splices)."""
        error = x - x_hat
        linear = x @ W_vec
        return cls(error, linear, error - linear)

    @classmethod
    def of_info(
        cls, info: SAEInfo, reg: Regression | Mapping[str, np.ndarray] | np.ndarray
    ) -> ErrorParts:
        """The parts over an info group's window, float32 like the group: ``error`` is the
        stored one and ``linear`` = x @ W_vec computed in float64 (``reg``: a
        :class:`Regression`, the arrays of ``regression.npz`` or W_vec itself)."""
        if isinstance(reg, np.ndarray):
            W_vec = reg
        else:
            W_vec = reg["W_vec"] if isinstance(reg, Mapping) else reg.W_vec
        linear = (info.x.astype(np.float64) @ W_vec.astype(np.float64)).astype(np.float32)
        return cls(info.error, linear, info.error - linear)


def write_regression(
    reg: Regression, npz_path: str | os.PathLike, json_path: str | os.PathLike
) -> None:
    """``regression.npz`` (W_vec, w_norm, train_idx, test_idx) and ``regression.json``, each
    written under a temporary name and renamed."""
    savez_atomic(npz_path, {
        "W_vec": reg.W_vec, "w_norm": reg.w_norm, "b_norm": np.float64(reg.b_norm),
        "train_idx": reg.train_idx, "test_idx": reg.test_idx,
    })  # fmt: skip
    write_json_atomic(reg.metrics, json_path)


def load_regression(
    npz_path: str | os.PathLike, json_path: str | os.PathLike | None = None
) -> Regression:
    """Read what :func:`write_regression` wrote (metrics from ``regression.json`` beside it)."""
    npz_path = Path(npz_path)
    json_path = Path(json_path) if json_path else npz_path.with_suffix(".json")
    with np.load(npz_path) as data:
        arrays = {key: data[key] for key in ("W_vec", "w_norm", "train_idx", "test_idx")}
        arrays["b_norm"] = float(data["b_norm"]) if "b_norm" in data else 0.0
    metrics = json.loads(json_path.read_text()) if json_path.exists() else {}
    return Regression(**arrays, metrics=metrics)
