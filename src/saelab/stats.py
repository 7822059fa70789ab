"""Bootstrap confidence intervals over independent units (contexts), shared by every analysis
that reports an interval (CE recovered and KL, the dark-matter downstream CE).

The percentile bootstrap: ``n_resamples`` resamples of the n units drawn with replacement by
``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))`` (the draw
``scipy.stats.bootstrap`` makes, so both give the same interval on the same data and seed), the
statistic evaluated on every resample at once, and the (1 − level)/2 and (1 + level)/2
percentiles of those values. Statistics that are ratios of sums over the units (a mean over
predictions, CE recovered) are resampled *paired*: every quantity of one resample uses the same
units, so their correlation (the clean, ablated and spliced CE of one context) is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

#: Resamples and level of every bootstrap interval unless a config says otherwise.
DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


class Interval(NamedTuple):
    """A two-sided interval and how it was made (JSON-ready through ``_asdict``)."""

    low: float
    high: float
    level: float
    method: str
    n_units: int
    n_resamples: int
    seed: int


def check_bootstrap_options(n_resamples: int, level: float) -> None:
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 100:
        raise ValueError(f"n_resamples {n_resamples!r} must be an integer >= 100")
    if not 0 < level < 1:
        raise ValueError(f"level {level!r} must be in (0, 1), e.g. 0.95")


def bootstrap_indices(n_units: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n_units] unit indices drawn with replacement (scipy.stats.bootstrap's draw)."""
    if n_units < 2:
        raise ValueError(f"a bootstrap over units needs at least 2 units; got {n_units}")
    return np.random.default_rng(seed).integers(0, n_units, (n_resamples, n_units))


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``values`` (NaN if any is NaN:
    a resample on which the statistic is undefined makes the interval undefined)."""
    alpha = (1 - level) / 2
    low, high = np.percentile(
        np.asarray(values, dtype=np.float64), [100 * alpha, 100 * (1 - alpha)]
    )
    return float(low), float(high)


def bootstrap_sums(
    per_unit: Mapping[str, np.ndarray],
    statistics: Mapping[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Interval]:
    """Percentile intervals of statistics of per-unit sums, paired over units.

    ``per_unit`` maps names to [n_units] arrays (e.g. a context's summed CE and its number of
    predictions); each statistic gets the same names mapped to [n_resamples] sums over one
    resample's units and returns [n_resamples] values (e.g. ``s["ce"] / s["n"]``).
    """
    check_bootstrap_options(n_resamples, level)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in per_unit.items()}
    sizes = {len(v) for v in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(
            f"per-unit arrays differ in length: { {k: len(v) for k, v in arrays.items()} }"
        )
    n_units = sizes.pop()
    index = bootstrap_indices(n_units, n_resamples, seed)
    sums = {k: v[index].sum(axis=1) for k, v in arrays.items()}
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, statistic in statistics.items():
            low, high = percentile_interval(statistic(sums), level)
            out[name] = Interval(
                low, high, level, "percentile bootstrap over contexts", n_units, n_resamples, seed
            )
    return out


def ratio_score(worse, patched, clean):
    """(worse − patched) / (worse − clean), elementwise (NaN where worse == clean)."""
    worse, patched, clean = (np.asarray(v, dtype=np.float64) for v in (worse, patched, clean))
    denom = worse - clean
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom != 0, (worse - patched) / np.where(denom != 0, denom, 1), np.nan)


def interval_table(found: Mapping[str, Interval]) -> dict:
    """``{statistic: [low, high]}`` plus ``"_method"`` (how, level, resamples, seed, units): the
    JSON form every analysis writes."""
    first = next(iter(found.values()))
    out: dict = {name: [iv.low, iv.high] for name, iv in found.items()}
    out["_method"] = {
        "method": first.method, "level": first.level, "n_resamples": first.n_resamples,
        "seed": first.seed, "n_contexts": first.n_units,
    }  # fmt: skip
    return out
