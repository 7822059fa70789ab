"""Typed views of the validated pipeline config, and the checks that need no science.

``config/schema.yaml`` checks types and fills defaults (in the Snakefile, before any job runs).
This module reads and validates config files and holds the dataclasses of every section; it
imports no model, SAE or analysis code (``tests/test_imports.py`` holds it to that).
:func:`saelab.checks.parse_config` builds the typed config: it resolves the model, expands the
sweeps (:mod:`saelab.sweeps`), runs :func:`check_core` and each analysis's own checks
(``saelab.<analysis>.settings``). Every error names the config key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saelab.groups import resolve_group_sizes
from saelab.hooks import HookError, parse_hook
from saelab.runtime import dataclass_from_dict
from saelab.schema import ConfigError
from saelab.sections import (
    BudgetSection,
    CooccurrenceSection,
    EvaluationSection,
    Section,
    ToySection,
    TrackingSection,
    TrainingSection,
)
from saelab.sections_darkmatter import DarkmatterSection

#: The typed sections of the parsed config, by config key (:func:`saelab.checks.parse_config`
#: builds each from the schema-validated dict).
TYPED_SECTIONS: dict[str, type[Section]] = {
    "tracking": TrackingSection,
    "budget": BudgetSection,
    "toy": ToySection,
    "training": TrainingSection,
    "evaluation": EvaluationSection,
    "cooccurrence": CooccurrenceSection,
    "darkmatter": DarkmatterSection,
}


def from_dict(cls, data: dict[str, Any], key: str):
    """``cls(**data)`` for the config key ``key``; unknown keys are a :class:`ConfigError`."""
    return dataclass_from_dict(cls, data, key, ConfigError)


@dataclass
class CorpusConfig:
    """Where text comes from and how it becomes fixed-length token contexts."""

    source: str = "python-docs"
    """``python-docs`` (built-in, offline), ``text`` or ``jsonl`` (local files), ``hf`` (a
    Hugging Face dataset, streamed; needs the hub)."""
    paths: list[str] = field(default_factory=list)
    """Files for the ``text`` and ``jsonl`` sources."""
    dataset: str | None = None
    """Dataset name for the ``hf`` source, e.g. ``Skylion007/openwebtext``."""
    dataset_config: str | None = None
    """Dataset config name for the ``hf`` source (e.g. ``sample-10BT`` of fineweb)."""
    split: str = "train"
    """Dataset split for the ``hf`` source."""
    text_field: str = "text"
    """Field that holds the text, for ``jsonl`` and ``hf``."""
    n_tokens: int = 262_144
    """Token budget: the corpus holds ``n_tokens // context_len`` contexts."""
    context_len: int = 128
    """Tokens per context (the originals use 128, or 1024 for the dark-matter work)."""
    bos: str = "per_context"
    """``per_context``: every context starts with BOS and documents are separated by BOS
    (SAE-Lens); ``per_document``: BOS before each document, one stream cut into blocks, so BOS
    appears mid-context (bartbussmann/matryoshka_sae); ``none``."""
    seed: int = 0
    """Seed of the document shuffle."""


@dataclass
class CacheConfig:
    """One zarr activation cache: which corpus and which hooks, from one forward pass."""

    corpus: str
    """Name of an entry of ``corpora``."""
    hooks: list[str]
    """TransformerLens hook names, e.g. ``blocks.6.hook_resid_pre``."""
    dtype: str = "float16"
    """Storage dtype of activations: ``float16`` or ``float32``."""
    batch_contexts: int = 16
    """Contexts per forward pass; also the resume granularity."""
    n_tokens: int | None = None
    """Cache only the first ``n_tokens`` tokens of the corpus (rounded down to whole contexts)."""
    backend: str = "auto"
    """``auto`` (transformers where it can capture every hook, it is the faster forward on CPU;
    else TransformerLens), ``transformers`` or ``transformer_lens``."""
    layers: list[int] | str | None = None
    """Layers that hook templates holding ``{layer}`` expand over: a list or ``all``."""


@dataclass
class TinyConfig:
    """The small GPT-2-style model that ``train_tiny_lm`` trains on the corpus."""

    corpus: str = "python-docs"
    """Corpus to train the tokenizer and the model on."""
    vocab_size: int = 4096
    """Byte-level BPE vocabulary trained on the corpus."""
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 1024
    n_ctx: int = 128
    """Longest context the model accepts."""
    train_tokens: int = 2_000_000
    """Tokens seen in training (epochs over the corpus as needed)."""
    batch_size: int = 32
    """Contexts per optimiser step."""
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.05
    """Fraction of contexts held out to measure validation loss."""


@dataclass
class SAERun:
    """One named SAE or transcoder run of the ``saes`` config section."""

    name: str
    arch: str
    hook: str
    width: int
    cache: str = "main"
    target_hook: str | None = None
    group: str | None = None
    """Runs of one group train together from one pass over their cache."""
    train: dict[str, Any] = field(default_factory=dict)
    """Overrides of the shared ``training`` settings."""
    options: dict[str, Any] = field(default_factory=dict)
    """Every other key, passed to :class:`saelab.saes.SAEConfig` as is (k, group_sizes, loss, ...)."""
    pretrained: dict[str, Any] | None = None
    """A released SAE instead of a training recipe: ``{release, sae_id}`` plus what the release
    resolved to (:class:`saelab.saes.pretrained.ReleaseInfo` fields); the rule
    ``pretrained_sae`` writes it where a trained SAE would be."""

    @property
    def is_pretrained(self) -> bool:
        return self.pretrained is not None

    @property
    def group_name(self) -> str:
        return self.group or self.name

    def sae_config_kwargs(self, model_id: str) -> dict[str, Any]:
        """Keyword arguments of ``SAEConfig`` except the widths, which come from the cache."""
        return {
            "arch": self.arch,
            "width": self.width,
            "hook_name": self.hook,
            "target_hook_name": self.target_hook,
            "model_name": model_id,
            "extra": {"run": self.name},
            **self.options,
        }


@dataclass(frozen=True)
class SweepPoint:
    """One generated SAE of a ``sweeps`` family and its coordinates (None where not swept)."""

    name: str
    layer: int | None
    width: int
    k: int | None


_RUN_FIELDS = ("arch", "hook", "width", "cache", "target_hook", "group", "train", "pretrained")


def parse_run(name: str, spec: dict[str, Any]) -> SAERun:
    """The typed run of one expanded run spec: known fields, every other key in ``options``."""
    known = {key: spec[key] for key in _RUN_FIELDS if key in spec}
    options = {key: value for key, value in spec.items() if key not in _RUN_FIELDS}
    return SAERun(name=name, **known, options=options)


@dataclass
class PipelineConfig:
    """The whole validated config, built by :func:`saelab.checks.parse_config` (every default
    comes from the schema, none from here)."""

    model: str
    model_path: str | None
    device: str
    precision: str
    """``auto`` | ``float32`` | ``bfloat16`` (saelab.precision decides what ``auto`` means)."""
    corpora: dict[str, CorpusConfig]
    caches: dict[str, CacheConfig]
    tiny: TinyConfig
    saes: dict[str, SAERun]
    """Every SAE run: the ``saes`` section and the runs of every ``sweeps`` family."""
    sweeps: dict[str, list[SweepPoint]]
    """Generated SAE families (``sweeps`` section); their runs are also in ``saes``."""
    training: TrainingSection
    """Shared TrainConfig settings (saelab.train); a run's ``train`` overrides them."""
    evaluation: EvaluationSection
    toy: ToySection
    """The toy-hierarchy experiment (saelab.toy)."""
    cooccurrence: CooccurrenceSection
    """The co-occurrence analysis section (saelab.cooccurrence)."""
    darkmatter: DarkmatterSection
    """The dark-matter analysis section (saelab.darkmatter)."""
    trajectories: dict[str, Any]
    """The trajectory analysis section (typed by saelab.trajectories.settings)."""
    tracking: TrackingSection
    """Optional run tracking (``tracking.wandb``; saelab.tracking)."""
    budget: BudgetSection
    """Checks made when the DAG is built (saelab.budget)."""
    pretrained_dir: str
    """Local store of released SAEs (saelab.saes.pretrained), relative to the working directory."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    analyses: dict[str, Any] = field(default_factory=dict, repr=False)
    """Each analysis's resolved choices, from its own ``settings.check_*`` (run once, by
    :func:`saelab.checks.parse_config`): ``darkmatter`` -> ``DarkmatterChoices`` or None,
    ``trajectories`` -> ``TrajectoryChoices``."""

    def train_settings(self, run: SAERun) -> dict[str, Any]:
        return {**self.training, **run.train}

    @property
    def named_saes(self) -> dict[str, SAERun]:
        """The runs of the ``saes`` section, without the generated ``sweeps`` families."""
        swept = {point.name for points in self.sweeps.values() for point in points}
        return {name: run for name, run in self.saes.items() if name not in swept}

    @property
    def pretrained_saes(self) -> dict[str, SAERun]:
        """Released SAEs (named or in sweeps), written by the rule ``pretrained_sae``."""
        return {name: run for name, run in self.saes.items() if run.is_pretrained}

    def sae_groups(self) -> dict[str, list[SAERun]]:
        """Trained runs by training group, in config order (released SAEs are not trained)."""
        groups: dict[str, list[SAERun]] = {}
        for run in self.saes.values():
            if run.is_pretrained:
                continue
            groups.setdefault(run.group_name, []).append(run)
        return groups


def check_core(cfg: PipelineConfig, n_layers: int | None, n_ctx: int | None) -> None:
    """Checks of the model-independent sections against the model's layer count and context
    (tiny, corpora, caches, saes); the analyses check their own sections. Raises
    :class:`ConfigError`."""
    if cfg.tiny.corpus not in cfg.corpora:
        raise ConfigError(
            f"tiny.corpus: {cfg.tiny.corpus!r} is not a defined corpus; defined: {sorted(cfg.corpora)}"
        )
    for name, corpus in cfg.corpora.items():
        if corpus.source in ("text", "jsonl") and not corpus.paths:
            raise ConfigError(
                f"corpora.{name}.paths: source {corpus.source!r} needs at least one file"
            )
        if corpus.source == "hf" and not corpus.dataset:
            raise ConfigError(f"corpora.{name}.dataset: source 'hf' needs a dataset name")
        if n_ctx is not None and corpus.context_len > n_ctx:
            raise ConfigError(
                f"corpora.{name}.context_len: {corpus.context_len} exceeds the model's "
                f"context of {n_ctx} tokens"
            )
    for name, cache in cfg.caches.items():
        if cache.corpus not in cfg.corpora:
            raise ConfigError(
                f"caches.{name}.corpus: {cache.corpus!r} is not a defined corpus; "
                f"defined: {sorted(cfg.corpora)}"
            )
        if len(set(cache.hooks)) != len(cache.hooks):
            raise ConfigError(f"caches.{name}.hooks: hook names repeat: {cache.hooks}")
        for index, hook in enumerate(cache.hooks):
            try:
                parse_hook(hook, n_layers)
            except HookError as err:
                raise ConfigError(f"caches.{name}.hooks[{index}]: {err}") from err
    _check_saes(cfg)


def _check_saes(cfg: PipelineConfig) -> None:
    for name, run in cfg.saes.items():
        key = f"saes.{name}"
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{key}: SAE names may hold letters, digits, '-' and '_' only")
        if run.cache not in cfg.caches:
            raise ConfigError(
                f"{key}.cache: {run.cache!r} is not a defined cache; defined: {sorted(cfg.caches)}"
            )
        hooks = cfg.caches[run.cache].hooks
        for field_name in ("hook", "target_hook"):
            hook = getattr(run, field_name)
            if hook is not None and hook not in hooks:
                raise ConfigError(
                    f"{key}.{field_name}: {hook!r} is not cached by caches.{run.cache}; "
                    f"its hooks: {hooks}"
                )
        k = run.options.get("k", 32)
        if k > run.width:
            raise ConfigError(f"{key}.k: {k} exceeds the width {run.width}")
        if run.arch == "matryoshka":
            sizes = run.options.get("group_sizes")
            if not sizes:
                raise ConfigError(f"{key}.group_sizes: a matryoshka SAE needs group sizes")
            try:
                resolve_group_sizes(sizes, run.width)
            except ValueError as err:
                raise ConfigError(f"{key}.group_sizes: {err}") from err
    for group, runs in cfg.sae_groups().items():
        caches = {run.cache for run in runs}
        if len(caches) > 1:
            raise ConfigError(
                f"saes: group {group!r} mixes caches {sorted(caches)}; one pass reads one cache"
            )
