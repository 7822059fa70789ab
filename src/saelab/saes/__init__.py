"""SAE architectures behind one registry, and their SAE-Lens-format storage.

``build_sae(SAEConfig(arch=...))`` makes any of them; :mod:`saelab.saes.io` saves and loads
them as ``cfg.json`` + ``sae_weights.safetensors`` that SAE-Lens loads too.
"""

from saelab.saes.base import SAE, EncodeOutput, ForwardOutput, SAEConfig, SparseCodes
from saelab.saes.batchtopk import BatchTopKSAE
from saelab.saes.jumprelu import JumpReLUSAE
from saelab.saes.matryoshka import MatryoshkaSAE, resolve_group_sizes
from saelab.saes.relu import ReLUSAE
from saelab.saes.topk import TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {
    cls.arch: cls for cls in (TopKSAE, BatchTopKSAE, MatryoshkaSAE, ReLUSAE, JumpReLUSAE)
}


def build_sae(cfg: SAEConfig) -> SAE:
    """A fresh SAE of ``cfg.arch``; an unknown architecture names the registered ones."""
    try:
        cls = ARCHITECTURES[cfg.arch]
    except KeyError:
        raise ValueError(
            f"unknown SAE architecture {cfg.arch!r}; registered: {sorted(ARCHITECTURES)}"
        ) from None
    return cls(cfg)


__all__ = [
    "ARCHITECTURES",
    "SAE",
    "BatchTopKSAE",
    "EncodeOutput",
    "ForwardOutput",
    "JumpReLUSAE",
    "MatryoshkaSAE",
    "ReLUSAE",
    "SAEConfig",
    "SparseCodes",
    "TopKSAE",
    "build_sae",
    "resolve_group_sizes",
]
