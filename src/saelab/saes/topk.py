"""TopK SAE: the k largest ReLU pre-activations of each token stay active."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.saes.base import SAE, SparseCodes


def topk_per_row(acts: Tensor, k: int) -> SparseCodes:
    """Keep each row's ``k`` largest entries (and only positive ones)."""
    n_rows, width = acts.shape
    values, latents = acts.topk(k, dim=-1, sorted=False)
    rows = torch.arange(n_rows, device=acts.device).repeat_interleave(k)
    values, latents = values.reshape(-1), latents.reshape(-1)
    keep = values > 0
    return SparseCodes(rows[keep], latents[keep], values[keep], n_rows, width)


class TopKSAE(SAE):
    arch = "topk"

    def select(self, acts: Tensor) -> SparseCodes:
        return topk_per_row(acts, self.active_k)
