"""Checks and choices of the ``darkmatter`` section, made once when the config is parsed.

:func:`check_darkmatter` checks the section against the sweeps it names and resolves every SAE
the analyses read: the width curve at ``fixed_k``, the k sweep at ``fixed_width``, the grid SAE
at both, the probe and noise SAEs, the SAEs of pursuit, components and train-on-error, and the
components' predictor hooks. The rule files read the result (``CFG.analyses["darkmatter"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saelab.config import PipelineConfig, SweepPoint
from saelab.darkmatter.scaling import ScalingError, curve_points, pick_sae
from saelab.schema import ConfigError
from saelab.sections_darkmatter import DarkmatterSection

#: Sections whose ``sae`` key picks the grid SAE they analyse (default: the fixed SAE).
SAE_SECTIONS = ("components", "train_on_error")


@dataclass(frozen=True)
class DarkmatterChoices:
    """The SAEs of the dark-matter analyses, resolved from the section and its sweep."""

    sweep: str
    """The ``sweeps`` family (width x k grid) the analyses read."""
    points: list[SweepPoint]
    """Its points, in config order."""
    width_sweep: list[str]
    """One SAE per width at ``fixed_k`` (widths ascending): the original's L0 ~ 60 curve."""
    fixed_width: int
    """``fixed_width``, or the smallest width of the grid."""
    k_sweep: list[str]
    """Every SAE of width ``fixed_width`` (k ascending): the original's 16k SAEs at every L0."""
    fixed_sae: str
    """The grid SAE at (``fixed_width``, ``fixed_k``): downstream CE's cache, and the default
    SAE of components and train-on-error."""
    probe_sae: str
    """SAE of Fig 14 (``probe_sae``, else the widest at ``fixed_k``)."""
    noise_sae: str
    """SAE of the noise simulation (``noise.sae``, else the narrowest at its largest k)."""
    pursuit_saes: list[str]
    """Grid SAEs that gradient pursuit runs on (``pursuit.saes``)."""
    section_saes: dict[str, str] = field(default_factory=dict)
    """``components`` / ``train_on_error`` -> the grid SAE it analyses."""
    component_hooks: dict[str, str] = field(default_factory=dict)
    """Label -> hook of each usable Fig 10b predictor."""
    skipped_components: dict[str, str] = field(default_factory=dict)
    """Label -> why a Fig 10b predictor is skipped."""

    @property
    def names(self) -> list[str]:
        return [point.name for point in self.points]


def check_darkmatter(cfg: PipelineConfig) -> DarkmatterChoices | None:
    """Every semantic check of the ``darkmatter`` section; its resolved choices, or None when
    the analysis is off (the default sweep name, not defined). Raises :class:`ConfigError`."""
    dm = cfg.darkmatter
    sweep = dm.sweep
    if sweep not in cfg.sweeps:
        if sweep == "darkmatter":  # the default name, not defined: the analysis is off
            return None
        raise ConfigError(
            f"darkmatter.sweep: {sweep!r} is not a `sweeps` family; defined: {sorted(cfg.sweeps)}"
        )
    points = cfg.sweeps[sweep]
    window = dm.window
    if len(window) != 2 or window[0] >= window[1]:
        raise ConfigError(f"darkmatter.window: {window} must be [start, stop) with start < stop")
    for point in points:
        run = cfg.saes[point.name]
        if run.target_hook is not None:
            raise ConfigError(
                f"sweeps.{sweep}: {point.name} is a transcoder; the dark-matter analyses need "
                "SAEs that reconstruct their own input"
            )
    try:
        curve = curve_points(points, dm.fixed_k)
    except ScalingError as err:
        raise ConfigError(f"darkmatter.fixed_k: {err}") from err
    if len({point.width for point in curve}) < 3:
        raise ConfigError(
            f"sweeps.{sweep}: the power law c + a W^-m needs at least 3 widths at k = "
            f"{curve[0].k}; the sweep has {[point.width for point in curve]}"
        )
    names = [point.name for point in points]
    for key, value in (("probe_sae", dm.probe_sae), ("noise.sae", dm.noise.sae)):
        if value is not None and value not in names:
            raise ConfigError(f"darkmatter.{key}: {value!r} is not in sweeps.{sweep}: {names}")
    baselines = dm.baselines_sweep
    if baselines is not None and baselines not in cfg.sweeps:
        raise ConfigError(
            f"darkmatter.baselines_sweep: {baselines!r} is not a `sweeps` family; "
            f"defined: {sorted(cfg.sweeps)}"
        )
    width_sweep = [point.name for point in curve]
    fixed_width, k_sweep = _k_sweep(points, dm.fixed_width)
    both = [name for name in k_sweep if name in width_sweep]
    if not both:
        raise ConfigError("no grid SAE has both darkmatter.fixed_width and darkmatter.fixed_k")
    section_saes = {section: _section_sae(dm, section, names, both[0]) for section in SAE_SECTIONS}
    hooks, skipped = _component_hooks(cfg, dm, section_saes["components"])
    try:
        probe = pick_sae(points, dm.probe_sae, "widest", dm.fixed_k)
        noise = pick_sae(points, dm.noise.sae, "narrowest_largest_k")
    except ScalingError as err:
        raise ConfigError(f"darkmatter: {err}") from err
    return DarkmatterChoices(
        sweep=sweep,
        points=list(points),
        width_sweep=width_sweep,
        fixed_width=fixed_width,
        k_sweep=k_sweep,
        fixed_sae=both[0],
        probe_sae=probe,
        noise_sae=noise,
        pursuit_saes=_pursuit_saes(dm, names, width_sweep, k_sweep),
        section_saes=section_saes,
        component_hooks=hooks,
        skipped_components=skipped,
    )


def _k_sweep(points: list[SweepPoint], width: int | None) -> tuple[int, list[str]]:
    if width is None:
        width = min(point.width for point in points)
    chosen = sorted((p for p in points if p.width == width), key=lambda p: p.k or 0)
    if not chosen:
        raise ConfigError(
            f"darkmatter.fixed_width: no SAE of the grid has width {width}; widths: "
            f"{sorted({p.width for p in points})}"
        )
    return width, [p.name for p in chosen]


def union(*lists: list[str]) -> list[str]:
    """The names of ``lists`` in first-seen order, each once."""
    return list(dict.fromkeys(name for names in lists for name in names))


def _section_sae(dm: DarkmatterSection, section: str, names: list[str], fixed_sae: str) -> str:
    name = getattr(dm, section).sae or fixed_sae
    if name not in names:
        raise ConfigError(
            f"darkmatter.{section}.sae: {name!r} is not in the grid; its SAEs: {names}"
        )
    return name


def _pursuit_saes(
    dm: DarkmatterSection, names: list[str], width_sweep: list[str], k_sweep: list[str]
) -> list[str]:
    choice = dm.pursuit.saes
    if choice == "width_sweep":
        return width_sweep
    if choice == "sweeps":
        return union(width_sweep, k_sweep)
    return names


def _component_hooks(
    cfg: PipelineConfig, dm: DarkmatterSection, name: str
) -> tuple[dict[str, str], dict[str, str]]:
    from saelab.darkmatter.components import component_hooks

    run = cfg.saes[name]
    try:
        return component_hooks(dm.components.predictors, run.hook, cfg.caches[run.cache].hooks)
    except ValueError as err:
        raise ConfigError(f"darkmatter.components.predictors: {err}") from None
