"""Checks of the ``cooccurrence`` section, made once when the config is parsed."""

from __future__ import annotations

from saelab.config import PipelineConfig
from saelab.schema import ConfigError


def check_cooccurrence(cfg: PipelineConfig) -> None:
    """Every semantic check of the ``cooccurrence`` section (the SAEs it compares, their widths
    and architectures, thresholds, bounds). Raises :class:`ConfigError`."""
    section = cfg.cooccurrence
    names = list(section.saes)
    if not names:
        return
    key = "cooccurrence"
    unknown = [name for name in names if name not in cfg.saes]
    if unknown:
        raise ConfigError(
            f"{key}.saes: {unknown} are not SAEs of `saes`; defined: {sorted(cfg.saes)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}.saes: names repeat: {names}")
    runs = [cfg.saes[name] for name in names]
    widths = {run.name: run.width for run in runs}
    if len(set(widths.values())) > 1:
        raise ConfigError(f"{key}.saes: the SAEs compared must share one width; got {widths}")
    if not any(run.arch == "matryoshka" for run in runs):
        raise ConfigError(
            f"{key}.saes: at least one must be a matryoshka SAE (its group sizes define the "
            f"groups); got architectures {[run.arch for run in runs]}"
        )
    if section.encoding == "train_batchtopk":
        flat = [run.name for run in runs if run.arch not in ("batchtopk", "matryoshka")]
        if flat:
            raise ConfigError(
                f"{key}.encoding: train_batchtopk needs BatchTopK-style SAEs; {flat} are not"
            )
    width = runs[0].width
    low, high = section.component_size
    if low > high or low > width:
        raise ConfigError(
            f"{key}.component_size: [{low}, {high}] needs min <= max and min <= the width {width}"
        )
    rep = section.representative
    if rep.sae is not None and rep.sae not in names:
        raise ConfigError(f"{key}.representative.sae: {rep.sae!r} is not one of {names}")
    thresholds = [float(t) for t in section.thresholds]
    if rep.threshold is not None and float(rep.threshold) not in thresholds:
        raise ConfigError(
            f"{key}.representative.threshold: {rep.threshold} is not one of {thresholds}"
        )
    if len(set(thresholds)) != len(thresholds):
        raise ConfigError(f"{key}.thresholds: values repeat: {thresholds}")
    subgraph = rep.subgraph
    if isinstance(subgraph, str) and subgraph != "auto":
        raise ConfigError(f"{key}.representative.subgraph: {subgraph!r}; use an id or 'auto'")
    for sub, field_name, bounds in (
        ("representative", "size_range", rep.size_range),
        ("pca", "all_in_size_range", section.pca.all_in_size_range),
    ):
        if bounds is not None and bounds[0] > bounds[1]:
            raise ConfigError(f"{key}.{sub}.{field_name}: {bounds} needs min <= max")
