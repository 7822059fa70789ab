"""Seed 001's feature metrics (``a1842806/matryoshka_transcoder`` ``evaluate_features.py``,
methods.md §3.3), named ``seed001_*``: NOT the SAEBench metrics of the same names."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.saes.base import SAE, SparseCodes
from saelab.sparsity import dead_per_group


class LatentPair(NamedTuple):
    i: int
    j: int
    cosine: float


class Seed001Absorption(NamedTuple):
    score: float
    """Fraction of unordered latent pairs (i < j) with decoder cosine > threshold."""
    n_pairs_above: int
    n_pairs: int
    top_pairs: list[LatentPair]
    """The most similar pairs, highest cosine first."""


@torch.no_grad()
def seed001_absorption_score(
    W_dec: Tensor, threshold: float = 0.9, chunk_size: int = 2048, top_k: int = 10
) -> Seed001Absorption:
    """Seed 001's "absorption score": the fraction of the D(D−1)/2 pairs of unit-normalised
    decoder rows with cosine > ``threshold`` (0.9), computed in row chunks; plus the top pairs.

    A decoder-geometry number (near-duplicate latents), unrelated to SAEBench's absorption.
    """
    W = F.normalize(W_dec.detach().float().cpu(), dim=1)
    D = W.shape[0]
    above = 0
    best_vals = torch.empty(0)
    best_idx = torch.empty(0, dtype=torch.long)
    for lo in range(0, D, chunk_size):
        hi = min(lo + chunk_size, D)
        sims = W[lo:hi] @ W.T
        upper = torch.arange(D)[None, :] > torch.arange(lo, hi)[:, None]  # j > i
        sims = sims.masked_fill(~upper, float("-inf"))
        above += int((sims > threshold).sum())
        k = min(top_k, int(upper.sum()))
        if k:
            vals, flat = sims.flatten().topk(k)
            best_vals = torch.cat([best_vals, vals])
            best_idx = torch.cat([best_idx, flat + lo * D])
            keep = best_vals.topk(min(top_k, len(best_vals))).indices
            best_vals, best_idx = best_vals[keep], best_idx[keep]
    order = torch.argsort(best_vals, descending=True)
    pairs = [
        LatentPair(int(best_idx[o]) // D, int(best_idx[o]) % D, float(best_vals[o])) for o in order
    ]
    n_pairs = D * (D - 1) // 2
    return Seed001Absorption(above / max(1, n_pairs), above, n_pairs, pairs)


class Seed001Splitting(NamedTuple):
    score: float
    """Fraction of unordered latent pairs co-active on more than ``threshold`` of the tokens."""
    n_pairs_above: int
    n_pairs: int
    n_candidate_latents: int
    """Latents active on more than ``threshold`` of tokens: only their pairs can qualify."""


@torch.no_grad()
def seed001_splitting_score(codes: SparseCodes, threshold: float = 0.5) -> Seed001Splitting:
    """Seed 001's "splitting score": with c_ij = #tokens where latents i and j both fire / N,
    the fraction of the D(D−1)/2 pairs with c_ij > ``threshold`` (0.5).

    Exact without a dense N×D matrix: c_ij ≤ min(freq_i, freq_j), so only latents firing on
    more than ``threshold`` of the tokens can be in a qualifying pair; their co-occurrence is
    counted from the sparse codes.
    """
    N, D = codes.n_rows, codes.width
    n_pairs = D * (D - 1) // 2
    counts = torch.bincount(codes.latents.long(), minlength=D)
    candidates = torch.nonzero(counts > threshold * N).flatten()
    above = 0
    if len(candidates) > 1:
        pos = torch.full((D,), -1, dtype=torch.long)
        pos[candidates] = torch.arange(len(candidates))
        keep = pos[codes.latents.long()] >= 0
        fired = torch.zeros(N, len(candidates))
        fired[codes.rows.long()[keep], pos[codes.latents.long()[keep]]] = 1.0
        co = fired.T @ fired / N
        iu = torch.triu_indices(len(candidates), len(candidates), offset=1)
        above = int((co[iu[0], iu[1]] > threshold).sum())
    return Seed001Splitting(above / max(1, n_pairs), above, n_pairs, len(candidates))


class Seed001Monosemanticity(NamedTuple):
    mean: float
    median: float
    per_latent: Tensor
    """Score of every latent [width] (dead latents score 1: freq 0, entropy 0)."""


@torch.no_grad()
def seed001_monosemanticity(
    codes: SparseCodes, bins: int = 50, min_count: int = 10
) -> Seed001Monosemanticity:
    """Seed 001's per-latent monosemanticity: ((1 − freq_i) + 1/(1 + H_i)) / 2.

    freq_i = fraction of tokens where latent i fires. H_i = Shannon entropy (nats, scipy
    ``entropy``, which renormalises) of ``np.histogram(values, bins=50, density=True)[0] +
    1e-10`` over latent i's positive values, if it has more than ``min_count`` (10) of them,
    else 0. Binning is vectorised over latents and matches np.histogram (equal bins over
    [min, max], last bin closed; a constant latent falls in the middle bin of [v − ½, v + ½]).
    """
    D = codes.width
    latents = codes.latents.long()
    values = codes.values.double()
    counts = torch.bincount(latents, minlength=D)
    freq = counts.double() / max(1, codes.n_rows)
    entropy = torch.zeros(D, dtype=torch.float64)
    use = counts > min_count
    if bool(use.any()):
        sel = use[latents]
        lat, val = latents[sel], values[sel]
        lo = torch.full((D,), float("inf"), dtype=torch.float64).scatter_reduce(0, lat, val, "amin")
        hi = torch.full((D,), float("-inf"), dtype=torch.float64).scatter_reduce(
            0, lat, val, "amax"
        )
        flat = lo == hi
        lo = torch.where(flat, lo - 0.5, lo)
        hi = torch.where(flat, hi + 0.5, hi)
        idx = _histogram_bins(val, lo[lat], hi[lat], bins)
        hist = torch.bincount(lat * bins + idx, minlength=D * bins).reshape(D, bins).double()
        width = ((hi - lo) / bins).nan_to_num(1.0, posinf=1.0, neginf=1.0)
        density = hist / (counts.double().clamp_min(1) * width)[:, None]
        p = density + 1e-10
        p = p / p.sum(dim=1, keepdim=True)
        h = -(p * p.log()).sum(dim=1)
        entropy = torch.where(use, h, entropy)
    score = ((1 - freq) + 1 / (1 + entropy)) / 2
    return Seed001Monosemanticity(float(score.mean()), float(score.median()), score.float())


def _histogram_bins(val: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """Bin of each value in ``bins`` equal bins over [lo, hi] (per value), as np.histogram:
    scaled index, then corrected against the explicit edges; the top edge is in the last bin."""
    idx = ((val - lo) * (bins / (hi - lo))).floor().long().clamp(0, bins - 1)
    step = (hi - lo) / bins
    left = lo + idx * step
    right = torch.where(idx == bins - 1, hi, lo + (idx + 1) * step)
    idx = idx - (val < left).long()
    idx = idx + ((val >= right) & (idx < bins - 1)).long()
    return idx.clamp(0, bins - 1)


class GroupSeparation(NamedTuple):
    group: int
    within: float
    """Mean |cos| over all n_g² pairs of the group, with the diagonal subtracted (S − I)."""
    between_next: float | None
    """Mean |cos| between this group's and the next group's decoder rows."""
    separation_ratio: float | None
    """between_next / within."""


@torch.no_grad()
def seed001_hierarchy(
    W_dec: Tensor, group_bounds: list[tuple[int, int]], chunk_size: int = 2048
) -> list[GroupSeparation]:
    """Seed 001's hierarchical-structure metric per Matryoshka group, on unit decoder rows:
    within = mean |S_gg − I| over all entries, between = mean |S_g,g+1|, ratio = between/within.
    """
    W = F.normalize(W_dec.detach().float().cpu(), dim=1)

    def mean_abs(a: Tensor, b: Tensor, same: bool) -> float:
        total = 0.0
        for lo in range(0, a.shape[0], chunk_size):
            sims = a[lo : lo + chunk_size] @ b.T
            if same:
                rows = torch.arange(sims.shape[0])
                sims[rows, rows + lo] -= 1.0
            total += float(sims.abs().sum())
        return total / (a.shape[0] * b.shape[0])

    out = []
    for g, (lo, hi) in enumerate(group_bounds):
        within = mean_abs(W[lo:hi], W[lo:hi], same=True)
        between = ratio = None
        if g + 1 < len(group_bounds):
            nlo, nhi = group_bounds[g + 1]
            between = mean_abs(W[lo:hi], W[nlo:nhi], same=False)
            ratio = between / within if within > 0 else float("inf")
        out.append(GroupSeparation(g, within, between, ratio))
    return out


def seed001_metrics(
    sae: SAE, codes: SparseCodes, chunk_size: int = 2048, top_pairs: int = 10
) -> dict[str, Any]:
    """All of seed 001's feature metrics (methods.md §3.3) for ``sae`` on ``codes`` (all
    evaluated tokens): absorption, splitting, monosemanticity, hierarchy, dead per group."""
    absorption = seed001_absorption_score(sae.W_dec, chunk_size=chunk_size, top_k=top_pairs)
    splitting = seed001_splitting_score(codes)
    mono = seed001_monosemanticity(codes)
    counts = torch.bincount(codes.latents.long(), minlength=codes.width)
    bounds = getattr(sae, "group_bounds", None)
    out: dict[str, Any] = {
        "absorption_score": absorption.score,
        "absorption_pairs_above": absorption.n_pairs_above,
        "absorption_top_pairs": [p._asdict() for p in absorption.top_pairs],
        "splitting_score": splitting.score,
        "splitting_pairs_above": splitting.n_pairs_above,
        "monosemanticity_mean": mono.mean,
        "monosemanticity_median": mono.median,
        "dead_features": int((counts == 0).sum()),
        "hierarchy": None,
        "dead_per_group": None,
    }
    if bounds:
        out["hierarchy"] = [g._asdict() for g in seed001_hierarchy(sae.W_dec, bounds, chunk_size)]
        out["dead_per_group"] = dead_per_group(counts, bounds)
    return out
