"""BatchTopK SAE (Bussmann et al.): k·B active entries chosen over the whole flattened batch.

In training mode the k·B largest ReLU pre-activations of the batch (over every token and the
whole dictionary at once) stay active, so L0 varies per token and averages k. An EMA of the
smallest selected activation becomes the inference threshold θ: after ``.eval()`` a latent is
active iff its activation is strictly greater than θ, which makes each token's code independent
of the rest of its batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saelab.saes.base import SAE, SAEConfig, SparseCodes

#: Entries sampled to place the candidate floor of :func:`batch_topk`.
_SAMPLE_SIZE = 65536
#: The floor aims at this many times the entries to select.
_CANDIDATE_FACTOR = 2


def _sample_stride(total: int, width: int, n_sample: int) -> int:
    """A stride about ``total / n_sample`` coprime with ``width``, so the strided sample
    visits every column (latent) and spreads over the rows."""
    stride = max(1, total // n_sample)
    while math.gcd(stride, width) != 1:
        stride += 1
    return stride


def _candidate_floor(acts: Tensor, n_select: int) -> float:
    """A value with, almost surely, at least ``n_select`` entries of ``acts`` above it and not
    many more (about ``_CANDIDATE_FACTOR`` times): an order statistic of a strided sample.
    0.0 when the selection is a large share of the matrix."""
    total = acts.numel()
    stride = _sample_stride(total, acts.shape[1], min(total, _SAMPLE_SIZE))
    sample = acts.detach().reshape(-1)[::stride]
    rank = int(_CANDIDATE_FACTOR * n_select * sample.numel() / total) + 32
    if rank >= sample.numel() // 2:
        return 0.0
    return max(float(sample.topk(rank, sorted=False).values.min()), 0.0)


def batch_topk(acts: Tensor, k: int) -> SparseCodes:
    """The ``k * n_rows`` largest entries of ``acts`` [n_rows, width], positive ones only,
    exactly, in row-major order (ties at the cut-off: the first ones in that order).

    Fast path: a floor from a strided sample leaves about 2·k·n_rows candidates (one compare
    and one ``nonzero`` over ``acts``), and the cut-off is found among those. If fewer than
    ``k * n_rows`` entries exceed the floor, the fallback takes every positive entry as a
    candidate, which is exact too. Never a sort or top-k over the whole flattened matrix.
    """
    n_rows, width = acts.shape
    n_select = k * n_rows
    floor = _candidate_floor(acts, n_select)
    flat = acts.reshape(-1)
    index = (flat > floor).nonzero().squeeze(1)
    if index.numel() < n_select and floor > 0:  # fallback: the sample's floor was too high
        index = (flat > 0).nonzero().squeeze(1)
    values = flat[index]
    if values.numel() > n_select:
        cutoff = values.topk(n_select, sorted=False).values.min()
        keep = values > cutoff
        n_ties = n_select - int(keep.sum())
        if n_ties > 0:
            tied = (values == cutoff).nonzero().squeeze(1)[:n_ties]
            keep[tied] = True
        index, values = index[keep], values[keep]
    return SparseCodes(index // width, index % width, values, n_rows, width)


def threshold_codes(acts: Tensor, threshold: Tensor) -> SparseCodes:
    """Entries strictly above ``threshold`` (a scalar or one per latent), and positive."""
    mask = (acts > threshold) & (acts > 0)
    rows, latents = mask.nonzero(as_tuple=True)
    return SparseCodes(rows, latents, acts[rows, latents], acts.shape[0], acts.shape[1])


class BatchTopKSAE(SAE):
    arch = "batchtopk"
    threshold: Tensor  # buffer: θ of inference-mode selection
    train_steps: Tensor  # buffer: training steps seen (θ starts after threshold_start_step)

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
        codes = batch_topk(acts, self.active_k)
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
