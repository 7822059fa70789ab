"""A simplified SAEBench-style first-letter absorption rate on single-word tokens of the corpus,
from activations cached for them.

Two parts: the first-letter probe (:mod:`saelab.letter_probe`) depends on the hook's activations
only, so every SAE of a hook shares one; the absorption of an SAE (:func:`absorption_from_probe`)
is measured against it. :func:`first_letter_absorption` does both.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.codes import encode_reconstruct
from saelab.evaluate import _compact, concat_codes
from saelab.letter_probe import FirstLetterProbe, load_first_letter_probe, train_first_letter_probe
from saelab.saes.base import SAE, SparseCodes

log = logging.getLogger("saelab.absorption")


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


#: Why a transcoder gets no absorption.
TRANSCODER_REASON = "transcoder: the decoder is not in the probe's (input) space"


def _skipped(reason: str, n_tokens: int = 0, n_types: int = 0) -> FirstLetterAbsorption:
    log.info("first-letter absorption skipped: %s", reason)
    return FirstLetterAbsorption(None, None, None, None, n_tokens, n_types, {}, reason)


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
    sae: SAE, acts: Tensor, token_ids: Tensor, words: Mapping[int, str], **options: Any
) -> FirstLetterAbsorption:
    """A simplified SAEBench first-letter absorption rate on single-word corpus tokens.

    ``options`` are the keyword arguments of :func:`train_first_letter_probe` (steps 1 and 2)
    and of :func:`absorption_from_probe` (steps 3 to 5). What is computed:

    1. Tokens: rows of ``acts`` (the SAE's input hook) whose ``token_ids`` are in ``words``
       (see :func:`saelab.cache.words.single_word_tokens`), at most ``max_per_type`` random occurrences per token
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
        return _skipped(TRANSCODER_REASON)
    probe_keys = inspect.signature(train_first_letter_probe).parameters
    absorption_keys = inspect.signature(absorption_from_probe).parameters
    unknown = sorted(set(options) - set(probe_keys) - set(absorption_keys))
    if unknown:
        raise TypeError(f"first_letter_absorption: unknown options {unknown}")
    probe_options = {k: v for k, v in options.items() if k in probe_keys}
    probe = train_first_letter_probe(acts, token_ids, words, **probe_options)
    absorption_options = {k: v for k, v in options.items() if k not in probe_keys}
    return absorption_from_probe(sae, acts, probe, **absorption_options)


@torch.no_grad()
def absorption_from_probe(
    sae: SAE,
    acts: Tensor,
    probe: FirstLetterProbe,
    *,
    f1_jump_threshold: float = 0.03,
    max_main_latents: int = 10,
    full_absorption_cos_threshold: float = 0.025,
    fraction_cos_threshold: float = 0.1,
    projection_threshold: float = 0.4,
    max_absorbing_latents: int = 3,
    batch_size: int = 2048,
) -> FirstLetterAbsorption:
    """Steps 3 to 5 of :func:`first_letter_absorption`: the SAE's absorption against a probe
    made from the same ``acts`` (:func:`train_first_letter_probe`)."""
    if getattr(sae.cfg, "is_transcoder", False):
        return _skipped(TRANSCODER_REASON)
    if probe.reason is not None:
        return _skipped(probe.reason, probe.n_tokens, probe.n_types)
    if len(acts) != probe.n_acts:
        raise ValueError(
            f"the probe was made from {probe.n_acts} activation rows, these are {len(acts)}: "
            "rebuild the probe from the same cache, hook and split"
        )
    rows, ids, cls, test, predicted = probe.rows, probe.ids, probe.cls, probe.test, probe.predicted
    kept = probe.kept.tolist()
    X = acts[rows].float().cpu()
    directions = F.normalize(probe.W.T, dim=1)  # [C, d]: one global scale keeps raw directions

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
    # Both are None exactly when a letter has no true positives.
    rates = [r.full_absorption_rate for r in results.values() if r.full_absorption_rate is not None]
    fractions = [
        r.mean_absorption_fraction
        for r in results.values()
        if r.mean_absorption_fraction is not None
    ]
    total_tp = sum(r.n_true_positives for r in results.values())
    return FirstLetterAbsorption(
        full_absorption_rate=float(np.mean(rates)) if rates else None,
        mean_absorption_fraction=float(np.mean(fractions)) if fractions else None,
        pooled_full_absorption_rate=(
            sum(r.n_full_absorption for r in results.values()) / total_tp if total_tp else None
        ),
        probe_accuracy=probe.probe_accuracy,
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


def first_letter_absorption_from_probe_file(
    sae: SAE, cache_path: str | os.PathLike, probe_path: str | os.PathLike | None, **options: Any
) -> FirstLetterAbsorption:
    """:func:`absorption_from_probe` with the probe of the SAE's hook saved by
    :func:`save_first_letter_probe` (``None`` only for a transcoder, which is skipped); the word
    tokens' activations are read from the cache again, and must be the probe's."""
    if sae.cfg.is_transcoder:
        return _skipped(TRANSCODER_REASON)
    if probe_path is None:
        raise ValueError(f"SAE at {sae.cfg.hook_name}: no first-letter probe file given")
    cached = load_first_letter_probe(probe_path)
    probe, hook = cached.probe, cached.reading["hook"]
    if hook != sae.cfg.hook_name:
        raise ValueError(
            f"{probe_path} is the probe of {hook!r}, but the SAE reads {sae.cfg.hook_name!r}"
        )
    if probe.reason is not None:
        return _skipped(probe.reason, probe.n_tokens, probe.n_types)
    acts, ids = cached.activations(cache_path)
    if len(ids) != probe.n_acts or not torch.equal(ids[probe.rows], probe.ids):
        raise ValueError(
            f"the word tokens of {cache_path} are not those {probe_path} was made from (was the "
            "cache rebuilt?); rebuild the probe (rule first_letter_probe)"
        )
    return absorption_from_probe(sae, acts, probe, **options)
