"""Evaluation of SAEs and transcoders: FVU, sparsity, absorption.

Everything here is a plain function of tensors and an SAE (absorption: and a tokenizer);
nothing imports Snakemake. The pieces:

* **FVU** of the three named definitions, streamed exactly (:mod:`saelab.metrics`).
* **Sparsity**: L0 mean and distribution, dead/alive latents, firing frequencies
  (:class:`SparsityAccumulator`); for Matryoshka SAEs the FVU of every nested prefix and the
  dead latents of every group.
* :func:`evaluate_sae`: all of the above in one streaming pass over held-out activations.
* CE loss recovered and KL live in :mod:`saelab.ce` (:func:`saelab.ce.ce_recovered`).
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
from collections.abc import Iterable, Iterator, Mapping
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
