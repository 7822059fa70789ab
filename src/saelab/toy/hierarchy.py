"""The toy's ground truth: a hierarchy of parent, child and extra features, and its
tokens (see :mod:`saelab.toy`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saelab.schema import section_defaults

#: Defaults of HierarchyConfig: the schema's ``toy`` section, their one place.
_DEFAULTS = section_defaults("toy")


@dataclass
class HierarchyConfig:
    """The toy's ground truth: sizes, firing statistics, magnitudes, directions."""

    n_parents: int = _DEFAULTS["n_parents"]
    """Number of parent features."""
    children_per_parent: int = _DEFAULTS["children_per_parent"]
    """Children of each parent; exactly one of them fires whenever the parent fires."""
    n_extra: int = _DEFAULTS["n_extra"]
    """Independent features outside the hierarchy (they fire on their own, Bernoulli)."""
    d_model: int = _DEFAULTS["d_model"]
    """Dimension of the toy's activations."""
    parent_prob: float = _DEFAULTS["parent_prob"]
    """Probability that a given parent fires on a token (parents are independent)."""
    extra_prob: float = _DEFAULTS["extra_prob"]
    """Probability that a given extra feature fires on a token."""
    child_weights: list[float] | None = _DEFAULTS["child_weights"]
    """Relative probabilities of the children given their parent (the same for every parent;
    normalised to sum to 1). ``None``: uniform, 1/children_per_parent each."""
    parent_magnitude: float = _DEFAULTS["parent_magnitude"]
    """Mean magnitude of an active parent."""
    child_magnitude: float = _DEFAULTS["child_magnitude"]
    """Mean magnitude of an active child."""
    extra_magnitude: float = _DEFAULTS["extra_magnitude"]
    """Mean magnitude of an active extra feature. Below the parents' and children's, so that
    an SAE short of L0 budget drops extras first: they are what a flat SAE gains by absorbing
    (see the module docstring)."""
    magnitude_noise: float = _DEFAULTS["magnitude_noise"]
    """Relative magnitude jitter: an active feature's value is mean * (1 + U(-noise, noise))."""
    noise_std: float = _DEFAULTS["noise_std"]
    """Standard deviation of isotropic Gaussian noise added to every token (0: none)."""
    orthogonal: bool = _DEFAULTS["orthogonal"]
    """Ground-truth directions are orthonormal (needs d_model >= n_features); otherwise they are
    independent random unit vectors (and overlap by about 1/sqrt(d_model))."""
    seed: int = _DEFAULTS["seed"]
    """Seeds the ground-truth directions and the default sampling stream."""

    def __post_init__(self):
        if self.n_parents < 1 or self.children_per_parent < 1 or self.n_extra < 0:
            raise ValueError(
                "need n_parents >= 1, children_per_parent >= 1 and n_extra >= 0, got "
                f"{self.n_parents}, {self.children_per_parent}, {self.n_extra}"
            )
        for name in ("parent_prob", "extra_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} = {value} must be a probability in [0, 1]")
        if not 0.0 <= self.magnitude_noise < 1.0:
            raise ValueError(f"magnitude_noise = {self.magnitude_noise} must be in [0, 1)")
        if self.noise_std < 0:
            raise ValueError(f"noise_std = {self.noise_std} must be >= 0")
        if self.child_weights is not None:
            weights = [float(w) for w in self.child_weights]
            if len(weights) != self.children_per_parent or any(w < 0 for w in weights):
                raise ValueError(
                    f"child_weights must be {self.children_per_parent} non-negative numbers, "
                    f"got {self.child_weights}"
                )
            if sum(weights) <= 0:
                raise ValueError("child_weights must not all be zero")
            self.child_weights = weights
        if self.orthogonal and self.d_model < self.n_features:
            raise ValueError(
                f"orthogonal directions need d_model >= n_features ({self.n_features}), got "
                f"d_model = {self.d_model}; raise d_model or set orthogonal=False"
            )

    @property
    def n_children(self) -> int:
        return self.n_parents * self.children_per_parent

    @property
    def n_features(self) -> int:
        return self.n_parents + self.n_children + self.n_extra

    @property
    def child_probs(self) -> list[float]:
        """P(child j | its parent fires), normalised."""
        if self.child_weights is None:
            return [1.0 / self.children_per_parent] * self.children_per_parent
        total = sum(self.child_weights)
        return [w / total for w in self.child_weights]

    def expected_l0(self) -> float:
        """Mean number of active ground-truth features per token (parents and children count
        separately)."""
        return 2 * self.n_parents * self.parent_prob + self.n_extra * self.extra_prob

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ToyBatch(NamedTuple):
    """Tokens sampled from the toy and the ground truth that made them."""

    x: Tensor
    """Activations [n, d_model]."""
    active: Tensor
    """Which features fire, bool [n, n_features]."""
    values: Tensor
    """Feature magnitudes [n, n_features] (0 where inactive)."""


class ToyHierarchy:
    """Samples tokens from a :class:`HierarchyConfig`.

    Feature indices: parents ``0..P-1``; then the children, parent ``p``'s ``j``-th child at
    ``P + p * C + j``; then the extra features.
    """

    def __init__(self, cfg: HierarchyConfig):
        self.cfg = cfg
        P, C = cfg.n_parents, cfg.children_per_parent
        self.parents = torch.arange(P)
        """Feature index of each parent [P]."""
        self.children = P + torch.arange(P * C).reshape(P, C)
        """Feature indices of each parent's children [P, C]."""
        self.extras = torch.arange(P + P * C, cfg.n_features)
        """Feature indices of the independent features [n_extra]."""
        parent_of = torch.full((cfg.n_features,), -1, dtype=torch.long)
        parent_of[self.children.reshape(-1)] = torch.arange(P).repeat_interleave(C)
        self.parent_of = parent_of
        """Parent index (0..P-1) of every feature; -1 for parents and extras [n_features]."""
        generator = torch.Generator().manual_seed(cfg.seed)
        gaussian = torch.randn(cfg.d_model, cfg.n_features, generator=generator)
        if cfg.orthogonal:
            q, r = torch.linalg.qr(gaussian)  # [d, n_features], orthonormal columns
            directions = (q * torch.sign(torch.diagonal(r))).T
        else:
            directions = gaussian.T / gaussian.T.norm(dim=1, keepdim=True)
        self.directions = directions.contiguous()
        """Unit ground-truth directions [n_features, d_model]."""
        means = torch.empty(cfg.n_features)
        means[self.parents] = cfg.parent_magnitude
        means[self.children.reshape(-1)] = cfg.child_magnitude
        means[self.extras] = cfg.extra_magnitude
        self.mean_magnitudes = means
        """Mean magnitude of each feature when active [n_features]."""
        cdf = torch.tensor(cfg.child_probs, dtype=torch.float64).cumsum(0)
        self._child_cdf = (cdf / cdf[-1]).float()
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        """Default sampling stream (advances with every :meth:`sample` call)."""

    @property
    def n_features(self) -> int:
        return self.cfg.n_features

    def feature_names(self) -> list[str]:
        """``p{i}`` for parents, ``p{i}c{j}`` for children, ``e{i}`` for extras."""
        C = self.cfg.children_per_parent
        names = [f"p{i}" for i in range(self.cfg.n_parents)]
        names += [f"p{i // C}c{i % C}" for i in range(self.cfg.n_children)]
        names += [f"e{i}" for i in range(self.cfg.n_extra)]
        return names

    def sample(self, n: int, generator: torch.Generator | None = None) -> ToyBatch:
        """``n`` tokens; ``generator`` defaults to the toy's own stream."""
        cfg, g = self.cfg, generator if generator is not None else self.generator
        P, C = cfg.n_parents, cfg.children_per_parent
        parent_on = torch.rand(n, P, generator=g) < cfg.parent_prob
        # each parent's child by inverse CDF (drawn for every parent, kept where it fires)
        choice = torch.searchsorted(self._child_cdf, torch.rand(n, P, generator=g), right=True)
        child_on = (choice.clamp_max(C - 1).unsqueeze(-1) == torch.arange(C)) & parent_on[..., None]
        extra_on = torch.rand(n, cfg.n_extra, generator=g) < cfg.extra_prob
        # columns in feature order: parents, children (parent-major), extras
        active = torch.cat([parent_on, child_on.reshape(n, P * C), extra_on], dim=1)
        rows, features = active.nonzero(as_tuple=True)
        jitter = 1 + cfg.magnitude_noise * (2 * torch.rand(rows.numel(), generator=g) - 1)
        values = torch.zeros(n, cfg.n_features)
        values[rows, features] = self.mean_magnitudes[features] * jitter
        x = values @ self.directions
        if cfg.noise_std:
            x = x + cfg.noise_std * torch.randn(n, cfg.d_model, generator=g)
        return ToyBatch(x, active, values)
