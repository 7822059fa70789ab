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

:func:`train_toy_sae` is a small self-contained Adam loop; :func:`absorption_report` measures,
for each parent, how often its latent fails to fire on tokens where the parent is present
(absorption rate, per child) and how much of the parent direction the child latents' decoder
rows contain; :func:`compare_architectures` runs both for several architectures and seeds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from saelab.runtime import dataclass_from_dict
from saelab.saes import SAE, SAEConfig, build_sae

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- ground truth
@dataclass
class HierarchyConfig:
    """The toy's ground truth: sizes, firing statistics, magnitudes, directions."""

    n_parents: int = 4
    """Number of parent features."""
    children_per_parent: int = 4
    """Children of each parent; exactly one of them fires whenever the parent fires."""
    n_extra: int = 8
    """Independent features outside the hierarchy (they fire on their own, Bernoulli)."""
    d_model: int = 32
    """Dimension of the toy's activations."""
    parent_prob: float = 0.25
    """Probability that a given parent fires on a token (parents are independent)."""
    extra_prob: float = 0.125
    """Probability that a given extra feature fires on a token."""
    child_weights: list[float] | None = None
    """Relative probabilities of the children given their parent (the same for every parent;
    normalised to sum to 1). ``None``: uniform, 1/children_per_parent each."""
    parent_magnitude: float = 1.0
    """Mean magnitude of an active parent."""
    child_magnitude: float = 1.0
    """Mean magnitude of an active child."""
    extra_magnitude: float = 0.5
    """Mean magnitude of an active extra feature. Below the parents' and children's, so that
    an SAE short of L0 budget drops extras first: they are what a flat SAE gains by absorbing
    (see the module docstring)."""
    magnitude_noise: float = 0.1
    """Relative magnitude jitter: an active feature's value is mean * (1 + U(-noise, noise))."""
    noise_std: float = 0.0
    """Standard deviation of isotropic Gaussian noise added to every token (0: none)."""
    orthogonal: bool = True
    """Ground-truth directions are orthonormal (needs d_model >= n_features); otherwise they are
    independent random unit vectors (and overlap by about 1/sqrt(d_model))."""
    seed: int = 0
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


# ---------------------------------------------------------------------------------- training
def default_group_sizes(toy: ToyHierarchy | HierarchyConfig, width: int) -> list[int]:
    """Matryoshka groups for the toy: the first has room for the parents only."""
    n_parents = (toy.cfg if isinstance(toy, ToyHierarchy) else toy).n_parents
    if width <= n_parents:
        raise ValueError(f"width {width} leaves no latents after the {n_parents} parents")
    return [n_parents, width - n_parents]


def train_toy_sae(
    arch: str,
    toy: ToyHierarchy,
    width: int,
    k: int = 2,
    steps: int = 800,
    batch_size: int = 1024,
    lr: float = 3e-3,
    seed: int = 0,
    loss: str = "official",
    group_sizes: Sequence[int] | None = None,
    k_start: int | None = None,
    anneal_fraction: float = 0.4,
    threads: int | None = 1,
    **sae_kwargs: Any,
) -> SAE:
    """Train an SAE of ``arch`` on fresh toy tokens; returns it in eval mode.

    A plain loop: Adam (default betas) at constant ``lr``, ``steps`` batches of ``batch_size``
    new tokens each, drawn from a stream seeded by ``seed`` (which also seeds the SAE's
    initialisation). Each step: backward, drop the decoder-row-parallel gradient, Adam step,
    renormalise the decoder rows.

    k-annealing (as dictionary_learning's trainers offer): ``k`` starts at ``k_start`` and falls
    linearly to ``k`` over the first ``anneal_fraction`` of the steps, then stays there, so the
    BatchTopK threshold has the remaining steps to settle. ``k_start=None`` means
    ``min(width, 6 k)``; ``k_start=k`` turns annealing off. Without it, a Matryoshka SAE's small
    first group often ends with two latents sharing one parent (each with one child folded in)
    and another parent left to absorbing latents in the later group; starting dense lets every
    first-group latent receive gradient and find its parent before the L0 budget tightens.

    ``loss`` defaults to ``official`` (dictionary_learning's, the code the Matryoshka paper
    names): with ``bussmann`` the bias-only term of the Matryoshka loss pulls ``b_dec`` towards
    the data mean (a share of every parent direction), and on some seeds one parent then stays
    absorbed. ``loss`` picks the loss variant only: this loop has no learning-rate warm-up and
    starts ``b_dec`` at zero (``b_dec_init="geometric_median"`` is refused). Matryoshka SAEs
    default to :func:`default_group_sizes`. ``sae_kwargs`` go to
    :class:`~saelab.saes.SAEConfig` (e.g. ``dead_after_tokens``, ``aux_penalty``).

    ``threads``: torch intra-op threads while training (restored afterwards; ``None`` leaves
    the setting alone). The toy's tensors are tiny, so more threads only add synchronisation;
    on a busy 2-core machine 2 threads ran some 30x slower than 1.
    """
    if arch == "matryoshka" and group_sizes is None:
        group_sizes = default_group_sizes(toy, width)
    cfg = SAEConfig(
        arch=arch,
        d_in=toy.cfg.d_model,
        width=width,
        k=k,
        loss=loss,
        group_sizes=list(group_sizes) if group_sizes is not None else None,
        seed=seed,
        **sae_kwargs,
    )
    if cfg.b_dec_init != "zeros":
        raise ValueError("the toy trainer starts b_dec at zero; b_dec_init must be 'zeros'")
    if not 0.0 <= anneal_fraction < 1.0:
        raise ValueError(f"anneal_fraction = {anneal_fraction} must be in [0, 1)")
    k_start = min(width, 6 * k) if k_start is None else min(max(int(k_start), k), width)
    anneal_steps = int(anneal_fraction * steps) if k_start > k else 0
    sae = build_sae(cfg)
    sae.train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(10_007 * (seed + 1))
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for step in range(steps):
            if step < anneal_steps:
                sae.cfg.k = max(k, round(k_start + (k - k_start) * step / anneal_steps))
            else:
                sae.cfg.k = k
            out = sae(toy.sample(batch_size, generator=generator).x)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            sae.remove_parallel_decoder_grad()
            optimizer.step()
            sae.normalize_decoder()
    finally:
        sae.cfg.k = k
        torch.set_num_threads(previous_threads)
    sae.eval()
    return sae


# ---------------------------------------------------------------------------------- absorption
@dataclass
class AbsorptionResult:
    """How a trained SAE represents the toy's hierarchy (see :func:`absorption_report`)."""

    mean_absorption: float
    """Mean over (parent, child) pairs of the fraction of tokens where parent and child fire but
    the parent latent does not."""
    mean_parent_recall: float
    """1 - mean_absorption: how often the parent latent fires with its parent, per child."""
    mean_child_parent_cos: float
    """Mean over children of the cosine between the child latent's decoder row and the parent's
    true direction (about 0 without absorption; 1/sqrt(2) when the child latent is parent+child)."""
    min_parent_recall: float
    """Worst (parent, child) pair's parent-latent recall."""
    fvu: float
    """Fraction of variance unexplained on the evaluation tokens (eval mode)."""
    l0: float
    """Mean active latents per evaluation token."""
    dead_fraction: float
    """Fraction of latents that never fire on the evaluation tokens."""
    parents: pd.DataFrame
    """One row per parent: its matched latent, decoder cosine, firing F1/precision/recall."""
    pairs: pd.DataFrame
    """One row per (parent, child): tokens, absorption rate, parent-latent recall, the child's
    latent and its decoder's cosines with the child's and the parent's directions."""
    cosines: np.ndarray = field(repr=False)
    """Decoder-row cosines with the true directions [width, n_features]."""

    def summary(self) -> dict[str, float]:
        """The scalar results (one row of a comparison table)."""
        return {
            "absorption_rate": self.mean_absorption,
            "parent_recall": self.mean_parent_recall,
            "min_parent_recall": self.min_parent_recall,
            "child_parent_cos": self.mean_child_parent_cos,
            "fvu": self.fvu,
            "l0": self.l0,
            "dead_fraction": self.dead_fraction,
        }


def _f1_matrix(fires: Tensor, active: Tensor) -> Tensor:
    """F1 of every latent's firing [n, L] against every feature's [n, F] -> [L, F]."""
    fires_f, active_f = fires.float(), active.float()
    tp = fires_f.T @ active_f
    n_fire = fires_f.sum(0).unsqueeze(1)
    n_active = active_f.sum(0).unsqueeze(0)
    return 2 * tp / (n_fire + n_active).clamp_min(1)


@torch.no_grad()
def absorption_report(
    sae: SAE,
    toy: ToyHierarchy,
    n_eval: int = 16384,
    match: str = "cosine",
    seed: int = 12345,
) -> AbsorptionResult:
    """Measure feature absorption of ``sae`` on ``n_eval`` fresh toy tokens (in eval mode).

    Matching: each parent's latent is the one whose decoder row has the highest cosine with the
    parent's true direction (``match="cosine"``), or whose firing has the best F1 against the
    parent's (``"f1"``). Each child's latent is matched the same way among the latents that are
    not parent latents. A latent *fires* on a token when its code is non-zero (for BatchTopK and
    Matryoshka SAEs: above the inference threshold, since the SAE is put in eval mode).

    For every (parent, child) pair, on the tokens where both are active: the *absorption rate*
    is the fraction on which the parent latent does not fire, the *parent recall* its
    complement. ``child_latent_parent_cos``, the cosine of the child latent's decoder row with
    the parent's true direction, says how much of the parent the child latent has taken in
    (0 when it has not; 1/sqrt(2) for a decoder row of parent + child).

    Cosine matching finds a parent latent even when absorption left it silent, so a fully
    absorbed parent scores 1. F1 matching picks whichever latent co-fires best, which for a fully
    absorbed parent is one child's latent, so it scores 1 - P(that child).
    """
    if match not in ("cosine", "f1"):
        raise ValueError(f"match must be 'cosine' or 'f1', got {match!r}")
    sae.eval()
    batch = toy.sample(n_eval, generator=torch.Generator().manual_seed(seed))
    out = sae(batch.x)
    fires = out.codes.dense() != 0
    W_dec = sae.W_dec.detach()
    rows = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cosines = rows @ toy.directions.T  # [width, n_features]
    f1 = _f1_matrix(fires, batch.active)
    score = (cosines if match == "cosine" else f1).clone()
    parent_latents = score[:, toy.parents].argmax(dim=0)  # [P]
    score[parent_latents] = -math.inf  # a child's latent is never a parent latent
    child_latents = score[:, toy.children.reshape(-1)].argmax(dim=0).reshape(toy.children.shape)

    parent_rows, pair_rows = [], []
    for p in range(toy.cfg.n_parents):
        pf, pl = int(toy.parents[p]), int(parent_latents[p])
        parent_on, pfire = batch.active[:, pf], fires[:, pl]
        tp = int((parent_on & pfire).sum())
        parent_rows.append(
            {
                "parent": p,
                "feature": pf,
                "latent": pl,
                "decoder_cos": float(cosines[pl, pf]),
                "f1": float(f1[pl, pf]),
                "precision": tp / max(int(pfire.sum()), 1),
                "recall": tp / max(int(parent_on.sum()), 1),
                "n_tokens": int(parent_on.sum()),
            }
        )
        for j in range(toy.cfg.children_per_parent):
            cf, cl = int(toy.children[p, j]), int(child_latents[p, j])
            both = parent_on & batch.active[:, cf]
            n_both = int(both.sum())
            recall = float(pfire[both].float().mean()) if n_both else math.nan
            pair_rows.append(
                {
                    "parent": p,
                    "child": j,
                    "child_feature": cf,
                    "n_tokens": n_both,
                    "absorption_rate": 1 - recall,
                    "parent_recall": recall,
                    "parent_latent": pl,
                    "child_latent": cl,
                    "child_latent_child_cos": float(cosines[cl, cf]),
                    "child_latent_parent_cos": float(cosines[cl, pf]),
                    "child_recall": float(fires[both, cl].float().mean()) if n_both else math.nan,
                }
            )
    pairs = pd.DataFrame(pair_rows)
    return AbsorptionResult(
        mean_absorption=float(pairs["absorption_rate"].mean()),
        mean_parent_recall=float(pairs["parent_recall"].mean()),
        mean_child_parent_cos=float(pairs["child_latent_parent_cos"].mean()),
        min_parent_recall=float(pairs["parent_recall"].min()),
        fvu=float(out.fvu),
        l0=float(fires.sum(1).float().mean()),
        dead_fraction=float((~fires.any(0)).float().mean()),
        parents=pd.DataFrame(parent_rows),
        pairs=pairs,
        cosines=cosines.numpy(),
    )


# ---------------------------------------------------------------------------------- comparison
@dataclass
class ArchSpec:
    """One SAE variant of a comparison."""

    name: str
    """Label in tables and plots."""
    arch: str
    """Registered architecture (``topk``, ``batchtopk``, ``matryoshka``, ...)."""
    loss: str | None = None
    """Loss variant (see :mod:`saelab.saes.matryoshka`); ``None``: the comparison's."""
    group_sizes: list[int] | None = None
    """Matryoshka groups; ``None``: :func:`default_group_sizes`."""
    sae_kwargs: dict[str, Any] = field(default_factory=dict)
    """Other :class:`~saelab.saes.SAEConfig` fields."""

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | ArchSpec) -> ArchSpec:
        """From an architecture name (``"matryoshka"``), a ``name:loss`` pair
        (``"matryoshka:official"``), a mapping of this class's fields (extra keys go to
        ``sae_kwargs``), or an ArchSpec."""
        if isinstance(spec, ArchSpec):
            return spec
        if isinstance(spec, str):
            arch, _, loss = spec.partition(":")
            return cls(name=spec, arch=arch, loss=loss or None)
        data = dict(spec)
        arch = data.pop("arch")
        name = data.pop("name", arch)
        loss = data.pop("loss", None)
        group_sizes = data.pop("group_sizes", None)
        kwargs = dict(data.pop("sae_kwargs", {}))
        kwargs.update(data)
        clash = sorted(set(kwargs) & _SET_BY_TRAINER)
        if clash:
            raise ValueError(
                f"architecture {name!r}: {clash} are shared training settings, not per-SAE ones"
            )
        return cls(name=name, arch=arch, loss=loss, group_sizes=group_sizes, sae_kwargs=kwargs)


#: SAEConfig fields that train_toy_sae sets itself.
_SET_BY_TRAINER = frozenset({"arch", "d_in", "d_out", "width", "k", "loss", "group_sizes", "seed"})


DEFAULT_ARCHS = ("topk", "batchtopk", "matryoshka")


@dataclass
class ToyComparison:
    """Results of :func:`compare_architectures`."""

    runs: pd.DataFrame
    """One row per (arch, seed): absorption_rate, parent_recall, child_parent_cos, fvu, l0, ..."""
    pairs: pd.DataFrame
    """One row per (arch, seed, parent, child): the :attr:`AbsorptionResult.pairs` rows."""
    reports: dict[tuple[str, int], AbsorptionResult] = field(repr=False)
    """The full report of every run."""

    def by_arch(self) -> pd.DataFrame:
        """Mean, std, min and max of the absorption rate per architecture, in run order."""
        grouped = self.runs.groupby("arch", sort=False)["absorption_rate"]
        return grouped.agg(["mean", "std", "min", "max", "count"])


def _run_one(
    toy_cfg: HierarchyConfig, spec: ArchSpec, seed: int, train: dict[str, Any], evaluate: dict
) -> tuple[float, AbsorptionResult]:
    """Train and measure one (architecture, seed): (training seconds, report)."""
    toy = ToyHierarchy(toy_cfg)
    loss = spec.loss or train["loss"]
    start = time.perf_counter()
    sae = train_toy_sae(
        spec.arch,
        toy,
        **{**train, "loss": loss},
        seed=seed,
        group_sizes=spec.group_sizes,
        **spec.sae_kwargs,
    )
    seconds = time.perf_counter() - start
    return seconds, absorption_report(sae, toy, **evaluate)


def compare_architectures(
    toy_cfg: HierarchyConfig | Mapping[str, Any] | None = None,
    archs: Sequence[str | Mapping[str, Any] | ArchSpec] = DEFAULT_ARCHS,
    seeds: Sequence[int] = (0, 1, 2),
    width: int | None = None,
    k: int = 2,
    steps: int = 800,
    batch_size: int = 1024,
    lr: float = 3e-3,
    k_start: int | None = None,
    anneal_fraction: float = 0.4,
    loss: str = "official",
    n_eval: int = 16384,
    match: str = "cosine",
) -> ToyComparison:
    """Train every architecture with every seed on one toy and measure its absorption.

    ``archs`` are names (``"topk"``), ``name:loss`` pairs (``"matryoshka:bussmann"``) or
    mappings (see :meth:`ArchSpec.parse`); ``loss`` applies to those that name none. The ground
    truth is fixed by ``toy_cfg.seed``; ``seeds`` vary each SAE's initialisation and training
    tokens. ``width`` defaults to the number of ground-truth features; the training settings
    are those of :func:`train_toy_sae` and are shared by every run. Every run is evaluated on
    the same held-out tokens.
    """
    if toy_cfg is None:
        toy_cfg = HierarchyConfig()
    elif isinstance(toy_cfg, Mapping):
        toy_cfg = HierarchyConfig(**toy_cfg)
    specs = [ArchSpec.parse(a) for a in archs]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"architecture names must be unique, got {names}")
    if not specs or not seeds:
        raise ValueError("need at least one architecture and one seed")
    train = {
        "width": width or toy_cfg.n_features,
        "k": k,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "k_start": k_start,
        "anneal_fraction": anneal_fraction,
        "loss": loss,
    }
    evaluate = {"n_eval": n_eval, "match": match}
    runs, pair_frames, reports = [], [], {}
    for spec, seed in [(spec, int(seed)) for spec in specs for seed in seeds]:
        seconds, report = _run_one(toy_cfg, spec, seed, train, evaluate)
        reports[(spec.name, seed)] = report
        runs.append({"arch": spec.name, "seed": seed, **report.summary(), "train_seconds": seconds})
        pair_frames.append(report.pairs.assign(arch=spec.name, seed=seed))
        log.info(
            "%s seed %d: absorption %.3f, child-parent cos %.3f, fvu %.4f, l0 %.2f (%.1f s)",
            spec.name,
            seed,
            report.mean_absorption,
            report.mean_child_parent_cos,
            report.fvu,
            report.l0,
            seconds,
        )
    pairs = pd.concat(pair_frames, ignore_index=True)
    front = ["arch", "seed"]
    pairs = pairs[front + [c for c in pairs.columns if c not in front]]
    return ToyComparison(pd.DataFrame(runs), pairs, reports)


#: Keys of a ``toy`` params block that are not HierarchyConfig fields.
RUN_KEYS = frozenset(
    {
        "archs",
        "seeds",
        "width",
        "k",
        "steps",
        "batch_size",
        "lr",
        "k_start",
        "anneal_fraction",
        "loss",
        "n_eval",
        "match",
    }
)


def split_params(params: Mapping[str, Any]) -> tuple[HierarchyConfig, dict[str, Any]]:
    """A flat params block (HierarchyConfig fields plus :data:`RUN_KEYS`) as the toy's config and
    the other keyword arguments of :func:`compare_architectures`; unknown keys are errors."""
    toy = {k: v for k, v in params.items() if k not in RUN_KEYS}
    toy_cfg = dataclass_from_dict(
        HierarchyConfig, toy, f"toy setting (besides the run keys {sorted(RUN_KEYS)})"
    )
    return toy_cfg, {k: v for k, v in params.items() if k in RUN_KEYS}


def compare_from_params(params: Mapping[str, Any]) -> ToyComparison:
    """:func:`compare_architectures` from a flat params block (see :func:`split_params`)."""
    toy_cfg, run = split_params(params)
    return compare_architectures(toy_cfg, **run)
