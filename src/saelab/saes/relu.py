"""Standard ReLU SAE with an L1 penalty: the "normal SAE" baseline of the co-occurrence work."""

from __future__ import annotations

from torch import Tensor

from saelab.saes.base import SAE, SparseCodes


class ReLUSAE(SAE):
    arch = "relu"
    sparse_backward = False  # about half the latents fire: dense matmuls are cheaper

    def select(self, acts: Tensor) -> SparseCodes:
        return SparseCodes.from_dense(acts)
