"""The Matryoshka paper's toy model of feature hierarchy, and a measure of feature absorption.

Ground truth (:class:`ToyHierarchy`): ``n_parents`` parent features, each with
``children_per_parent`` children, plus ``n_extra`` independent features, all unit directions in
``R^d_model``. A parent fires with probability ``parent_prob``; whenever it fires, exactly one of
its children fires with it (never a child without its parent). A token is the sum of the active
features' directions times their magnitudes.

A flat TopK/BatchTopK SAE under a tight L0 budget tends to *absorb* the parent: each child latent
learns ``parent + child`` and the parent latent stops firing on those tokens, so one latent per
token does the work of two. A Matryoshka SAE whose first group has room for the parents only must
reconstruct every token from that group alone, so it keeps a parent latent that fires whenever
the parent is present, whichever child comes with it (Bussmann et al. 2025, arXiv 2503.17547).

Why the defaults make the result robust. Four parents (p = 1/4), four children each, eight
extras (p = 1/8, magnitude 0.5), orthonormal in d_model = 32: a token holds on average one
parent, one child and one extra, L0 = 3. The SAEs get k = 2 and one latent per true feature
(width 28). Without absorption a token needs 3 latents, with it 2, so a flat SAE can keep
every feature only by absorbing, and absorbing costs it nothing (a latent for parent + child
reconstructs both, up to their independent 10% magnitude jitter). A Matryoshka SAE pays for
absorption in its first-prefix loss (the whole parent, magnitude 1) and instead drops the
low-magnitude extras (0.25 of squared error each), which BatchTopK selection drops first anyway.

:func:`train_toy_sae` (:mod:`~saelab.toy.train`) hands fresh toy tokens to the one training loop
(:mod:`saelab.training.loop`); :func:`absorption_report` (:mod:`~saelab.toy.absorption`)
measures, for each parent, how often its latent fails to fire on tokens where the parent is
present (absorption rate, per child) and how much of the parent direction the child latents'
decoder rows contain; :func:`compare_architectures` (:mod:`~saelab.toy.compare`) runs both for
several architectures and seeds. The ground truth is :mod:`~saelab.toy.hierarchy`.
"""

from saelab.toy.absorption import AbsorptionResult, absorption_report
from saelab.toy.compare import (
    DEFAULT_ARCHS,
    RUN_KEYS,
    ArchSpec,
    ToyComparison,
    compare_architectures,
    compare_from_params,
    split_params,
)
from saelab.toy.hierarchy import HierarchyConfig, ToyBatch, ToyHierarchy
from saelab.toy.train import default_group_sizes, train_toy_sae

__all__ = [
    "DEFAULT_ARCHS", "RUN_KEYS", "AbsorptionResult", "ArchSpec", "HierarchyConfig", "ToyBatch",
    "ToyComparison", "ToyHierarchy", "absorption_report", "compare_architectures",
    "compare_from_params", "default_group_sizes", "split_params", "train_toy_sae",
]  # fmt: skip
