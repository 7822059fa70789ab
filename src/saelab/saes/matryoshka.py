"""Matryoshka BatchTopK SAE: nested prefixes of the dictionary each reconstruct the input.

Selection is BatchTopK, once over the whole dictionary. The latents form nested groups
(``group_sizes``, individual sizes summing to ``width``); prefix g reconstructs with the first
g groups: r_g = b_dec + Σ_{h≤g} f[G_h] W_dec[G_h]. The three losses found in the originals:

* ``bussmann`` (bartbussmann/matryoshka_sae, seeds 000 and 001; the default): the mean over
  G+1 terms, the bias-only reconstruction r_0 = b_dec included, of the element-mean MSE;
  b_enc unused; aux loss unnormalised.
* ``official`` (dictionary_learning's MatryoshkaBatchTopKTrainer, which the paper names):
  per-prefix squared error summed over dimensions and averaged over the batch, weighted by
  w_g = 1/G and then averaged over g again (so each prefix counts 1/G², as coded); b_enc used;
  aux loss normalised by the residual's variance; b_dec initialised at the geometric median.
* ``saelens`` (sae_lens MatryoshkaBatchTopKTrainingSAE): the plain sum over prefixes of the
  summed-over-dimensions squared error.
"""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor

from saelab.saes.base import SAEConfig, SparseCodes, sparse_decode
from saelab.saes.batchtopk import BatchTopKSAE


def resolve_group_sizes(group_sizes: list[int], width: int) -> list[int]:
    """Individual group sizes from individual or cumulative (strictly increasing, ending at
    ``width``) sizes; errors name what is wrong."""
    sizes = [int(s) for s in group_sizes]
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"group sizes must be positive integers, got {group_sizes}")
    if sum(sizes) == width:
        return sizes
    if sizes[-1] == width and all(a < b for a, b in pairwise(sizes)):
        return [sizes[0]] + [b - a for a, b in pairwise(sizes)]
    raise ValueError(
        f"group sizes {group_sizes} fit neither form for width {width}: individual sizes must "
        f"sum to {width}; cumulative prefixes must increase and end at {width}"
    )


class MatryoshkaSAE(BatchTopKSAE):
    arch = "matryoshka"

    def __init__(self, cfg: SAEConfig):
        if not cfg.group_sizes:
            raise ValueError("a matryoshka SAE needs group_sizes")
        cfg.group_sizes = resolve_group_sizes(cfg.group_sizes, cfg.width)
        super().__init__(cfg)
        bounds, start = [], 0
        for size in cfg.group_sizes:
            bounds.append((start, start + size))
            start += size
        self.group_bounds = bounds

    def prefix_contributions(self, codes: SparseCodes) -> list[Tensor]:
        """Each group's decoded contribution (no bias), smallest group first."""
        return [
            sparse_decode(codes.select((codes.latents >= lo) & (codes.latents < hi)), self.W_dec)
            for lo, hi in self.group_bounds
        ]

    def reconstruction_loss(self, codes: SparseCodes, target: Tensor):
        outputs, running = [], self.b_dec.expand_as(target)
        for contribution in self.prefix_contributions(codes):
            running = running + contribution
            outputs.append(running)
        variant = self.cfg.loss
        if variant == "bussmann":
            terms = [(self.b_dec - target).pow(2).mean()]
            terms += [(out - target).pow(2).mean() for out in outputs]
            return sum(terms) / len(terms), outputs
        per_prefix = [(out - target).pow(2).sum(dim=-1).mean() for out in outputs]
        if variant == "official":
            weight = 1.0 / len(per_prefix)
            return sum(weight * term for term in per_prefix) / len(per_prefix), outputs
        return sum(per_prefix), outputs
