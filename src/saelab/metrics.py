"""FVU (fraction of variance unexplained): three named definitions over one accumulator.

The one place FVU is computed. Every caller names its definition (:data:`FVU_DEFINITIONS`):

* ``element_global`` (seed 001, the training loop's batch number): MSE over all elements /
  the unbiased variance of all elements about one scalar mean;
* ``dim_centred`` (the dark-matter paper's, the default): Σ SSE / Σ_d Σ_t (y_td − mean_d)²,
  1 − SAEBench's ``explained_variance``; the error SAEs' training loss;
* ``mean_r2``: 1 − the mean over dimensions of the per-dimension R².

One-shot on tensors (:func:`fvu`, differentiable: the error SAEs train on it), streamed exactly
over many batches (:class:`FVUAccumulator`, which the held-out evaluation of the trainer and
:func:`saelab.evaluate.evaluate_sae` share), and ``dim_centred`` on numpy arrays
(:func:`fvu_dim_centred_np`, for the dark-matter rules that read info groups without torch).
Output keys name their definition: :func:`fvu_key` (``fvu_element_global``, ...).

torch is imported where tensors are made, so numpy-only readers import this module without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor


def _rows(t: Tensor) -> Tensor:
    """``t`` as [N, d] in at least float32."""
    import torch

    return t.reshape(-1, t.shape[-1]).to(torch.promote_types(t.dtype, torch.float32))


def fvu_element_global(target: Tensor, recon: Tensor, floor: float | None = None) -> Tensor:
    """Seed 001's FVU (``compute_fvu``): mean_all((y − ŷ)²) / var_all(y).

    ``var_all`` is the unbiased variance of all N·d elements flattened, about ONE scalar mean
    (not per-dimension means). The seed adds 1e-8 to the denominator; by default this does not
    (a constant target gives inf or nan); ``floor`` clamps the denominator from below.
    """
    y = _rows(target)
    err = y - _rows(recon)
    var = y.var()
    return err.pow(2).mean() / (var if floor is None else var.clamp_min(floor))


def fvu_dim_centred(target: Tensor, recon: Tensor, floor: float | None = None) -> Tensor:
    """The dark-matter paper's FVU (the default): Σ_{t,d} (y − ŷ)² / Σ_d Σ_t (y_td − mean_d)².

    Each dimension is centred on its own mean over the N tokens; sums run over everything.
    Equals 1 − SAEBench's ``explained_variance``. ``floor`` clamps the denominator from below.
    """
    y = _rows(target)
    err = y - _rows(recon)
    ss = (y - y.mean(dim=0)).pow(2).sum()
    return err.pow(2).sum() / (ss if floor is None else ss.clamp_min(floor))


def fvu_mean_r2(target: Tensor, recon: Tensor) -> Tensor:
    """1 − the mean over dimensions of the per-dimension R² (dark matter's ``run_lstsq``).

    Per dimension d: R²_d = 1 − SSE_d / SST_d with SST_d about that dimension's mean, so this
    is mean_d(SSE_d / SST_d). Dimensions with SST_d = 0 (constant over the tokens) are left
    out of the mean.
    """
    y = _rows(target)
    sse = (y - _rows(recon)).pow(2).sum(dim=0)
    sst = (y - y.mean(dim=0)).pow(2).sum(dim=0)
    keep = sst > 0
    return (sse[keep] / sst[keep]).mean()


def fvu_dim_centred_np(x: np.ndarray, recon: np.ndarray) -> float:
    """:func:`fvu_dim_centred` of numpy arrays [N, d], in float64 (a test checks they agree)."""
    x = np.asarray(x, dtype=np.float64)
    sse = np.square(x - np.asarray(recon, dtype=np.float64)).sum()
    return float(sse / np.square(x - x.mean(0)).sum())


#: FVU definitions by name; ``dim_centred`` is the default everywhere.
FVU_DEFINITIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "element_global": fvu_element_global,
    "dim_centred": fvu_dim_centred,
    "mean_r2": fvu_mean_r2,
}
DEFAULT_FVU = "dim_centred"


def check_definition(definition: str) -> None:
    """Raise a ValueError naming ``definition`` and the allowed ones unless it is known."""
    if definition not in FVU_DEFINITIONS:
        raise ValueError(
            f"unknown FVU definition {definition!r}; use one of {sorted(FVU_DEFINITIONS)} "
            "(element_global: seed 001; dim_centred: dark matter, the default; mean_r2: "
            "1 - mean per-dimension R²)"
        )


def fvu_key(definition: str) -> str:
    """The output key of a definition's value: ``fvu_element_global``, ``fvu_dim_centred``, ..."""
    check_definition(definition)
    return f"fvu_{definition}"


def fvu(target: Tensor, recon: Tensor, definition: str = DEFAULT_FVU) -> Tensor:
    """FVU of ``recon`` against ``target`` ([..., d]) under the named definition."""
    check_definition(definition)
    return FVU_DEFINITIONS[definition](target, recon)


class FVUStats(NamedTuple):
    """Sufficient statistics of every FVU definition, per dimension (float64)."""

    n: int
    """Tokens seen."""
    mean: Tensor
    """Per-dimension mean of the target [d]."""
    m2: Tensor
    """Per-dimension sum of squares about that mean [d] (SST_d)."""
    sse: Tensor
    """Per-dimension sum of squared errors [d]."""


def fvu_from_stats(stats: FVUStats, definition: str = DEFAULT_FVU) -> float:
    """The named FVU from accumulated statistics (same formulas as the one-shot functions)."""
    check_definition(definition)
    n, mean, m2, sse = stats
    if n == 0:
        return float("nan")
    if definition == "dim_centred":
        return float(sse.sum() / m2.sum())
    if definition == "mean_r2":
        keep = m2 > 0
        return float((sse[keep] / m2[keep]).mean())
    # element_global: the SS about the global scalar mean, from per-dimension moments
    elements = n * mean.numel()
    grand = mean.mean()
    ss_global = m2.sum() + n * (mean - grand).pow(2).sum()
    return float((sse.sum() / elements) / (ss_global / (elements - 1)))


class FVUAccumulator:
    """Exact streaming FVU over many batches, for all definitions at once.

    Keeps per-dimension count, mean, centred sum of squares (merged with Chan et al.'s
    parallel formula, in float64, so large activation means do not cancel) and SSE.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None
        self.sse: Tensor | None = None

    def update(self, target: Tensor, recon: Tensor) -> None:
        import torch

        with torch.no_grad():
            y = target.reshape(-1, target.shape[-1]).double()
            err = (y - recon.reshape(y.shape).double()).pow(2).sum(dim=0)
            nb = y.shape[0]
            if nb == 0:
                return
            mb = y.mean(dim=0)
            m2b = (y - mb).pow(2).sum(dim=0)
            # mean, m2 and sse are set together: all None before the first non-empty batch.
            if self.mean is None or self.m2 is None or self.sse is None:
                self.n, self.mean, self.m2, self.sse = nb, mb, m2b, err
                return
            total = self.n + nb
            delta = mb - self.mean
            self.mean = self.mean + delta * (nb / total)
            self.m2 = self.m2 + m2b + delta.pow(2) * (self.n * nb / total)
            self.sse = self.sse + err
            self.n = total

    def stats(self) -> FVUStats:
        if self.mean is None or self.m2 is None or self.sse is None:
            import torch

            empty = torch.zeros(0, dtype=torch.float64)
            return FVUStats(0, empty, empty, empty)
        return FVUStats(self.n, self.mean.cpu(), self.m2.cpu(), self.sse.cpu())

    def result(self, definition: str = DEFAULT_FVU) -> float:
        return fvu_from_stats(self.stats(), definition)

    def results(self) -> dict[str, float]:
        """Every definition, keyed by :func:`fvu_key` (``fvu_element_global``, ...)."""
        return {fvu_key(name): self.result(name) for name in FVU_DEFINITIONS}

    def mse(self) -> float:
        """Mean squared error per element."""
        stats = self.stats()
        return float(stats.sse.sum() / max(1, stats.n * stats.sse.numel()))
