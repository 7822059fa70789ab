"""Evaluation of SAEs and transcoders: FVU, sparsity, absorption.

Everything here is a plain function of tensors and an SAE (absorption: and a tokenizer);
nothing imports Snakemake. The pieces:

* **FVU** of the three named definitions, streamed exactly (:mod:`saelab.metrics`).
* **Sparsity** (:mod:`saelab.sparsity`): L0 mean and distribution, dead/alive latents, firing
  frequencies; for Matryoshka SAEs the FVU of every nested prefix and the dead latents of
  every group.
* :func:`evaluate_sae`: all of the above in one streaming pass over held-out activations.
* CE loss recovered and KL live in :mod:`saelab.ce` (:func:`saelab.ce.ce_recovered`).
* Seed 001's feature metrics (:mod:`saelab.seed001`, ``evaluate_features.py``, methods.md
  §3.3), named ``seed001_*``: NOT the SAEBench metrics of the same names.
* First-letter absorption (:mod:`saelab.absorption`): a simplified SAEBench-style rate on
  single-word tokens of the corpus.

An SAE is evaluated as it is spliced into a model: codes and reconstruction follow
``SAE.reconstruct`` exactly (eval mode: BatchTopK/Matryoshka use their threshold).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.codes import reconstruct_batches
from saelab.metrics import DEFAULT_FVU, FVUAccumulator, check_definition
from saelab.runtime import write_json_atomic
from saelab.saes.base import SAE, SparseCodes
from saelab.seed001 import seed001_metrics
from saelab.sparsity import SparsityAccumulator, dead_per_group

log = logging.getLogger("saelab.evaluate")

# =============================================================================================
# Codes and reconstructions as spliced
# =============================================================================================


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
        for x, y, rec in reconstruct_batches(
            sae, _iter_batches(reader_or_batches), n_rows=n_tokens, prefixes=is_matryoshka
        ):
            fvu_acc.update(y, rec.output)
            if rec.prefix_outputs is not None:
                if not prefix_accs:
                    prefix_accs = [FVUAccumulator() for _ in rec.prefix_outputs]
                for acc, prefix_output in zip(prefix_accs, rec.prefix_outputs, strict=True):
                    acc.update(y, prefix_output)
            sparsity.update(rec.codes)
            if seed001:
                kept_codes.append(_compact(rec.codes))
            cos_sum += float(F.cosine_similarity(rec.output, y, dim=-1).sum())
            ratio_sum += float((rec.output.norm(dim=-1) / y.norm(dim=-1).clamp_min(1e-12)).sum())
            seen += x.shape[0]
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
        bounds = cast(list[tuple[int, int]], sae.group_bounds)  # a Matryoshka SAE's
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
# Cache-backed inputs and output
# =============================================================================================


def heldout_reader(sae: SAE, cache_path: str | os.PathLike, batch_size: int = 4096, **kwargs):
    """An in-order reader of the held-out split of ``cache_path`` at the SAE's hook(s)
    (source and target for a transcoder), special tokens excluded, last partial batch kept."""
    from saelab.cache import ActivationReader

    hooks: str | list[str] = sae.cfg.hook_name
    if sae.cfg.is_transcoder:
        target = sae.cfg.target_hook_name
        if target is None:
            raise ValueError(
                f"the transcoder's cfg.target_hook_name is None (d_in {sae.cfg.d_in}, d_out "
                f"{sae.cfg.d_out}): cannot tell which cached hook it reconstructs"
            )
        hooks = [sae.cfg.hook_name, target]
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


def write_metrics(metrics: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``metrics`` as strict JSON to ``path`` atomically (temp file, then rename)."""
    return write_json_atomic(metrics, path)
