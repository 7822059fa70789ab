"""CE loss recovered and KL (SAEBench core-metric style): next-token CE and KL with an SAE or
transcoder spliced into the model, against zero- and mean-ablation, sharing the clean and
ablation passes between SAEs at the same hook (:func:`ce_recovered`).

The passes come from :mod:`saelab.models.splice` (a shared prefix up to the first replaced
block, hooks that replace an activation at masked positions).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saelab.models.splice import (
    FromLayer,
    ReferenceDistribution,
    flat,
    hook_layer,
    replace_hook,
    unembed_losses,
)

log = logging.getLogger("saelab.evaluate")


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


def _pass_losses(
    model, final: Tensor, targets: Tensor, reference: ReferenceDistribution | None = None
) -> tuple[Tensor, Tensor | None, ReferenceDistribution | None]:
    """[B, T−1] CE and KL(reference ‖ this pass) of a pass's last-block output ``final``
    [B, T, d] against ``targets`` [B, T−1]; without ``reference`` (the clean pass) no KL, and
    the pass's distributions are returned as the reference of the batch's later passes."""
    shape = targets.shape
    losses, kept = unembed_losses(
        model,
        flat(final[:, :-1]),
        targets.reshape(-1),
        reference=reference,
        keep_reference=reference is None,
    )
    kl = None if losses.kl is None else losses.kl.view(shape)
    return losses.ce.view(shape), kl, kept


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
    layers = [hook_layer(h) for h in hook_names]
    known = [layer for layer in layers if layer is not None]
    stop = None if len(known) < len(layers) else max(known) + 1
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
            rows = flat(act).double()[mask.reshape(-1)]
            sums[hook.name] = sums.get(hook.name, 0) + rows.sum(dim=0)

        model.run_with_hooks(
            toks,
            return_type=None,
            stop_at_layer=stop,
            fwd_hooks=[(h, save) for h in hook_names],
        )
        count += int(mask.sum())
    return {h: (sums[h] / max(1, count)).float() for h in hook_names}


def _sae_hooks(sae, mask: Tensor) -> list:
    source, target = splice_hooks(sae)
    if source == target:
        return [(target, replace_hook(lambda act: sae.reconstruct(flat(act).float()), mask))]
    store: dict[str, Tensor] = {}

    def capture(act, hook):
        store["x"] = act

    def from_source(act):
        if "x" not in store:
            raise ValueError(f"transcoder source {source!r} does not run before target {target!r}")
        return sae.reconstruct(flat(store.pop("x")).float())

    return [(source, capture), (target, replace_hook(from_source, mask))]


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
    layers = [hook_layer(h) for h in hooks_used]
    known = [layer for layer in layers if layer is not None]
    start = 0 if len(known) < len(layers) else min(known)
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
        passes = FromLayer(model, toks, start)
        targets = toks[:, 1:]
        clean_ce, _, reference = _pass_losses(model, passes.final([]), targets)
        assert reference is not None
        clean.add(clean_ce, None, keep)

        def patched(fwd_hooks: list, passes=passes, reference=reference, targets=targets):
            ce, kl, _ = _pass_losses(model, passes.final(fwd_hooks), targets, reference)
            return ce, kl

        for hook, names in by_target.items():
            mu = means[hook].to(device)
            mask = masks["splice"]
            zero_hook = replace_hook(lambda act: torch.zeros_like(act), mask)
            mean_hook = replace_hook(lambda act, mu=mu: mu.expand(flat(act).shape[0], -1), mask)
            zero[hook].add(*patched([(hook, zero_hook)]), keep)
            mean[hook].add(*patched([(hook, mean_hook)]), keep)
            for name in names:
                for convention in (primary, other) if run_other else (primary,):
                    hooks = _sae_hooks(saes[name], masks[convention])
                    spliced[convention][name].add(*patched(hooks), keep)
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
