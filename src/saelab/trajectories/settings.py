"""Typed view of the ``trajectories`` config section and its semantic checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from saelab.config import PipelineConfig
from saelab.hooks import HookError, parse_hook
from saelab.runtime import dataclass_from_dict
from saelab.schema import ConfigError

#: Sites an SAE of the analysis may read: resid_mid is the correct one (the attention output
#: has just been added); resid_post reproduces the original, which had no resid_mid SAEs.
SITES = ("hook_resid_mid", "hook_resid_post")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Prompt:
    name: str
    """Path-safe name: the ``{prompt}`` wildcard and the folder under ``plots/trajectories/``."""
    text: str
    """The prompt; BOS is prepended, and every prefix length >= 2 is analysed."""


@dataclass(frozen=True)
class TrajectoriesConfig:
    """The ``trajectories`` section, one field per schema key (every default in
    ``config/schema.yaml``, none here: build it from the validated section)."""

    prompts: list[Prompt]
    """Prompts to analyse."""
    sweep: str
    """The ``sweeps`` family holding one SAE per layer (hooks at resid_mid, or resid_post):
    trained here, or released per-layer SAEs (a family with ``pretrained``)."""
    layers: list[int] | str
    """Layers to study (each needs an SAE), or ``all`` = every layer the sweep has."""
    top_k: int
    """Cap on the firing latents recorded per step (only latents with value > 0 are ranked)."""
    T: list[int]
    """Final-rank filters of the newcomer rule; one graph per value."""
    check_tolerance: float
    """Largest relative error of the full decomposition against hook_resid_mid."""
    logit_lens_top: int
    """Next-token predictions recorded per layer by the logit lens."""
    logit_lens_lengths: str
    """``full``: logit lens for the full prompt only; ``all``: for every prefix length (one
    262k-vocabulary unembedding per length and layer on gemma-3)."""
    evolution_layers: list[int] | None
    """Layers drawn by ``trajectory_evolution_plot`` (default: the middle studied layer)."""
    evolution_plot_top: int | None
    """Ranks shown by the evolution plot (the original showed a top 40); null = every firing latent."""
    description_tokens: int
    """Top tokens named in each latent's hover description."""
    neuronpedia: dict[str, Any]
    """``{enabled: false, model, source}``: online-only Neuronpedia descriptions; ``source`` is
    a template over ``{layer}``; an API key comes from ``NEURONPEDIA_API_KEY`` if set."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrajectoriesConfig:
        data = dict(data)
        prompts = []
        for i, prompt in enumerate(data.pop("prompts", [])):
            if not isinstance(prompt, dict) or set(prompt) != {"name", "text"}:
                raise ConfigError(
                    f"trajectories.prompts[{i}]: expected {{name: ..., text: ...}}, got {prompt!r}"
                )
            prompts.append(Prompt(str(prompt["name"]), str(prompt["text"])))
        return dataclass_from_dict(cls, {**data, "prompts": prompts}, "trajectories", ConfigError)

    @property
    def prompt_names(self) -> list[str]:
        return [prompt.name for prompt in self.prompts]


def sweep_layers(cfg, sweep: str) -> dict[int, str]:
    """layer -> SAE name of a ``sweeps`` family, checking it is one SAE per layer at a
    supported site."""
    if sweep not in cfg.sweeps:
        raise ConfigError(
            f"trajectories.sweep: {sweep!r} is not a sweeps family; defined: {sorted(cfg.sweeps)}"
        )
    by_layer: dict[int, str] = {}
    for point in cfg.sweeps[sweep]:
        hook = cfg.saes[point.name].hook
        try:
            site = parse_hook(hook)
        except HookError as err:
            raise ConfigError(f"sweeps.{sweep}: {err}") from err
        if site.site not in SITES:
            raise ConfigError(
                f"sweeps.{sweep}: SAE {point.name!r} reads {hook!r}; the trajectory analysis "
                f"needs SAEs at {' or '.join(SITES)}"
            )
        if site.layer in by_layer:
            raise ConfigError(
                f"sweeps.{sweep}: layer {site.layer} has two SAEs ({by_layer[site.layer]!r}, "
                f"{point.name!r}); the trajectory analysis needs exactly one per layer"
            )
        by_layer[site.layer] = point.name
    return dict(sorted(by_layer.items()))


def studied_layers(cfg, traj: TrajectoriesConfig, n_layers: int | None) -> list[int]:
    """The layers of the analysis, checked against the SAEs available."""
    available = set(sweep_layers(cfg, traj.sweep))
    if isinstance(traj.layers, str):  # the schema allows one string: "all"
        return sorted(available)
    missing = sorted(set(traj.layers) - available)
    if missing:
        raise ConfigError(
            f"trajectories.layers: {missing} have no SAE in sweeps.{traj.sweep} "
            f"(its layers: {sorted(available)})"
        )
    return sorted(set(traj.layers))


def check_trajectories(cfg, n_layers: int | None) -> TrajectoriesConfig:
    """Every semantic check of the section; returns its typed view."""
    traj = TrajectoriesConfig.from_dict(cfg.trajectories)
    names = traj.prompt_names
    for prompt in traj.prompts:
        if not _NAME_RE.match(prompt.name):
            raise ConfigError(
                f"trajectories.prompts: name {prompt.name!r} may hold letters, digits, '-' and '_' only"
            )
        if not prompt.text.strip():
            raise ConfigError(f"trajectories.prompts: prompt {prompt.name!r} has no text")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"trajectories.prompts: names repeat: {repeated}")
    layers = studied_layers(cfg, traj, n_layers)
    if len(layers) < 2:
        raise ConfigError(
            f"trajectories.layers: {layers} is one layer; edges join consecutive studied layers, "
            "so the analysis needs at least two"
        )
    bad = sorted(set(traj.evolution_layers or []) - set(layers))
    if bad:
        raise ConfigError(
            f"trajectories.evolution_layers: {bad} are not studied layers; studied: {layers}"
        )
    if not traj.T or any(t < 0 for t in traj.T) or len(set(traj.T)) != len(traj.T):
        raise ConfigError(f"trajectories.T: {traj.T} must be distinct non-negative ranks")
    if traj.neuronpedia.get("enabled") and not traj.neuronpedia.get("model"):
        raise ConfigError(
            "trajectories.neuronpedia: enabled needs model (e.g. gemma-2-2b) and source"
        )
    return traj


def evolution_plot_layers(traj: TrajectoriesConfig, layers: list[int]) -> list[int]:
    """The layers drawn by the evolution plot: configured, or the middle studied layer."""
    return list(traj.evolution_layers) if traj.evolution_layers else [layers[len(layers) // 2]]


@dataclass(frozen=True)
class TrajectoryChoices:
    """The checked section and the layers it studies (none without prompts)."""

    settings: TrajectoriesConfig
    layers: list[int]


def resolve_trajectories(cfg: PipelineConfig, n_layers: int | None) -> TrajectoryChoices:
    """The section checked once (:func:`check_trajectories`, only when it has prompts: without
    them there is nothing to analyse, so no SAEs are needed) and its studied layers."""
    traj = TrajectoriesConfig.from_dict(cfg.trajectories)
    if not traj.prompts:
        return TrajectoryChoices(traj, [])
    traj = check_trajectories(cfg, n_layers)
    return TrajectoryChoices(traj, studied_layers(cfg, traj, n_layers))
