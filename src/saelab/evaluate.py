"""Evaluation of SAEs and transcoders: FVU, sparsity, CE loss recovered and KL, absorption.

Everything here is a plain function of tensors, an SAE and (for CE) a ``HookedTransformer``;
nothing imports Snakemake. The pieces:

* **FVU** of the three named definitions, streamed exactly (:mod:`saelab.metrics`).
* **Sparsity** (:mod:`saelab.sparsity`): L0 mean and distribution, dead/alive latents, firing
  frequencies; for Matryoshka SAEs the FVU of every nested prefix and the dead latents of
  every group.
* :func:`evaluate_sae`: all of the above in one streaming pass over held-out activations.
* :func:`ce_recovered`: next-token CE and KL with the SAE spliced into the model, against
  zero- and mean-ablation (SAEBench's core ``ce_loss_score`` / ``kl_div_score``), sharing the
  clean and ablation passes between SAEs at the same hook.
* Seed 001's feature metrics (:mod:`saelab.seed001`, ``evaluate_features.py``, methods.md
  §3.3), named ``seed001_*``: NOT the SAEBench metrics of the same names.
* First-letter absorption (:mod:`saelab.absorption`): a simplified SAEBench-style rate on
  single-word tokens of the corpus.

An SAE is evaluated as it is spliced into a model: codes and reconstruction follow
``SAE.reconstruct`` exactly (eval mode: BatchTopK/Matryoshka use their threshold).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.metrics import DEFAULT_FVU, FVUAccumulator, check_definition
from saelab.runtime import write_json_atomic
from saelab.saes.base import SAE, SparseCodes
from saelab.seed001 import seed001_metrics
from saelab.sparsity import SparsityAccumulator, dead_per_group

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
# (moved to saelab.absorption)


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


def write_metrics(metrics: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``metrics`` as strict JSON to ``path`` atomically (temp file, then rename)."""
    return write_json_atomic(metrics, path)
