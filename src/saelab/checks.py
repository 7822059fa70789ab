"""The typed, checked pipeline config: the one function above :mod:`saelab.config` that knows
the science.

:func:`parse_config` resolves the model (its layer count and context), expands the SAE runs and
sweeps (:mod:`saelab.sweeps`, released SAEs resolved by :mod:`saelab.saes.settings`), builds the
typed :class:`~saelab.config.PipelineConfig`, and runs :func:`saelab.config.check_core` and each
analysis's own checks once (``saelab.<analysis>.settings``), keeping their resolved choices in
``cfg.analyses``. The Snakefile (``workflow/rules/common.smk``) and :func:`load_config` call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saelab.config import (
    TYPED_SECTIONS,
    CacheConfig,
    CorpusConfig,
    PipelineConfig,
    TinyConfig,
    check_core,
    from_dict,
    parse_run,
)
from saelab.cooccurrence.settings import check_cooccurrence
from saelab.darkmatter.settings import check_darkmatter
from saelab.models import ModelError, ModelInfo, resolve_model
from saelab.saes.settings import resolve_pretrained
from saelab.schema import ConfigError, deep_merge, load_yaml, validate_schema
from saelab.sweeps import expand_cache_hooks, expand_runs
from saelab.trajectories.settings import resolve_trajectories


def parse_config(config: dict[str, Any]) -> PipelineConfig:
    """Typed view of a schema-validated config dict, with every semantic check."""
    tiny = from_dict(TinyConfig, config.get("tiny", {}), "tiny")
    try:
        info = resolve_model(config["model"], tiny=tiny, model_path=config.get("model_path"))
    except ModelError as err:
        raise ConfigError(f"model: {err}") from err
    n_layers = info.n_layers
    corpora = {
        name: from_dict(CorpusConfig, spec, f"corpora.{name}")
        for name, spec in config.get("corpora", {}).items()
    }
    caches = {
        name: from_dict(
            CacheConfig,
            {**spec, "hooks": expand_cache_hooks(spec, n_layers, f"caches.{name}")},
            f"caches.{name}",
        )
        for name, spec in config.get("caches", {}).items()
    }
    run_specs, sweeps = expand_runs(config, n_layers, resolve_pretrained)
    parsed = PipelineConfig(
        model=config["model"],
        model_path=config.get("model_path"),
        device=config.get("device", "auto"),
        precision=config.get("precision", "auto"),
        corpora=corpora,
        caches=caches,
        tiny=tiny,
        saes={name: parse_run(name, spec) for name, spec in run_specs.items()},
        sweeps=sweeps,
        **{
            key: cls.from_dict(config[key], key, ConfigError) for key, cls in TYPED_SECTIONS.items()
        },
        trajectories=dict(config.get("trajectories", {})),
        pretrained_dir=str(config.get("pretrained_dir", "data/releases")),
        raw=config,
    )
    check_config(parsed, info)
    return parsed


def check_config(cfg: PipelineConfig, info: ModelInfo) -> None:
    """Semantic checks that JSON Schema cannot express, each section checked once; each
    analysis's resolved choices go to ``cfg.analyses``. Raises :class:`ConfigError`."""
    check_core(cfg, info.n_layers, info.n_ctx)
    check_cooccurrence(cfg)
    cfg.analyses["darkmatter"] = check_darkmatter(cfg)
    cfg.analyses["trajectories"] = resolve_trajectories(cfg, info.n_layers)


def load_config(*paths: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load, merge (later files win), schema-validate and check config files, as the Snakefile does."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, load_yaml(path))
    if overrides:
        merged = deep_merge(merged, overrides)
    validate_schema(merged)
    return parse_config(merged)
