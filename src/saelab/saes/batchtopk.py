"""BatchTopK SAE (Bussmann et al.): k·B active entries chosen over the whole flattened batch.

In training mode the k·B largest ReLU pre-activations of the batch (over every token and the
whole dictionary at once) stay active, so L0 varies per token and averages k. An EMA of the
smallest selected activation becomes the inference threshold θ: after ``.eval()`` a latent is
active iff its activation is strictly greater than θ, which makes each token's code independent
of the rest of its batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.saes.base import SAE, SAEConfig, SparseCodes

#: Candidates per row for the fast path of the global top-k (a multiple of k).
_CANDIDATE_FACTOR = 4


def batch_topk(acts: Tensor, k: int) -> SparseCodes:
    """The ``k * n_rows`` largest entries of ``acts`` [n_rows, width], exactly.

    Fast path: each row's top ``4k`` entries are candidates, and the global selection runs on
    those (a 4k/width fraction of the data). It is exact unless some row had more than 4k
    entries at or above the global cut-off; that is checked, and the full top-k runs instead.
    """
    n_rows, width = acts.shape
    n_select = k * n_rows
    per_row = min(width, _CANDIDATE_FACTOR * k)
    if per_row < width:
        cand_values, cand_latents = acts.topk(per_row, dim=-1, sorted=True)
        values, flat = cand_values.reshape(-1).topk(n_select, sorted=False)
        cutoff = values.min()
        # A row whose smallest candidate reaches the cut-off may hide more selected entries.
        if not bool((cand_values[:, -1] >= cutoff).any() & (cutoff > 0)):
            rows = flat // per_row
            latents = cand_latents.reshape(-1)[flat]
            return _sorted_codes(rows, latents, values, n_rows, width)
    values, flat = acts.reshape(-1).topk(n_select, sorted=False)
    return _sorted_codes(flat // width, flat % width, values, n_rows, width)


def _sorted_codes(rows, latents, values, n_rows, width) -> SparseCodes:
    keep = values > 0
    rows, latents, values = rows[keep], latents[keep], values[keep]
    order = torch.argsort(rows, stable=True)
    return SparseCodes(rows[order], latents[order], values[order], n_rows, width)


def threshold_codes(acts: Tensor, threshold: Tensor) -> SparseCodes:
    """Entries strictly above ``threshold`` (a scalar or one per latent), and positive."""
    return SparseCodes.from_dense(acts * ((acts > threshold) & (acts > 0)))


class BatchTopKSAE(SAE):
    arch = "batchtopk"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        # Bart starts θ at 0 and updates from the first step; dictionary_learning starts at -1
        # ("unset") and sets θ to the first observed minimum after threshold_start_step.
        initial = 0.0 if cfg.threshold_start_step == 0 else -1.0
        self.register_buffer("threshold", torch.tensor(initial))
        self.register_buffer("train_steps", torch.tensor(0, dtype=torch.long))

    def select(self, acts: Tensor) -> SparseCodes:
        if not self.training:
            return threshold_codes(acts, self.threshold.clamp_min(0))
        codes = batch_topk(acts, self.cfg.k)
        self._update_threshold(codes)
        return codes

    @torch.no_grad()
    def _update_threshold(self, codes: SparseCodes) -> None:
        self.train_steps += 1
        if self.train_steps <= self.cfg.threshold_start_step or codes.values.numel() == 0:
            return
        smallest = codes.values.min()
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            ema = self.cfg.threshold_ema
            self.threshold.mul_(1 - ema).add_(ema * smallest)
