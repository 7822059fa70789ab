"""The first-letter probe of the absorption metric (:mod:`saelab.absorption`): single-word tokens
of a hook, labelled by their first letter, and a logistic-regression probe on their activations.
It depends on the activations only, so every SAE of a hook shares one (rule
``first_letter_probe``: :func:`first_letter_probe_from_cache`, :func:`save_first_letter_probe`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.cache.words import cached_word_activations, single_word_tokens, tokens_in_cache
from saelab.runtime import savez_atomic


class FirstLetterProbe(NamedTuple):
    """The first-letter probe of one hook and the tokens it was trained and tested on: rows of
    the activations it was made from (``n_acts`` of them), so an SAE's absorption is measured
    on the same rows (:func:`absorption_from_probe`)."""

    rows: Tensor
    """Rows of the activations kept (single-word tokens of kept letters), ascending."""
    ids: Tensor
    """Their token ids."""
    cls: Tensor
    """Their class: an index into :attr:`kept`."""
    test: Tensor
    """Which of them are test tokens (bool); the rest trained the probe."""
    predicted: Tensor
    """The probe's class for each of them."""
    kept: Tensor
    """The letters with enough train and test tokens, as codes (0 = "a")."""
    W: Tensor
    """Weights [d, classes] of the logistic regression on ``(x − mu) / scale``."""
    b: Tensor
    mu: Tensor
    scale: Tensor
    probe_accuracy: float
    """Test accuracy over the kept letters."""
    n_acts: int
    """Rows of the activations the probe was made from."""
    n_tokens: int
    """Single-word tokens found (before dropping letters)."""
    n_types: int
    """Their word types."""
    reason: str | None
    """Why there is no probe (too few words or letters), else None."""


def _no_probe(reason: str, n_acts: int, n_tokens: int = 0, n_types: int = 0) -> FirstLetterProbe:
    empty = torch.zeros(0, dtype=torch.long)
    return FirstLetterProbe(
        empty, empty, empty, empty.bool(), empty, empty, torch.zeros(0, 0), torch.zeros(0),
        torch.zeros(0), torch.tensor(1.0), float("nan"), n_acts, n_tokens, n_types, reason,
    )  # fmt: skip


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


@torch.no_grad()
def train_first_letter_probe(
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
    seed: int = 0,
) -> FirstLetterProbe:
    """Steps 1 and 2 of :func:`first_letter_absorption` (the tokens and the probe), which
    depend on the activations only; no SAE is involved."""
    n_acts = len(acts)
    token_ids = token_ids.long().cpu()
    letter_of = {i: w[0].lower() for i, w in words.items() if w and w[0].isascii()}
    if not letter_of:
        return _no_probe("no single-word tokens", n_acts)
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
        return _no_probe(
            f"only {len(kept)} letter(s) have ≥ {min_tokens_per_letter} train and test tokens "
            f"among {len(rows)} single-word tokens of {n_types} types (need {min_letters})",
            n_acts,
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
    return FirstLetterProbe(
        rows, ids, cls, test, predicted, torch.tensor(kept), W, b, mu, scale, probe_accuracy,
        n_acts, len(rows), len(ids.unique()), None,
    )  # fmt: skip


class CachedProbe(NamedTuple):
    """A first-letter probe made from a cache, and how to read its activations again."""

    probe: FirstLetterProbe
    words: dict[int, str]
    """The single-word token types (id -> word) whose activations were read."""
    reading: dict[str, Any]
    """``hook``, ``split``, ``max_per_type`` and ``max_tokens`` of that read
    (:func:`saelab.cache.words.cached_word_activations`)."""

    def activations(self, cache_path: str | os.PathLike) -> tuple[Tensor, Tensor]:
        """The word tokens' (activations, token ids), read from ``cache_path`` as before."""
        return _word_activations(cache_path, self.words, self.reading)


def _word_activations(
    cache_path: str | os.PathLike, words: Mapping[int, str], reading: dict[str, Any]
) -> tuple[Tensor, Tensor]:
    r = reading
    return cached_word_activations(
        cache_path, r["hook"], words, r["max_per_type"], r["max_tokens"], r["split"]
    )


def first_letter_probe_from_cache(
    cache_path: str | os.PathLike,
    hook: str,
    tokenizer,
    *,
    split: str = "all",
    max_per_type: int | None = 8,
    max_tokens: int = 50_000,
    **options: Any,
) -> CachedProbe:
    """:func:`train_first_letter_probe` on the single-word tokens of a cache split: the
    tokenizer picks the word types present, the cache gives at most ``max_per_type`` tokens of
    each (``max_tokens`` in all) and their activations at ``hook``."""
    reading = {"hook": hook, "split": split, "max_per_type": max_per_type, "max_tokens": max_tokens}
    present = tokens_in_cache(cache_path, hook, split)
    words = single_word_tokens(tokenizer, present.tolist())
    if not words:
        reason = f"no single-word tokens among the {len(present)} token types cached"
        return CachedProbe(_no_probe(reason, 0), {}, reading)
    acts, ids = _word_activations(cache_path, words, reading)
    probe = train_first_letter_probe(acts, ids, words, max_per_type=max_per_type, **options)
    return CachedProbe(probe, dict(words), reading)


def save_first_letter_probe(path: str | os.PathLike, cached: CachedProbe) -> Path:
    """The probe, its word types and how their activations were read, as one ``.npz``
    (written atomically; the same probe gives the same bytes)."""
    probe = cached.probe
    meta = {
        **cached.reading,
        "probe_accuracy": probe.probe_accuracy, "n_acts": probe.n_acts,
        "n_tokens": probe.n_tokens, "n_types": probe.n_types, "reason": probe.reason,
        "words": {str(i): w for i, w in sorted(cached.words.items())},
    }  # fmt: skip
    tensors = {
        name: getattr(probe, name).numpy()
        for name in ("rows", "ids", "cls", "test", "predicted", "kept", "W", "b", "mu", "scale")
    }
    return savez_atomic(path, {**tensors, "meta": np.array(json.dumps(meta))})


def load_first_letter_probe(path: str | os.PathLike) -> CachedProbe:
    """What :func:`save_first_letter_probe` wrote."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        tensors = {
            name: torch.from_numpy(data[name].copy()) for name in data.files if name != "meta"
        }
    words = {int(i): w for i, w in meta.pop("words").items()}
    probe = FirstLetterProbe(
        **tensors, probe_accuracy=meta["probe_accuracy"], n_acts=meta["n_acts"],
        n_tokens=meta["n_tokens"], n_types=meta["n_types"], reason=meta["reason"],
    )  # fmt: skip
    reading = {key: meta[key] for key in ("hook", "split", "max_per_type", "max_tokens")}
    return CachedProbe(probe, words, reading)
