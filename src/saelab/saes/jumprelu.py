"""JumpReLU SAE (inference only): latent i is active iff its pre-activation exceeds θ_i.

This is how pretrained JumpReLU SAEs (e.g. Gemma Scope) load, and how SAE-Lens stores a
BatchTopK SAE after training (one shared θ).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.saes.base import SAE, SAEConfig, SparseCodes
from saelab.saes.batchtopk import threshold_codes


class JumpReLUSAE(SAE):
    arch = "jumprelu"
    threshold: Tensor  # buffer: one threshold per latent

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(cfg.width))

    def select(self, acts: Tensor) -> SparseCodes:
        return threshold_codes(acts, self.threshold)

    def select_block(self, acts: Tensor, lo: int) -> SparseCodes:
        return threshold_codes(acts, self.threshold[lo : lo + acts.shape[1]])
