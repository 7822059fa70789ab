"""Evaluation of SAEs and transcoders: FVU, sparsity, CE loss recovered and KL, absorption.

Everything here is a plain function of tensors, an SAE and (for CE) a ``HookedTransformer``;
nothing imports Snakemake. The pieces:

* **FVU** of the three named definitions, streamed exactly (:mod:`saelab.metrics`).
* **Sparsity**: L0 mean and distribution, dead/alive latents, firing frequencies
  (:class:`SparsityAccumulator`); for Matryoshka SAEs the FVU of every nested prefix and the
  dead latents of every group.
* :func:`evaluate_sae`: all of the above in one streaming pass over held-out activations.
* :func:`ce_recovered`: next-token CE and KL with the SAE spliced into the model, against
  zero- and mean-ablation (SAEBench's core ``ce_loss_score`` / ``kl_div_score``), sharing the
  clean and ablation passes between SAEs at the same hook.
* Seed 001's feature metrics (``a1842806/matryoshka_transcoder`` ``evaluate_features.py``,
  methods.md §3.3), named ``seed001_*``: NOT the SAEBench metrics of the same names.
* :func:`first_letter_absorption`: a simplified SAEBench-style first-letter absorption rate
  on single-word tokens of the corpus.

An SAE is evaluated as it is spliced into a model: codes and reconstruction follow
``SAE.reconstruct`` exactly (eval mode: BatchTopK/Matryoshka use their threshold).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.metrics import DEFAULT_FVU, FVUAccumulator, check_definition
from saelab.runtime import write_json_atomic
from saelab.saes.base import SAE, SparseCodes

log = logging.getLogger("saelab.evaluate")

# =============================================================================================
# Codes and reconstructions as spliced
# =============================================================================================


class Reconstruction(NamedTuple):
    codes: SparseCodes
    output: Tensor
    """``sae.reconstruct(x)``, in the input's scale [B, d_out]."""
    prefix_outputs: list[Tensor] | None
    """Matryoshka: reconstruction with the first g groups + b_dec, for g = 1..G."""


@torch.no_grad()
def encode_reconstruct(sae: SAE, x: Tensor, prefixes: bool = False) -> Reconstruction:
    """Codes and reconstruction of ``x`` exactly as :meth:`SAE.reconstruct` computes them.

    Call with the SAE in eval mode. With ``prefixes`` and a Matryoshka SAE, also every nested
    prefix's reconstruction (first g groups + b_dec), de-normalised the same way.
    """
    xn, mean, std = sae._normalize(x)
    codes = sae.infer_codes(xn)

    def denormalize(out: Tensor) -> Tensor:
        return out * std + mean if mean is not None else out

    output = denormalize(sae.decode(codes))
    prefix_outputs = None
    if prefixes and hasattr(sae, "prefix_contributions"):
        running = sae.b_dec.expand(x.shape[0], -1)
        prefix_outputs = []
        for contribution in sae.prefix_contributions(codes):
            running = running + contribution
            prefix_outputs.append(denormalize(running))
    return Reconstruction(codes, output, prefix_outputs)


def concat_codes(parts: list[SparseCodes]) -> SparseCodes:
    """Stack the codes of consecutive batches into one (rows offset by batch)."""
    if not parts:
        raise ValueError("no codes to concatenate")
    offsets, total = [], 0
    for part in parts:
        offsets.append(total)
        total += part.n_rows
    rows = torch.cat([p.rows.long() + o for p, o in zip(parts, offsets, strict=True)])
    return SparseCodes(
        rows,
        torch.cat([p.latents.long() for p in parts]),
        torch.cat([p.values.float() for p in parts]),
        total,
        parts[0].width,
    )


def _compact(codes: SparseCodes) -> SparseCodes:
    """A detached CPU copy in int32/float32 (12 bytes per active entry)."""
    return SparseCodes(
        codes.rows.detach().to("cpu", torch.int32),
        codes.latents.detach().to("cpu", torch.int32),
        codes.values.detach().to("cpu", torch.float32),
        codes.n_rows,
        codes.width,
    )


# =============================================================================================
# Sparsity
# =============================================================================================


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


# =============================================================================================
# Seed 001's feature metrics (evaluate_features.py; methods.md §3.3) -- not SAEBench's
# =============================================================================================


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


# =============================================================================================
# One streaming pass over held-out activations
# =============================================================================================


def _iter_batches(reader_or_batches) -> Iterator:
    if hasattr(reader_or_batches, "batches"):
        return iter(reader_or_batches.batches())
    return iter(reader_or_batches)


@torch.no_grad()
def evaluate_sae(
    sae: SAE,
    reader_or_batches,
    *,
    n_tokens: int | None = None,
    fvu_definition: str = DEFAULT_FVU,
    seed001: bool = True,
    per_latent: bool = True,
    chunk_size: int = 2048,
) -> dict[str, Any]:
    """Run ``sae`` in eval mode over held-out batches and return every activation-level metric.

    ``reader_or_batches``: an :class:`saelab.cache.ActivationReader` (its ``batches()``) or an
    iterable of ``x`` [B, d_in] (SAE) or ``(x, y)`` pairs (transcoder: source and target).
    At most ``n_tokens`` tokens are used. Memory: O(d + width) for FVU and sparsity, plus the
    sparse codes (12 bytes per active entry) when ``seed001`` is set.

    Keys: ``fvu_element_global``, ``fvu_dim_centred``, ``fvu_mean_r2`` (every definition,
    named by :func:`saelab.metrics.fvu_key`; ``fvu_definition`` names the configured one), ``mse``,
    ``explained_variance`` (1 − dim-centred FVU, SAEBench's), ``cosine_similarity`` and
    ``l2_ratio`` (means over tokens of cos(y, ŷ) and ‖ŷ‖/‖y‖), ``l0`` (mean, std,
    quantiles, histogram), dead/alive counts and fractions, ``latent_frequencies``;
    ``matryoshka`` (prefix FVUs and dead per group) and ``seed001`` when applicable.
    """
    check_definition(fvu_definition)
    was_training = sae.training
    sae.eval()
    is_matryoshka = bool(getattr(sae, "group_bounds", None))
    fvu_acc = FVUAccumulator()
    prefix_accs: list[FVUAccumulator] = []
    sparsity = SparsityAccumulator(sae.cfg.width)
    kept_codes: list[SparseCodes] = []
    cos_sum = ratio_sum = 0.0
    seen = 0
    try:
        for batch in _iter_batches(reader_or_batches):
            x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
            if y is None:
                if sae.cfg.is_transcoder:
                    raise ValueError("a transcoder needs (source, target) batches")
                y = x
            if n_tokens is not None:
                x, y = x[: n_tokens - seen], y[: n_tokens - seen]
            if x.shape[0] == 0:
                break
            x = x.to(sae.device, torch.float32)
            y = y.to(sae.device, torch.float32)
            rec = encode_reconstruct(sae, x, prefixes=is_matryoshka)
            fvu_acc.update(y, rec.output)
            if rec.prefix_outputs is not None:
                if not prefix_accs:
                    prefix_accs = [FVUAccumulator() for _ in rec.prefix_outputs]
                for acc, out in zip(prefix_accs, rec.prefix_outputs, strict=True):
                    acc.update(y, out)
            sparsity.update(rec.codes)
            if seed001:
                kept_codes.append(_compact(rec.codes))
            cos_sum += float(F.cosine_similarity(rec.output, y, dim=-1).sum())
            ratio_sum += float((rec.output.norm(dim=-1) / y.norm(dim=-1).clamp_min(1e-12)).sum())
            seen += x.shape[0]
            if n_tokens is not None and seen >= n_tokens:
                break
    finally:
        sae.train(was_training)
    if seen == 0:
        raise ValueError("no tokens to evaluate: the batches were empty")

    fvus = fvu_acc.results()
    sp = sparsity.result()
    out: dict[str, Any] = {
        "n_tokens": seen,
        "fvu_definition": fvu_definition,
        **fvus,
        "mse": fvu_acc.mse(),
        "explained_variance": 1 - fvus["fvu_dim_centred"],
        "cosine_similarity": cos_sum / seen,
        "l2_ratio": ratio_sum / seen,
        "l0": {
            "mean": sp.l0_mean,
            "std": sp.l0_std,
            **sp.l0_quantiles,
            "histogram": sp.l0_histogram,
        },
        "width": sae.cfg.width,
        "n_dead": sp.n_dead,
        "dead_fraction": sp.dead_fraction,
        # Same kind of measure as training's metrics.json, on this evaluation's tokens.
        "dead_definition": (
            f"fraction of latents that fired on none of the {seen} tokens evaluated here "
            "(eval mode)"
        ),
        "alive_fraction": sp.alive_fraction,
        "freq_over_1_percent": sp.freq_over_1_percent,
        "freq_over_10_percent": sp.freq_over_10_percent,
    }
    if per_latent:
        out["latent_frequencies"] = sp.frequencies.tolist()
    if is_matryoshka:
        bounds = sae.group_bounds
        dead = dead_per_group(sp.firing_counts, bounds)
        out["matryoshka"] = {
            "group_sizes": [hi - lo for lo, hi in bounds],
            "prefix_fvu": [
                {"n_groups": g + 1, "n_latents": bounds[g][1], **acc.results()}
                for g, acc in enumerate(prefix_accs)
            ],
            "dead_per_group": dead,
            "dead_fraction_per_group": [
                d / (hi - lo) for d, (lo, hi) in zip(dead, bounds, strict=True)
            ],
        }
    if seed001:
        out["seed001"] = seed001_metrics(sae, concat_codes(kept_codes), chunk_size)
    return out


# =============================================================================================
# CE loss recovered and KL (SAEBench core-metric style)
# =============================================================================================


#: The two conventions for special-token positions (BOS, ...) when an SAE is spliced in.
#: ``splice``: every position is replaced (saelab's default, SAEBench's core eval with
#: ``exclude_special_tokens_from_reconstruction=False``); ``clean``: special positions keep
#: their clean activation (SAE-Lens ``evals.get_recons_loss``). Ablations replace every position
#: in both, as in both references, so the conventions differ only in the spliced pass.
BOS_CONVENTIONS = ("splice", "clean")

#: Metrics of :class:`CERecovered` that get a bootstrap interval.
CE_INTERVAL_METRICS = (
    "ce_sae", "kl_sae", "ce_loss_score", "ce_loss_score_mean", "kl_div_score",
)  # fmt: skip


class CERecovered(NamedTuple):
    """Next-token CE (nats) and KL(clean ‖ patched) per token, averaged over the same tokens."""

    hook_name: str
    """Hook whose activation is replaced (the target hook of a transcoder)."""
    ce_clean: float
    ce_sae: float
    ce_zero_ablation: float
    ce_mean_ablation: float
    kl_sae: float
    kl_zero_ablation: float
    kl_mean_ablation: float
    ce_loss_score: float
    """(CE_zero − CE_sae) / (CE_zero − CE_clean): 1 = clean, 0 = as bad as zero-ablation."""
    ce_loss_score_mean: float
    """(CE_mean − CE_sae) / (CE_mean − CE_clean): the same against mean-ablation."""
    kl_div_score: float
    """(KL_zero − KL_sae) / KL_zero (SAEBench)."""
    n_tokens: int
    """Predictions averaged over."""
    n_contexts: int = 0
    """Contexts those predictions come from (the bootstrap's units)."""
    bos_convention: str = "splice"
    """Which :data:`BOS_CONVENTIONS` these numbers use."""
    intervals: dict | None = None
    """Percentile-bootstrap intervals over contexts of :data:`CE_INTERVAL_METRICS`:
    ``{metric: [low, high]}`` plus ``"_method"`` (level, resamples, seed); None with < 2 contexts."""
    other_convention: dict | None = None
    """The same numbers under the other BOS convention (``bos_convention``, ``ce_sae``,
    ``kl_sae``, the three scores and their intervals), or None when not computed."""


def splice_hooks(sae) -> tuple[str, str]:
    """(hook read, hook replaced): the same for an SAE; source and target for a transcoder."""
    cfg = sae.cfg
    if getattr(cfg, "is_transcoder", False) and not cfg.target_hook_name:
        raise ValueError("a transcoder needs target_hook_name to be spliced into a model")
    return cfg.hook_name, cfg.target_hook_name or cfg.hook_name


def _hook_layer(name: str) -> int | None:
    from saelab.hooks import HookError, parse_hook

    try:
        return parse_hook(name).layer
    except HookError:
        return None


def _flat(act: Tensor) -> Tensor:
    """[B, T, ...] -> [B·T, width] (hook_z's heads flattened as in the cache)."""
    return act.reshape(act.shape[0] * act.shape[1], -1)


def _broadcast_mask(mask: Tensor, act: Tensor) -> Tensor:
    return mask.view(*mask.shape, *([1] * (act.ndim - 2)))


class _Passes:
    """Forward passes of one batch of contexts, from a shared prefix when possible.

    When every hook involved lies in blocks ≥ L (L > 0), the residual stream before block L is
    computed once and every pass starts there (``start_at_layer``), with the attention mask
    and shortformer embedding that ``input_to_embed`` made for the whole forward: identical
    numbers, fewer FLOPs.
    """

    def __init__(self, model, tokens: Tensor, start_layer: int):
        self.model, self.tokens, self.start = model, tokens, start_layer
        self.resid = None
        if start_layer > 0:
            embed, _, self.shortformer, self.attention_mask = model.input_to_embed(tokens)
            self.resid = model(
                embed,
                start_at_layer=0,
                stop_at_layer=start_layer,
                shortformer_pos_embed=self.shortformer,
                attention_mask=self.attention_mask,
            )

    def logits(self, fwd_hooks: list) -> Tensor:
        if self.resid is None:
            return self.model.run_with_hooks(self.tokens, return_type="logits", fwd_hooks=fwd_hooks)
        return self.model.run_with_hooks(
            self.resid,
            start_at_layer=self.start,
            shortformer_pos_embed=self.shortformer,
            attention_mask=self.attention_mask,
            return_type="logits",
            fwd_hooks=fwd_hooks,
        )


class _CleanPass:
    """What every patched pass of one batch is compared with: the clean next-token distribution.

    KL(clean ‖ patched) per prediction is Σ_v p_v (c_v − l_v) − lse(c) + lse(l) with c, l the
    clean and patched logits and p = softmax(c): two reads of the patched logits (logsumexp and
    one dot product with p) instead of a log-softmax and three elementwise passes. Written in
    differences of logits so that nearly equal distributions do not lose their KL to rounding.
    """

    def __init__(self, logits: Tensor, targets: Tensor):
        self.logits = logits[:, :-1].float()
        self.lse = torch.logsumexp(self.logits, dim=-1)
        self.probs = torch.softmax(self.logits, dim=-1)
        self.targets = targets
        self.ce = self.lse - self.logits.gather(-1, targets[..., None]).squeeze(-1)

    def ce_kl(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """[B, T−1] CE and KL(clean ‖ this) of a patched pass's ``logits`` [B, T, V]."""
        ce, kl = [], []
        for r in range(logits.shape[0]):  # one context at a time bounds the temporaries
            lg = logits[r, :-1].float()
            lse = torch.logsumexp(lg, dim=-1)
            ce.append(lse - lg.gather(-1, self.targets[r, :, None]).squeeze(-1))
            diff = self.logits[r] - lg
            kl.append(torch.linalg.vecdot(self.probs[r], diff) - self.lse[r] + lse)
        return torch.stack(ce), torch.stack(kl)


class _LossSums:
    """Per-context sums of CE, KL and kept predictions of one pass type."""

    def __init__(self) -> None:
        self.ce: list[float] = []
        self.kl: list[float] = []
        self.n: list[int] = []

    def add(self, ce: Tensor, kl: Tensor | None, keep: Tensor) -> None:
        """Add one batch: ``ce``, ``kl`` [B, T−1] per prediction, ``keep`` which count."""
        for r in range(ce.shape[0]):
            self.ce.append(float(ce[r][keep[r]].double().sum()))
            self.kl.append(0.0 if kl is None else float(kl[r][keep[r]].double().sum()))
            self.n.append(int(keep[r].sum()))

    @property
    def mean_ce(self) -> float:
        return sum(self.ce) / max(1, sum(self.n))

    @property
    def mean_kl(self) -> float:
        return sum(self.kl) / max(1, sum(self.n))


def _ce_intervals(
    clean: _LossSums,
    zero: _LossSums,
    mean: _LossSums,
    spliced: _LossSums,
    n_resamples: int,
    seed: int,
    level: float,
) -> dict | None:
    """Bootstrap intervals over contexts (paired: one resample picks the same contexts for the
    clean, ablated and spliced passes) of :data:`CE_INTERVAL_METRICS`."""
    from saelab.stats import bootstrap_sums, interval_table, ratio_score

    if len(clean.n) < 2:
        return None
    per_context = {
        "n": clean.n, "clean": clean.ce, "zero": zero.ce, "mean": mean.ce, "sae": spliced.ce,
        "kl_zero": zero.kl, "kl_sae": spliced.kl,
    }  # fmt: skip
    statistics = {
        "ce_sae": lambda s: s["sae"] / s["n"],
        "kl_sae": lambda s: s["kl_sae"] / s["n"],
        "ce_loss_score": lambda s: ratio_score(s["zero"], s["sae"], s["clean"]),
        "ce_loss_score_mean": lambda s: ratio_score(s["mean"], s["sae"], s["clean"]),
        "kl_div_score": lambda s: ratio_score(s["kl_zero"], s["kl_sae"], 0.0),
    }
    found = bootstrap_sums(per_context, statistics, n_resamples=n_resamples, seed=seed, level=level)
    return interval_table(found)


def _special_mask(model, tokens: Tensor) -> Tensor:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    special = torch.tensor(sorted(tokenizer.all_special_ids), dtype=tokens.dtype)
    return torch.isin(tokens, special)


@torch.no_grad()
def hook_means(
    model,
    tokens: Tensor,
    hook_names: list[str],
    positions: Tensor | None = None,
    batch_size: int = 8,
) -> dict[str, Tensor]:
    """Mean activation (flattened width) of each hook over the ``positions`` (bool [n, ctx],
    default all) of ``tokens``; forwards stop after the deepest hook's block."""
    layers = [_hook_layer(h) for h in hook_names]
    stop = None if any(layer is None for layer in layers) else max(layers) + 1
    sums: dict[str, Tensor] = {}
    count = 0
    for lo in range(0, len(tokens), batch_size):
        toks = tokens[lo : lo + batch_size]
        mask = (
            torch.ones_like(toks, dtype=torch.bool)
            if positions is None
            else positions[lo : lo + batch_size]
        )
        mask = mask.to(toks.device)

        def save(act, hook, mask=mask):
            flat = _flat(act).double()[mask.reshape(-1)]
            sums[hook.name] = sums.get(hook.name, 0) + flat.sum(dim=0)

        model.run_with_hooks(
            toks,
            return_type=None,
            stop_at_layer=stop,
            fwd_hooks=[(h, save) for h in hook_names],
        )
        count += int(mask.sum())
    return {h: (sums[h] / max(1, count)).float() for h in hook_names}


def _replace_hook(new_flat: Callable[[Tensor], Tensor], mask: Tensor):
    """A TL hook that replaces the activation at ``mask``ed positions with ``new_flat(act)``."""

    def replace(act, hook):
        new = new_flat(act).reshape(act.shape).to(act.dtype)
        return torch.where(_broadcast_mask(mask, act), new, act)

    return replace


def _sae_hooks(sae, mask: Tensor) -> list:
    source, target = splice_hooks(sae)
    if source == target:
        return [(target, _replace_hook(lambda act: sae.reconstruct(_flat(act).float()), mask))]
    store: dict[str, Tensor] = {}

    def capture(act, hook):
        store["x"] = act

    def from_source(act):
        if "x" not in store:
            raise ValueError(f"transcoder source {source!r} does not run before target {target!r}")
        return sae.reconstruct(_flat(store.pop("x")).float())

    return [(source, capture), (target, _replace_hook(from_source, mask))]


def _score(worse: float, patched: float, clean: float) -> float:
    from saelab.stats import ratio_score

    return float(ratio_score(worse, patched, clean))


@torch.no_grad()
def ce_recovered(
    model,
    tokens: Tensor,
    saes: Mapping[str, Any],
    *,
    special_mask: Tensor | None = None,
    splice_special: bool = True,
    both_conventions: bool = True,
    exclude_special: bool = True,
    batch_size: int = 4,
    mean_activations: Mapping[str, Tensor] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, CERecovered]:
    """CE loss recovered and KL for several SAEs/transcoders, sharing the costly passes.

    For each batch of ``tokens`` [n, ctx] this runs one clean pass; per replaced hook one
    zero-ablation and one mean-ablation pass (shared by every SAE at that hook); and one pass
    per SAE with ``sae.reconstruct`` spliced in (a transcoder reconstructs its target hook from
    its source hook's activation in the same pass), plus, with ``both_conventions``, one more
    per SAE under the other BOS convention. ``saes`` maps names to anything with
    ``cfg.hook_name``, ``cfg.target_hook_name`` and ``reconstruct``.

    BOS convention (:data:`BOS_CONVENTIONS`): ``splice_special=True`` (``splice``, the default)
    replaces every position, as SAEBench's core eval (``exclude_special_tokens_from_
    reconstruction=False``); ``False`` (``clean``) keeps special-token positions (BOS ...) clean
    in the spliced pass, as SAE-Lens' ``get_recons_loss``. The headline fields use the chosen
    one, ``other_convention`` the other (skipped, and a copy, when no replaced position is
    special). Zero- and mean-ablation replace every position in both, as both references
    ablate. The mean for mean-ablation is over all positions of all ``tokens`` (Bart: over
    batch and positions), unless given in ``mean_activations``.

    Averaged over predictions at positions t < ctx−1 (CE of token t+1; KL of the next-token
    distributions at t), skipping, with ``exclude_special``, those whose input token t
    (SAEBench) or target token t+1 (saelab's LM loss) is special. ``special_mask`` defaults to
    the model tokenizer's special ids. ``intervals``: percentile bootstrap over contexts
    (``n_resamples``, ``seed``, ``level``; :mod:`saelab.stats`).
    """
    from saelab.stats import check_bootstrap_options

    if not saes:
        raise ValueError("ce_recovered needs at least one SAE")
    check_bootstrap_options(n_resamples, level)
    tokens = tokens.long()
    device = model.cfg.device
    if special_mask is None:
        special_mask = _special_mask(model, tokens)
    special_mask = special_mask.bool().cpu()
    everywhere = torch.ones_like(special_mask)
    conventions = {"splice": everywhere, "clean": ~special_mask}
    primary = "splice" if splice_special else "clean"
    other = "clean" if splice_special else "splice"
    run_other = both_conventions and bool(special_mask.any())
    keep_all = (
        ~special_mask[:, :-1] & ~special_mask[:, 1:]
        if exclude_special
        else torch.ones_like(special_mask[:, 1:])
    )
    by_target: dict[str, list[str]] = {}
    hooks_used: set[str] = set()
    for name, sae in saes.items():
        source, target = splice_hooks(sae)
        by_target.setdefault(target, []).append(name)
        hooks_used.update((source, target))
    layers = [_hook_layer(h) for h in hooks_used]
    start = 0 if any(layer is None for layer in layers) else min(layers)
    means = dict(mean_activations or {})
    missing = [h for h in by_target if h not in means]
    if missing:
        means.update(hook_means(model, tokens.to(device), missing, everywhere, batch_size))

    clean = _LossSums()
    zero = {h: _LossSums() for h in by_target}
    mean = {h: _LossSums() for h in by_target}
    spliced = {c: {name: _LossSums() for name in saes} for c in BOS_CONVENTIONS}
    n_batches = math.ceil(len(tokens) / batch_size)
    for b, lo in enumerate(range(0, len(tokens), batch_size)):
        toks = tokens[lo : lo + batch_size].to(device)
        masks = {c: m[lo : lo + batch_size].to(device) for c, m in conventions.items()}
        keep = keep_all[lo : lo + batch_size].to(device)
        passes = _Passes(model, toks, start)
        reference = _CleanPass(passes.logits([]), toks[:, 1:])
        clean.add(reference.ce, None, keep)
        for hook, names in by_target.items():
            mu = means[hook].to(device)
            mask = masks["splice"]
            zero_hook = _replace_hook(lambda act: torch.zeros_like(act), mask)
            mean_hook = _replace_hook(lambda act, mu=mu: mu.expand(_flat(act).shape[0], -1), mask)
            zero[hook].add(*reference.ce_kl(passes.logits([(hook, zero_hook)])), keep)
            mean[hook].add(*reference.ce_kl(passes.logits([(hook, mean_hook)])), keep)
            for name in names:
                for convention in (primary, other) if run_other else (primary,):
                    logits = passes.logits(_sae_hooks(saes[name], masks[convention]))
                    spliced[convention][name].add(*reference.ce_kl(logits), keep)
        log.info("CE recovered: batch %d/%d", b + 1, n_batches)

    def numbers(name: str, hook: str, convention: str) -> dict[str, Any]:
        s, z, m = spliced[convention][name], zero[hook], mean[hook]
        return {
            "bos_convention": convention,
            "ce_sae": s.mean_ce,
            "kl_sae": s.mean_kl,
            "ce_loss_score": _score(z.mean_ce, s.mean_ce, clean.mean_ce),
            "ce_loss_score_mean": _score(m.mean_ce, s.mean_ce, clean.mean_ce),
            "kl_div_score": _score(z.mean_kl, s.mean_kl, 0.0),
            "intervals": _ce_intervals(clean, z, m, s, n_resamples, seed, level),
        }

    out = {}
    for hook, names in by_target.items():
        z, m = zero[hook], mean[hook]
        for name in names:
            head = numbers(name, hook, primary)
            if run_other:
                second = numbers(name, hook, other)
            elif both_conventions:  # no special position was replaced: the same passes
                second = {**head, "bos_convention": other}
            else:
                second = None
            out[name] = CERecovered(
                hook_name=hook,
                ce_clean=clean.mean_ce,
                ce_sae=head["ce_sae"],
                ce_zero_ablation=z.mean_ce,
                ce_mean_ablation=m.mean_ce,
                kl_sae=head["kl_sae"],
                kl_zero_ablation=z.mean_kl,
                kl_mean_ablation=m.mean_kl,
                ce_loss_score=head["ce_loss_score"],
                ce_loss_score_mean=head["ce_loss_score_mean"],
                kl_div_score=head["kl_div_score"],
                n_tokens=sum(clean.n),
                n_contexts=len(clean.n),
                bos_convention=primary,
                intervals=head["intervals"],
                other_convention=second,
            )
    return out


# =============================================================================================
# SAEBench-style first-letter absorption (simplified; see first_letter_absorption)
# =============================================================================================


def single_word_tokens(
    tokenizer, token_ids: Iterable[int] | None = None, min_length: int = 2
) -> dict[int, str]:
    """Token ids that decode to one ASCII alphabetic word of ≥ ``min_length`` letters, with or
    without one leading space (``" the"``, ``"The"``), mapped to the word. Special tokens are
    skipped. ``token_ids`` restricts the search (e.g. to ids present in a corpus)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = range(len(tokenizer)) if token_ids is None else sorted({int(i) for i in token_ids})
    words = {}
    for i in ids:
        if i in special:
            continue
        text = tokenizer.decode([i])
        word = text[1:] if text.startswith(" ") else text
        if len(word) >= min_length and word.isascii() and word.isalpha():
            words[i] = word
    return words


class LetterAbsorption(NamedTuple):
    letter: str
    n_train: int
    n_test: int
    n_true_positives: int
    """Test tokens of this letter that the probe classifies correctly (the denominator)."""
    n_full_absorption: int
    full_absorption_rate: float | None
    mean_absorption_fraction: float | None
    main_latents: list[int]
    main_f1: float
    """F1 on the train tokens of "some main latent fires" for "the word starts with letter"."""


class FirstLetterAbsorption(NamedTuple):
    full_absorption_rate: float | None
    """Mean over letters of the per-letter full-absorption rate; None when skipped."""
    mean_absorption_fraction: float | None
    """Mean over letters of the mean absorption fraction (SAEBench's headline number)."""
    pooled_full_absorption_rate: float | None
    """All absorbed tokens / all probe true positives."""
    probe_accuracy: float | None
    """Test accuracy of the first-letter probe over the letters kept."""
    n_tokens: int
    n_word_types: int
    letters: dict[str, LetterAbsorption]
    reason: str | None
    """Why the metric was not computed (too few tokens, a transcoder), else None."""


def _skipped(reason: str, n_tokens: int = 0, n_types: int = 0) -> FirstLetterAbsorption:
    log.info("first-letter absorption skipped: %s", reason)
    return FirstLetterAbsorption(None, None, None, None, n_tokens, n_types, {}, reason)


def _cap_per_type(ids: Tensor, max_per_type: int | None, generator: torch.Generator) -> Tensor:
    """Indices keeping at most ``max_per_type`` random occurrences of each token id."""
    n = len(ids)
    if max_per_type is None:
        return torch.arange(n)
    perm = torch.randperm(n, generator=generator)
    sorted_ids, order = torch.sort(ids[perm], stable=True)
    first = torch.searchsorted(sorted_ids, sorted_ids)
    rank = torch.arange(n) - first
    return torch.sort(perm[order[rank < max_per_type]]).values


def _split_by_type(
    ids: Tensor, letters: Tensor, test_fraction: float, generator: torch.Generator
) -> Tensor:
    """Test mask: per letter, a random ``test_fraction`` of its word types (≥ 1 each side)."""
    test = torch.zeros(len(ids), dtype=torch.bool)
    for letter in letters.unique().tolist():
        types = ids[letters == letter].unique()
        if len(types) < 2:
            continue
        n_test = min(len(types) - 1, max(1, round(test_fraction * len(types))))
        chosen = types[torch.randperm(len(types), generator=generator)[:n_test]]
        test |= torch.isin(ids, chosen) & (letters == letter)
    return test


def _train_probe(
    X: Tensor, y: Tensor, n_classes: int, steps: int, lr: float, weight_decay: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Multinomial logistic regression on centred X scaled by one global RMS, full-batch Adam
    from zero (a single scale keeps directions as in activation space; per-dimension
    standardisation would blow up directions that barely vary in training).

    Returns (W [d, C], b [C], mean [d], scale []); logits = ((x − mean)/scale) @ W + b.
    """
    with torch.inference_mode(False), torch.enable_grad():
        X = X.detach().clone().float()
        mu = X.mean(dim=0)
        scale = (X - mu).pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-6)
        Z = (X - mu) / scale
        W = torch.zeros(X.shape[1], n_classes, requires_grad=True)
        b = torch.zeros(n_classes, requires_grad=True)
        opt = torch.optim.Adam([W, b], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(Z @ W + b, y) + weight_decay * W.pow(2).sum()
            loss.backward()
            opt.step()
    return W.detach(), b.detach(), mu, scale


def _f1(tp: Tensor, predicted: Tensor, actual: int) -> Tensor:
    return 2 * tp.double() / (predicted.double() + actual).clamp_min(1)


def _main_latents(
    codes: SparseCodes, is_letter: Tensor, max_latents: int, jump: float
) -> tuple[list[int], float]:
    """The letter's main latents on train tokens: the latent with the best F1 for "fires" vs
    "is this letter", then the next best (by single-latent F1) while the F1 of "any of them
    fires" rises by more than ``jump`` (SAEBench: k-sparse probes with an F1-jump rule)."""
    lat, rows = codes.latents.long(), codes.rows.long()
    n_letter = int(is_letter.sum())
    fires = torch.bincount(lat, minlength=codes.width)
    tp = torch.bincount(lat[is_letter[rows]], minlength=codes.width)
    single = _f1(tp, fires, n_letter)
    ranked = torch.argsort(single, descending=True)[:max_latents].tolist()
    chosen = ranked[:1]
    best = float(single[ranked[0]])
    for cand in ranked[1:]:
        trial = [*chosen, cand]
        fired = torch.zeros(codes.n_rows, dtype=torch.bool)
        fired[rows[torch.isin(lat, torch.tensor(trial))]] = True
        f1 = float(_f1((fired & is_letter).sum(), fired.sum(), n_letter))
        if f1 - best <= jump:
            break
        chosen, best = trial, f1
    return chosen, best


@torch.no_grad()
def first_letter_absorption(
    sae: SAE,
    acts: Tensor,
    token_ids: Tensor,
    words: Mapping[int, str],
    *,
    test_mask: Tensor | None = None,
    test_fraction: float = 0.3,
    max_per_type: int | None = 8,
    min_tokens_per_letter: int = 5,
    min_letters: int = 2,
    probe_steps: int = 300,
    probe_lr: float = 0.01,
    probe_weight_decay: float = 1e-4,
    f1_jump_threshold: float = 0.03,
    max_main_latents: int = 10,
    full_absorption_cos_threshold: float = 0.025,
    fraction_cos_threshold: float = 0.1,
    projection_threshold: float = 0.4,
    max_absorbing_latents: int = 3,
    batch_size: int = 2048,
    seed: int = 0,
) -> FirstLetterAbsorption:
    """A simplified SAEBench first-letter absorption rate on single-word corpus tokens.

    What is computed:

    1. Tokens: rows of ``acts`` (the SAE's input hook) whose ``token_ids`` are in ``words``
       (see :func:`single_word_tokens`), at most ``max_per_type`` random occurrences per token
       type; label = the word's first letter, lower-cased. Word types are split per letter into
       train and test (``test_fraction`` of the types), unless ``test_mask`` is given. Letters
       with fewer than ``min_tokens_per_letter`` train or test tokens are dropped; with fewer
       than ``min_letters`` letters left the result is skipped (``reason`` says why).
    2. Probe: multinomial logistic regression over the kept letters on the activations,
       centred and divided by one global RMS (Adam, ``probe_steps`` full-batch steps); letter
       L's probe direction p_L is its weight column, unit-normalised.
    3. Main latents of L (train tokens): the latent whose firing has the best F1 for "word
       starts with L", plus further latents (by single F1) while the F1 of "any fires" rises
       by more than ``f1_jump_threshold``, up to ``max_main_latents``.
    4. On test tokens of L that the probe classifies as L (true positives), with
       proj = x·p_L and latent projections a_i · cos(W_dec_i, p_L):
       full absorption = no main latent fires, proj > 0, the top-projecting latent has
       cos ≥ ``full_absorption_cos_threshold`` and carries ≥ ``projection_threshold`` of proj;
       absorption fraction = SAEBench's formula with the top ``max_absorbing_latents``
       non-main latents of cos ≥ ``fraction_cos_threshold`` as absorbers.
    5. Per letter: full-absorption rate = absorbed / true positives and the mean absorption
       fraction; overall: their means over letters (as SAEBench) and the pooled rate.

    Differences from SAEBench: activations come from words in running corpus text, not from
    ICL spelling prompts ``"{word}:"`` read at a fixed position; the probe is trained here on
    the SAE's own hook (any hook; SAEBench reads resid_post); main latents come from
    single-latent F1 ranking with a greedy union instead of L1-trained k-sparse probes; word
    types, not vocabulary entries of a fixed list, are split. Thresholds are SAEBench's.
    Transcoders are skipped (their decoder lives in another space than the probe).
    """
    if getattr(sae.cfg, "is_transcoder", False):
        return _skipped("transcoder: the decoder is not in the probe's (input) space")
    token_ids = token_ids.long().cpu()
    letter_of = {i: w[0].lower() for i, w in words.items() if w and w[0].isascii()}
    if not letter_of:
        return _skipped("no single-word tokens")
    top_id = int(token_ids.max()) if len(token_ids) else 0
    lookup = torch.full((max(max(letter_of), top_id) + 1,), -1)
    for i, ch in letter_of.items():
        lookup[i] = ord(ch) - ord("a")
    is_word = (token_ids >= 0) & (lookup[token_ids.clamp_min(0)] >= 0)
    rows = torch.nonzero(is_word).flatten()
    generator = torch.Generator().manual_seed(seed)
    rows = rows[_cap_per_type(token_ids[rows], max_per_type, generator)]
    ids = token_ids[rows]
    letters = lookup[ids]
    n_types = len(ids.unique())
    if test_mask is not None:
        test = test_mask.bool().cpu()[rows]
    else:
        test = _split_by_type(ids, letters, test_fraction, generator)
    kept = [
        c
        for c in letters.unique().tolist()
        if int(((letters == c) & ~test).sum()) >= min_tokens_per_letter
        and int(((letters == c) & test).sum()) >= min_tokens_per_letter
    ]
    if len(kept) < min_letters:
        return _skipped(
            f"only {len(kept)} letter(s) have ≥ {min_tokens_per_letter} train and test tokens "
            f"among {len(rows)} single-word tokens of {n_types} types (need {min_letters})",
            len(rows),
            n_types,
        )
    select = torch.isin(letters, torch.tensor(kept))
    rows, ids, letters, test = rows[select], ids[select], letters[select], test[select]
    cls = torch.searchsorted(torch.tensor(kept), letters)
    X = acts[rows].float().cpu()

    W, b, mu, scale = _train_probe(
        X[~test], cls[~test], len(kept), probe_steps, probe_lr, probe_weight_decay
    )
    predicted = (((X - mu) / scale) @ W + b).argmax(dim=1)
    probe_accuracy = float((predicted[test] == cls[test]).double().mean())
    directions = F.normalize(W.T, dim=1)  # [C, d]: one global scale keeps raw directions

    was_training = sae.training
    sae.eval()
    try:
        parts = [
            _compact(encode_reconstruct(sae, X[lo : lo + batch_size].to(sae.device)).codes)
            for lo in range(0, len(X), batch_size)
        ]
    finally:
        sae.train(was_training)
    codes = concat_codes(parts)
    train_rows = torch.nonzero(~test).flatten()
    train_codes = codes.select(torch.isin(codes.rows, train_rows))
    remap = torch.full((len(X),), -1)
    remap[train_rows] = torch.arange(len(train_rows))
    train_codes = SparseCodes(
        remap[train_codes.rows],
        train_codes.latents,
        train_codes.values,
        len(train_rows),
        codes.width,
    )
    W_dec = F.normalize(sae.W_dec.detach().float().cpu(), dim=1)

    results: dict[str, LetterAbsorption] = {}
    for c, code in enumerate(kept):
        letter = chr(ord("a") + code)
        main, main_f1 = _main_latents(
            train_codes, cls[~test] == c, max_main_latents, f1_jump_threshold
        )
        tp_rows = torch.nonzero(test & (cls == c) & (predicted == c)).flatten()
        n_full, fraction_sum = 0, 0.0
        cos = W_dec @ directions[c]
        for lo in range(0, len(tp_rows), batch_size):
            chunk = tp_rows[lo : lo + batch_size]
            full, frac = _absorption_of_rows(
                codes,
                chunk,
                X[chunk] @ directions[c],
                cos,
                main,
                full_absorption_cos_threshold,
                fraction_cos_threshold,
                projection_threshold,
                max_absorbing_latents,
            )
            n_full += int(full.sum())
            fraction_sum += float(frac.sum())
        n_tp = len(tp_rows)
        results[letter] = LetterAbsorption(
            letter=letter,
            n_train=int(((cls == c) & ~test).sum()),
            n_test=int(((cls == c) & test).sum()),
            n_true_positives=n_tp,
            n_full_absorption=n_full,
            full_absorption_rate=n_full / n_tp if n_tp else None,
            mean_absorption_fraction=fraction_sum / n_tp if n_tp else None,
            main_latents=main,
            main_f1=main_f1,
        )
    rates = [r.full_absorption_rate for r in results.values() if r.n_true_positives]
    fractions = [r.mean_absorption_fraction for r in results.values() if r.n_true_positives]
    total_tp = sum(r.n_true_positives for r in results.values())
    return FirstLetterAbsorption(
        full_absorption_rate=float(np.mean(rates)) if rates else None,
        mean_absorption_fraction=float(np.mean(fractions)) if fractions else None,
        pooled_full_absorption_rate=(
            sum(r.n_full_absorption for r in results.values()) / total_tp if total_tp else None
        ),
        probe_accuracy=probe_accuracy,
        n_tokens=len(rows),
        n_word_types=len(ids.unique()),
        letters=results,
        reason=None,
    )


def _absorption_of_rows(
    codes: SparseCodes,
    chunk: Tensor,
    probe_proj: Tensor,
    cos: Tensor,
    main: list[int],
    full_cos: float,
    fraction_cos: float,
    proportion: float,
    max_absorbers: int,
) -> tuple[Tensor, Tensor]:
    """Full absorption (bool) and absorption fraction of the rows ``chunk`` of ``codes``."""
    sub = codes.select(torch.isin(codes.rows, chunk))
    local = torch.searchsorted(chunk, sub.rows.long())
    dense = torch.zeros(len(chunk), codes.width)
    dense[local, sub.latents.long()] = sub.values
    proj = dense * cos
    main_t = torch.tensor(main, dtype=torch.long)
    main_fired = (dense[:, main_t] > 0).any(dim=1)
    main_proj = proj[:, main_t].sum(dim=1)
    top_val, top_idx = proj.max(dim=1)
    safe = torch.where(probe_proj > 0, probe_proj, torch.ones_like(probe_proj))
    full = (
        ~main_fired & (probe_proj > 0) & (cos[top_idx] >= full_cos) & (top_val / safe >= proportion)
    )
    absorbers = proj.clone()
    absorbers[:, main_t] = 0
    absorbers[:, cos < fraction_cos] = 0
    absorbers = absorbers.clamp_min(0)
    k = min(max_absorbers, absorbers.shape[1])
    absorbed_proj = absorbers.topk(k, dim=1).values.sum(dim=1)
    share_ok = (probe_proj > 0) & (absorbed_proj / safe >= proportion)
    fraction = torch.zeros(len(chunk))
    partial = share_ok & (main_proj < probe_proj)
    amount = torch.minimum(absorbed_proj, probe_proj - main_proj)
    mixed = (amount / (amount + main_proj)).clamp(0, 1)
    fraction = torch.where(partial & (main_proj > 0), mixed, fraction)
    fraction = torch.where(partial & (main_proj <= 0), torch.ones_like(fraction), fraction)
    return full, fraction


# =============================================================================================
# Cache-backed inputs and output
# =============================================================================================


def heldout_reader(sae: SAE, cache_path: str | os.PathLike, batch_size: int = 4096, **kwargs):
    """An in-order reader of the held-out split of ``cache_path`` at the SAE's hook(s)
    (source and target for a transcoder), special tokens excluded, last partial batch kept."""
    from saelab.cache import ActivationReader

    hooks: str | list[str] = sae.cfg.hook_name
    if sae.cfg.is_transcoder:
        hooks = [sae.cfg.hook_name, sae.cfg.target_hook_name]
    options = {"split": "heldout", "shuffle": False, "drop_last": False, **kwargs}
    return ActivationReader(cache_path, hooks, batch_size, **options)


def heldout_contexts(
    cache_path: str | os.PathLike, hook: str, n_contexts: int, context_len: int | None = None
) -> tuple[Tensor, Tensor]:
    """Token contexts [n, ctx] and their special mask from the held-out split of a cache
    (the same contexts :func:`heldout_reader` reads), truncated to ``context_len``."""
    reader = _heldout_reader_at(cache_path, hook)
    ctx = reader.context_len
    tokens, special, _ = reader.contexts(n_contexts)
    length = min(ctx, context_len or ctx)
    if context_len and context_len > ctx:
        log.warning("ce_context_len %d > the cache's context length %d", context_len, ctx)
    return torch.from_numpy(tokens[:, :length]), torch.from_numpy(special[:, :length])


def _heldout_reader_at(cache_path, hook: str, split: str = "heldout"):
    from saelab.cache import ActivationReader

    return ActivationReader(cache_path, hook, 1, split=split, shuffle=False)


def cached_word_activations(
    cache_path: str | os.PathLike,
    hook: str,
    word_ids: Iterable[int],
    max_per_type: int | None = 8,
    max_tokens: int = 50_000,
    split: str = "all",
    batch_size: int = 8192,
) -> tuple[Tensor, Tensor]:
    """Activations at ``hook`` and token ids of cached tokens whose id is in ``word_ids``: the
    first ``max_per_type`` occurrences of each id, at most ``max_tokens`` in all, cache order."""
    from saelab.cache import ActivationReader

    reader = ActivationReader(
        cache_path, hook, batch_size, split=split, shuffle=False, drop_last=False
    )
    wanted = np.asarray(sorted({int(i) for i in word_ids}), dtype=np.int64)
    seen = np.zeros(int(wanted.max()) + 1 if len(wanted) else 1, dtype=np.int64)
    acts, ids, total = [], [], 0
    for batch, rows in reader.batches(with_rows=True):
        if total >= max_tokens or not len(wanted):
            break
        tok = reader.tokens_of(rows)
        keep = np.isin(tok, wanted)
        if max_per_type is not None and keep.any():
            index = np.nonzero(keep)[0]
            rank = seen[tok[index]] + _rank_within(tok[index])
            np.add.at(seen, tok[index], 1)
            keep[index[rank >= max_per_type]] = False
        keep[np.cumsum(keep) > max_tokens - total] = False
        if keep.any():
            acts.append(batch[torch.from_numpy(keep)])
            ids.append(torch.from_numpy(tok[keep]))
            total += int(keep.sum())
    if not acts:
        return torch.zeros(0, reader.widths[hook]), torch.zeros(0, dtype=torch.long)
    return torch.cat(acts), torch.cat(ids)


def _rank_within(values: np.ndarray) -> np.ndarray:
    """For each element, how many equal values come before it in ``values``."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    first = np.searchsorted(sorted_values, sorted_values, side="left")
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values)) - first
    return rank


def first_letter_absorption_from_cache(
    sae: SAE,
    cache_path: str | os.PathLike,
    tokenizer,
    *,
    split: str = "all",
    max_per_type: int | None = 8,
    max_tokens: int = 50_000,
    **options: Any,
) -> FirstLetterAbsorption:
    """:func:`first_letter_absorption` on the single-word tokens of a cache split: the
    tokenizer picks the word types present, the cache gives their activations."""
    if sae.cfg.is_transcoder:
        return _skipped("transcoder: the decoder is not in the probe's (input) space")
    present = tokens_in_cache(cache_path, sae.cfg.hook_name, split)
    words = single_word_tokens(tokenizer, present.tolist())
    if not words:
        return _skipped(f"no single-word tokens among the {len(present)} token types cached")
    acts, ids = cached_word_activations(
        cache_path, sae.cfg.hook_name, words, max_per_type, max_tokens, split
    )
    return first_letter_absorption(sae, acts, ids, words, max_per_type=max_per_type, **options)


def tokens_in_cache(cache_path: str | os.PathLike, hook: str, split: str = "heldout") -> Tensor:
    """Distinct token ids of a cache split (to restrict :func:`single_word_tokens`)."""
    reader = _heldout_reader_at(cache_path, hook, split)
    lo, hi = reader.row_range
    return torch.from_numpy(np.unique(np.asarray(reader.group["tokens"][lo:hi], dtype=np.int64)))


def write_metrics(metrics: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``metrics`` as strict JSON to ``path`` atomically (temp file, then rename)."""
    return write_json_atomic(metrics, path)
