"""Downstream CE with parts of the SAE error spliced back (methods.md §5.5, Fig 9).

At the SAE's hook, the analysis-window positions of a few contexts are replaced by

* ``sae``: x̂;
* ``sae_linear``: x̂ + x W (the linear error, W from the core regression, x W ≈ x − x̂);
* ``sae_nonlinear``: x̂ + (x − x̂ − x W) (the nonlinear error),

every other position keeping its clean activation. CE is the mean next-token loss of the
predictions made at window positions (targets that are special tokens left out), and

    percent recovered = (CE_sae − CE_variant) / (CE_sae − CE_clean) · 100

(0 % = the SAE alone, 100 % = the clean model), each with a percentile-bootstrap 95 % interval
over contexts (paired: one resample takes the same contexts for the clean, SAE and variant
CE; :mod:`saelab.stats`, seeded). The original loaded R² and norm percentages
from files made by a script it never published; here they are derived on the same spliced
tokens: R² % = (R²_sae − R²_variant) / (R²_sae − 1) · 100 with R² = 1 − FVU (per-dimension
centred), and norm % = Σ‖part‖² / Σ‖x − x̂‖² · 100 for part = linear, nonlinear error.

Cost: the model runs from the cached activation where the hook allows it (``hook_resid_pre``
of block L: ``start_at_layer=L``; ``hook_resid_post``: L + 1), so the earlier blocks never run;
other hooks run from the tokens with the hook's activation replaced. The unembedding, which
dominates on gemma-3's 262k vocabulary, is applied only at the positions whose loss counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from saelab.cache.reader import context_rows, split_rows
from saelab.darkmatter.regression import ErrorParts
from saelab.models.splice import final_resid_with, masked_ce_sums

#: Splice variants, in plotting order.
VARIANTS = ("sae", "sae_linear", "sae_nonlinear")


class DownstreamContexts(NamedTuple):
    """Whole contexts around the spliced window positions."""

    tokens: Tensor
    """[n, ctx] int64."""
    acts: Tensor
    """Clean activations at the hook [n, ctx, d] float32 (from the cache)."""
    window: Tensor
    """[n, ctx] bool: positions replaced (the SAE info's window tokens)."""
    loss_mask: Tensor
    """[n, ctx − 1] bool: predictions (position p → token p + 1) whose CE counts."""
    info_index: np.ndarray
    """Index into the SAE info of every window position, in (context, position) order."""


def contexts_from_info(info, cache_group, n_contexts: int) -> DownstreamContexts:
    """The first ``n_contexts`` contexts of an SAE info window (``saelab.darkmatter.info``),
    with their tokens and clean activations read from the cache group."""
    ctx = int(info.attrs["context_len"])
    hook = info.attrs["hook"]
    context_of = split_rows(info.rows, ctx)[0]
    chosen = list(dict.fromkeys(context_of.tolist()))[:n_contexts]
    if not chosen:
        raise ValueError("the SAE info holds no tokens to splice")
    tokens, acts, window, loss_mask, index = [], [], [], [], []
    special_all = cache_group["special_mask"]
    for c in chosen:
        rows_c = context_rows(c, c + 1, ctx)
        tokens.append(np.asarray(cache_group["tokens"][rows_c], dtype=np.int64))
        acts.append(np.asarray(cache_group[hook][rows_c], dtype=np.float32))
        special = np.asarray(special_all[rows_c], dtype=bool)
        rows = np.nonzero(context_of == c)[0]
        pos = np.asarray(info.position)[rows]
        mask = np.zeros(ctx, dtype=bool)
        mask[pos] = True
        window.append(mask)
        loss_mask.append(mask[:-1] & ~special[1:])
        index.append(rows[np.argsort(pos)])
    return DownstreamContexts(
        torch.from_numpy(np.stack(tokens)),
        torch.from_numpy(np.stack(acts)),
        torch.from_numpy(np.stack(window)),
        torch.from_numpy(np.stack(loss_mask)),
        np.concatenate(index),
    )


def splice_variants(x_hat: Tensor, parts: ErrorParts) -> dict[str, Tensor]:
    """The three replacements of x [N, d]: x̂, x̂ + x W, x̂ + (x − x̂ − x W) (``parts`` of x)."""
    return {
        "sae": x_hat,
        "sae_linear": x_hat + parts.linear,
        "sae_nonlinear": x_hat + parts.nonlinear,
    }


def percent_recovered(ce_sae: float, ce_variant: float, ce_clean: float) -> float:
    """(CE_sae − CE_variant) / (CE_sae − CE_clean) · 100; NaN when the SAE costs nothing."""
    gap = ce_sae - ce_clean
    return (ce_sae - ce_variant) / gap * 100 if gap != 0 else float("nan")


def r2_percent(r2_sae: float, r2_variant: float) -> float:
    """(R²_sae − R²_variant) / (R²_sae − 1) · 100: the share of the SAE's unexplained variance
    that adding the part explains."""
    return (r2_sae - r2_variant) / (r2_sae - 1) * 100 if r2_sae != 1 else float("nan")


def reconstruction_percentages(
    x: Tensor, variants: dict[str, Tensor], parts: ErrorParts
) -> dict[str, float]:
    """R² of each variant (:func:`splice_variants`) and the R² and norm percentages of the
    linear and nonlinear parts."""
    from saelab.metrics import fvu_dim_centred

    r2 = {name: 1 - float(fvu_dim_centred(x, recon)) for name, recon in variants.items()}
    error = parts.error.double()
    linear = parts.linear.double()
    error_sq = float(error.pow(2).sum())
    return {
        **{f"r2_{name}": value for name, value in r2.items()},
        "r2_percent_linear": r2_percent(r2["sae"], r2["sae_linear"]),
        "r2_percent_nonlinear": r2_percent(r2["sae"], r2["sae_nonlinear"]),
        "norm_percent_linear": float(linear.pow(2).sum()) / error_sq * 100,
        "norm_percent_nonlinear": float((error - linear).pow(2).sum()) / error_sq * 100,
    }


def spliced_ce(model, contexts: DownstreamContexts, *args, **kwargs) -> dict[str, float]:
    """Mean CE over ``contexts.loss_mask`` (the arguments of :func:`spliced_ce_per_context`)."""
    sums = spliced_ce_per_context(model, contexts, *args, **kwargs)
    return {name: float(total.sum() / max(1.0, n.sum())) for name, (total, n) in sums.items()}


@torch.no_grad()
def spliced_ce_per_context(
    model,
    contexts: DownstreamContexts,
    hook: str,
    replacements: Mapping[str, Tensor],
    batch_size: int = 4,
    clean: bool = True,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Summed CE over ``contexts.loss_mask`` per context, name -> (summed CE [n], predictions
    [n]), with the hook's activation replaced at the window by each of ``replacements``
    ([n_window, d], in ``info_index`` order), and (with ``clean``) with the clean activations
    as ``clean``."""
    device = model.cfg.device
    names = (*(["clean"] if clean else []), *replacements)
    sums: dict[str, list[list[np.ndarray]]] = {name: [[], []] for name in names}
    offsets = np.concatenate([[0], np.cumsum(contexts.window.sum(dim=1).numpy())])
    for lo in range(0, len(contexts.tokens), batch_size):
        hi = min(lo + batch_size, len(contexts.tokens))
        tokens = contexts.tokens[lo:hi].to(device)
        clean_acts = contexts.acts[lo:hi].to(device)
        window = contexts.window[lo:hi].to(device)
        loss_mask = contexts.loss_mask[lo:hi].to(device)
        first, last = int(offsets[lo]), int(offsets[hi])
        for name in sums:
            act = clean_acts.clone()
            if name != "clean":
                act[window] = replacements[name][first:last].to(device, act.dtype)
            final = final_resid_with(model, tokens, hook, act)
            loss, count = masked_ce_sums(model, final, tokens, loss_mask)
            sums[name][0].append(loss)
            sums[name][1].append(count)
    return {name: (np.concatenate(t), np.concatenate(n)) for name, (t, n) in sums.items()}


def percent_intervals(
    per_context: Mapping[str, tuple[np.ndarray, np.ndarray]],
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any] | None:
    """Bootstrap intervals over contexts of the mean CE of every variant and of the linear and
    nonlinear percentages recovered (None with fewer than 2 contexts)."""
    from saelab.stats import bootstrap_sums, interval_table

    n = per_context["clean"][1]
    if len(n) < 2:
        return None
    units = {"n": n, **{name: total for name, (total, _) in per_context.items()}}

    def percent(variant):
        def statistic(s):
            gap = s["sae"] - s["clean"]
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(gap != 0, (s["sae"] - s[variant]) / gap * 100, np.nan)

        return statistic

    statistics: dict[str, Callable[[Any], Any]] = {
        f"ce_{name}": (lambda s, name=name: s[name] / s["n"]) for name in per_context
    }
    statistics["linear_percent"] = percent("sae_linear")
    statistics["nonlinear_percent"] = percent("sae_nonlinear")
    found = bootstrap_sums(units, statistics, n_resamples=n_resamples, seed=seed, level=level)
    return interval_table(found)


def downstream_record(
    model,
    info,
    regression,
    cache_group,
    n_contexts: int,
    batch_size: int = 4,
    clean_ce: dict[tuple, tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """CE of every splice variant of one SAE, its percentages recovered (with bootstrap
    intervals over contexts, :func:`percent_intervals`) and the derived R² and norm
    percentages, on the first ``n_contexts`` contexts of its analysis window.

    ``clean_ce`` (a dict kept across calls) holds the clean per-context CE of each (hook,
    contexts, window), so SAEs of one grid, which share their window, pay for the clean pass
    once."""
    contexts = contexts_from_info(info, cache_group, n_contexts)
    x = torch.from_numpy(np.asarray(info.x, dtype=np.float32)[contexts.info_index])
    x_hat = torch.from_numpy(np.asarray(info.x_hat, dtype=np.float32)[contexts.info_index])
    W_vec = torch.from_numpy(np.asarray(regression.W_vec, dtype=np.float32))
    parts = ErrorParts.of(x, x_hat, W_vec)
    variants = splice_variants(x_hat, parts)
    hook = info.attrs["hook"]
    key = (hook, contexts.tokens.numpy().tobytes(), contexts.loss_mask.numpy().tobytes())
    known = clean_ce if clean_ce is not None else {}
    sums = spliced_ce_per_context(model, contexts, hook, variants, batch_size, key not in known)
    if key in known:
        sums["clean"] = known[key]
    known[key] = sums["clean"]
    sums = {"clean": sums["clean"], **{name: sums[name] for name in variants}}
    ce = {name: float(total.sum() / max(1.0, n.sum())) for name, (total, n) in sums.items()}
    record: dict[str, Any] = {
        "sae": info.attrs.get("sae"),
        "width": info.attrs.get("width"),
        "k": info.attrs.get("k"),
        "hook": info.attrs["hook"],
        "n_contexts": len(contexts.tokens),
        "n_spliced": int(contexts.window.sum()),
        "n_predictions": int(contexts.loss_mask.sum()),
        **{f"ce_{name}": value for name, value in ce.items()},
        "linear_percent": percent_recovered(ce["sae"], ce["sae_linear"], ce["clean"]),
        "nonlinear_percent": percent_recovered(ce["sae"], ce["sae_nonlinear"], ce["clean"]),
        "intervals": percent_intervals(sums, n_resamples, seed),
    }
    record.update(reconstruction_percentages(x, variants, parts))
    return record
