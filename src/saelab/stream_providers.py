"""Where a stream's activations come from: the model's forward (:class:`ModelProvider`) or a
zarr cache read in the same order (:class:`CacheProvider`, the cached twin used by the tests
and the benchmark to check that streaming and cached training see the same batches)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from saelab.cache import open_cache, rows_of_contexts

#: A callable context indices [n] -> {hook: activations [n * context_len, width]}.
ActivationProvider = Callable[[np.ndarray], dict[str, torch.Tensor]]


class ModelProvider:
    """Activations of token contexts from an activation source (a forward that stops after the
    deepest hook: :func:`saelab.cache.activation_source`)."""

    def __init__(self, source, tokens: np.ndarray, device: str = "cpu"):
        self.source, self.tokens, self.device = source, tokens, device

    def __call__(self, contexts: np.ndarray) -> dict[str, torch.Tensor]:
        batch = torch.from_numpy(self.tokens[contexts].astype(np.int64)).to(self.device)
        acts = self.source(batch)
        # float32 whatever the forward's precision: the shuffle pool and the SAEs keep float32.
        return {hook: value.reshape(batch.numel(), -1).float() for hook, value in acts.items()}


class CacheProvider:
    """Activations of token contexts read from a zarr cache (the cached twin of
    :class:`ModelProvider`: the same stream order from stored activations)."""

    def __init__(self, path: str | Path, hooks: list[str]):
        self.group = open_cache(path)
        self.ctx = int(self.group.attrs["saelab"]["context_len"])
        self.hooks = list(hooks)

    def __call__(self, contexts: np.ndarray) -> dict[str, torch.Tensor]:
        rows = rows_of_contexts(contexts, self.ctx)
        first, last = int(rows[0]), int(rows[-1]) + 1
        contiguous = last - first == len(rows)
        out = {}
        for hook in self.hooks:
            values = self.group[hook][first:last] if contiguous else self.group[hook][rows]
            out[hook] = torch.from_numpy(np.asarray(values))
        return out
