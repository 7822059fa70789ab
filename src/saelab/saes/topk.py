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

    @torch.no_grad()
    def infer_codes(self, xn: Tensor) -> SparseCodes:
        """Each block's top k per token are candidates; the k largest candidates are the codes."""
        if not self.streams(xn.shape[0]):
            return super().infer_codes(xn)
        values, latents = [], []
        for lo, acts in self._pre_activation_blocks(xn):
            v, i = acts.topk(min(self.cfg.k, acts.shape[1]), dim=-1, sorted=False)
            values.append(v)
            latents.append(i + lo)
        values, latents = torch.cat(values, dim=1), torch.cat(latents, dim=1)
        top, pick = values.topk(self.cfg.k, dim=-1, sorted=False)
        n_rows = xn.shape[0]
        rows = torch.arange(n_rows, device=xn.device).repeat_interleave(self.cfg.k)
        top, chosen = top.reshape(-1), latents.gather(1, pick).reshape(-1)
        keep = top > 0
        return SparseCodes(rows[keep], chosen[keep], top[keep], n_rows, self.cfg.width)
