"""Several architectures and seeds trained on the toy and measured for absorption
(:func:`compare_architectures`), from a flat params block (:func:`compare_from_params`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pandas as pd

from saelab.runtime import dataclass_from_dict
from saelab.schema import section_defaults
from saelab.toy.absorption import AbsorptionResult, absorption_report
from saelab.toy.hierarchy import HierarchyConfig, ToyHierarchy
from saelab.toy.train import train_toy_sae

log = logging.getLogger("saelab.toy")


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


#: Defaults of the comparison: the schema's ``toy`` section, their one place.
_TOY = section_defaults("toy")
DEFAULT_ARCHS = tuple(_TOY["archs"])


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
        # A list of aggregations gives a DataFrame (pandas-stubs: Series | DataFrame).
        return cast(pd.DataFrame, grouped.agg(["mean", "std", "min", "max", "count"]))


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
    seeds: Sequence[int] = tuple(_TOY["seeds"]),
    width: int | None = _TOY["width"],
    k: int = _TOY["k"],
    steps: int = _TOY["steps"],
    batch_size: int = _TOY["batch_size"],
    lr: float = _TOY["lr"],
    k_start: int | None = _TOY["k_start"],
    anneal_fraction: float = _TOY["anneal_fraction"],
    loss: str = _TOY["loss"],
    n_eval: int = _TOY["n_eval"],
    match: str = _TOY["match"],
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
    pairs = cast(pd.DataFrame, pairs[front + [c for c in pairs.columns if c not in front]])
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
