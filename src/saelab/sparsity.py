"""Sparsity of SAE codes: L0 mean and distribution, firing frequencies, dead and alive
latents (streamed, :class:`SparsityAccumulator`), dead latents per Matryoshka group."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from saelab.saes.base import SparseCodes


class SparsityStats(NamedTuple):
    n_tokens: int
    l0_mean: float
    l0_std: float
    l0_quantiles: dict[str, int]
    """L0 at the 1st, 10th, 50th, 90th and 99th percentiles (``p01`` ... ``p99``)."""
    l0_histogram: list[int]
    """Tokens with L0 = 0, 1, ..., max L0."""
    firing_counts: Tensor
    """Tokens on which each latent fired [width] (int64)."""
    frequencies: Tensor
    """firing_counts / n_tokens [width]."""
    n_dead: int
    """Latents that never fired over the evaluated tokens."""
    dead_fraction: float
    alive_fraction: float
    freq_over_1_percent: float
    """Fraction of latents firing on more than 1% of tokens (SAEBench)."""
    freq_over_10_percent: float


class SparsityAccumulator:
    """Streaming L0 histogram and per-latent firing counts."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.counts = torch.zeros(width, dtype=torch.long)
        self.l0_hist = torch.zeros(width + 1, dtype=torch.long)
        self.n = 0

    @torch.no_grad()
    def update(self, codes: SparseCodes) -> None:
        self.counts += torch.bincount(codes.latents.long().cpu(), minlength=self.width)
        l0 = torch.bincount(codes.rows.long().cpu(), minlength=codes.n_rows)
        self.l0_hist += torch.bincount(l0, minlength=self.width + 1)
        self.n += codes.n_rows

    def result(self) -> SparsityStats:
        n = max(1, self.n)
        values = torch.arange(self.width + 1, dtype=torch.float64)
        hist = self.l0_hist.double()
        mean = float((hist * values).sum() / n)
        std = float(((hist * (values - mean).pow(2)).sum() / n).sqrt())
        cum = torch.cumsum(self.l0_hist, 0)
        quantiles = {
            f"p{int(q * 100):02d}": int(torch.searchsorted(cum, math.ceil(q * self.n)).item())
            for q in (0.01, 0.1, 0.5, 0.9, 0.99)
        }
        nonzero = torch.nonzero(self.l0_hist).flatten()
        top = int(nonzero.max()) if len(nonzero) else 0
        freqs = self.counts.double() / n
        n_dead = int((self.counts == 0).sum())
        return SparsityStats(
            n_tokens=self.n,
            l0_mean=mean,
            l0_std=std,
            l0_quantiles=quantiles,
            l0_histogram=self.l0_hist[: top + 1].tolist(),
            firing_counts=self.counts.clone(),
            frequencies=freqs,
            n_dead=n_dead,
            dead_fraction=n_dead / self.width,
            alive_fraction=1 - n_dead / self.width,
            freq_over_1_percent=float((freqs > 0.01).double().mean()),
            freq_over_10_percent=float((freqs > 0.1).double().mean()),
        )


def dead_per_group(firing_counts: Tensor, group_bounds: list[tuple[int, int]]) -> list[int]:
    """Latents that never fired, per group ``[lo, hi)`` (Matryoshka groups)."""
    return [int((firing_counts[lo:hi] == 0).sum()) for lo, hi in group_bounds]
