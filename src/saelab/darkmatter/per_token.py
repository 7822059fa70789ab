"""Per-token analyses across widths (methods.md §5.4, ``sae_power_laws_per_token.py``).

For the width curve's SAEs (same tokens, widths ascending): the L2 norms (not squared) of the
error, its linear part x·W_vec and its nonlinear part; the cross-width predictability of error
norms (R² of ‖e_j‖ from [‖e_i‖, 1], and the share of the remaining variance that adding
‖nonlinear_i‖ explains), all on held-out tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from saelab.darkmatter.info import SAEInfo
from saelab.darkmatter.regression import ErrorParts, Regression, heldout_r2, shuffled_split


class ErrorNorms(NamedTuple):
    """[n_saes, N] L2 norms per SAE (rows) and token (columns)."""

    total: np.ndarray
    linear: np.ndarray
    nonlinear: np.ndarray


def error_norms(infos: Sequence[SAEInfo], regs: Sequence[Regression]) -> ErrorNorms:
    """Norms of error, linear error and nonlinear error of every SAE on the same tokens."""
    rows = infos[0].rows
    for info in infos[1:]:
        if not np.array_equal(info.rows, rows):
            raise ValueError(
                "the SAEs' info groups hold different tokens; rebuild them with one window"
            )
    total, lin, nonlin = [], [], []
    for info, reg in zip(infos, regs, strict=True):
        parts = ErrorParts.of_info(info, reg)
        total.append(np.linalg.norm(parts.error, axis=1))
        lin.append(np.linalg.norm(parts.linear, axis=1))
        nonlin.append(np.linalg.norm(parts.nonlinear, axis=1))
    return ErrorNorms(np.array(total), np.array(lin), np.array(nonlin))


class CrossWidth(NamedTuple):
    r2_basic: np.ndarray
    """[n, n]: R² of ‖e_j‖ (column) from [‖e_i‖ (row), 1], held out; NaN below the diagonal."""
    r2_with_nonlinear: np.ndarray
    """[n, n]: the same from [‖e_i‖, ‖nonlinear_i‖, 1]."""
    extra_percent: np.ndarray
    """[n, n]: (R²_+nl − R²_basic) / (1 − R²_basic) · 100."""


def cross_width_predictability(
    norms: ErrorNorms, seed: int = 0, train_fraction: float = 0.5
) -> CrossWidth:
    """Upper triangle (i < j, narrower predicts wider) of the original's two heatmaps."""
    n = len(norms.total)
    split = shuffled_split(norms.total.shape[1], seed, train_fraction)
    basic = np.full((n, n), np.nan)
    plus = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(i + 1, n):
            y = norms.total[j]
            basic[i, j] = heldout_r2(norms.total[i][:, None], y, split, intercept=True).r2
            X = np.column_stack([norms.total[i], norms.nonlinear[i]])
            plus[i, j] = heldout_r2(X, y, split, intercept=True).r2
    with np.errstate(invalid="ignore", divide="ignore"):
        extra = (plus - basic) / (1 - basic) * 100
    return CrossWidth(basic, plus, extra)
