"""Typed views of the validated pipeline config.

``config/schema.yaml`` checks types and fills defaults (in the Snakefile, before any job runs);
:func:`check_config` then checks what a schema cannot: that the model is known, that every hook
name is one saelab can cache, that layers exist, and that caches name defined corpora. Every
error names the config key and what is allowed.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from saelab.hooks import HookError, parse_hook

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"


class ConfigError(ValueError):
    """A config value that is wrong, with the key that holds it and what is allowed."""


def dataclass_from_dict(cls, data: dict[str, Any], what: str, error: type[Exception] = ValueError):
    """``cls(**data)``, refusing keys ``cls`` has no field for; the error names them and the
    allowed ones."""
    allowed = sorted(f.name for f in fields(cls))
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise error(f"unknown {what} key(s) {unknown}; allowed: {allowed}")
    return cls(**data)


def _from_dict(cls, data: dict[str, Any], key: str):
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


#: Keys of a sweep that may hold a list (or, for ``layer``, ``all``); their product is the family.
SWEEP_AXES = ("layer", "width", "k")
_AXIS_PREFIX = {"layer": "l", "width": "w", "k": "k"}


def _layer_list(value: Any, n_layers: int | None, key: str) -> list[int]:
    if value == "all":
        if n_layers is None:
            raise ConfigError(
                f"{key}: 'all' needs a model whose layer count saelab knows; list the layers"
            )
        return list(range(n_layers))
    layers = list(value) if isinstance(value, list) else [value]
    for layer in layers:
        if not isinstance(layer, int) or layer < 0 or (n_layers is not None and layer >= n_layers):
            allowed = f"0..{n_layers - 1}" if n_layers is not None else "non-negative integers"
            raise ConfigError(
                f"{key}: layer {layer!r} is out of range; allowed: {allowed} or 'all'"
            )
    return layers


def expand_cache_hooks(spec: dict[str, Any], n_layers: int | None, key: str) -> list[str]:
    """The cache's hook list with every ``{layer}`` template expanded over ``layers``."""
    hooks: list[str] = []
    templated = [hook for hook in spec["hooks"] if "{layer}" in hook]
    if templated and spec.get("layers") is None:
        raise ConfigError(
            f"{key}.layers: hooks {templated} hold '{{layer}}'; give layers: [..] or all"
        )
    layers = _layer_list(spec["layers"], n_layers, f"{key}.layers") if templated else []
    for hook in spec["hooks"]:
        if "{layer}" in hook:
            hooks.extend(hook.format(layer=layer) for layer in layers)
        else:
            hooks.append(hook)
    return hooks


def expand_sweep(
    sweep: str, spec: dict[str, Any], n_layers: int | None
) -> tuple[dict[str, dict[str, Any]], list[SweepPoint]]:
    """Run specs (as in ``saes``) and points of one ``sweeps`` family: the product of its axes.

    ``hook``, ``target_hook``, ``group`` and ``name`` are templates over ``{layer}``, ``{width}``
    and ``{k}`` (a ``group`` template splits the family into several training groups);
    the default name is the sweep name plus one ``l``/``w``/``k`` tag per swept axis.
    """
    key = f"sweeps.{sweep}"
    if spec.get("pretrained") is not None:
        return _expand_release_family(sweep, spec, n_layers)
    axes: dict[str, list[Any]] = {}
    for axis in SWEEP_AXES:
        if axis not in spec:
            continue
        if axis == "layer":
            axes[axis] = _layer_list(spec[axis], n_layers, f"{key}.layer")
        else:
            axes[axis] = list(spec[axis]) if isinstance(spec[axis], list) else [spec[axis]]
    if "{layer}" in str(spec.get("hook", "")) and "layer" not in axes:
        raise ConfigError(f"{key}.layer: the hook {spec['hook']!r} holds '{{layer}}'; give layer")
    swept = [axis for axis, values in axes.items() if len(values) > 1 or axis == "layer"]
    default_name = sweep + "".join(f"-{_AXIS_PREFIX[axis]}{{{axis}}}" for axis in swept)
    template = spec.get("name") or default_name
    base = {k: v for k, v in spec.items() if k not in (*SWEEP_AXES, "name")}
    base["group"] = base.get("group") or sweep
    runs: dict[str, dict[str, Any]] = {}
    points: list[SweepPoint] = []
    names = list(axes)
    for values in itertools.product(*(axes[name] for name in names)):
        coords = dict(zip(names, values, strict=True))
        fmt = {"layer": coords.get("layer"), "width": coords.get("width"), "k": coords.get("k")}
        run = dict(base)
        for field_name in ("hook", "target_hook", "group"):
            if isinstance(run.get(field_name), str):
                run[field_name] = run[field_name].format(**fmt)
        run["width"] = coords["width"]
        if "k" in coords:
            run["k"] = coords["k"]
        name = template.format(**fmt)
        if name in runs:
            raise ConfigError(f"{key}.name: the template {template!r} gives {name!r} twice")
        runs[name] = run
        points.append(SweepPoint(name, coords.get("layer"), coords["width"], coords.get("k")))
    return runs, points


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _expand_release_family(
    sweep: str, spec: dict[str, Any], n_layers: int | None
) -> tuple[dict[str, dict[str, Any]], list[SweepPoint]]:
    """A ``sweeps`` family of released SAEs: ``pretrained.sae_id`` is a list of ids, or a template
    over the fields of ``pretrained.points`` (e.g. Gemma Scope's released ``(width, l0)`` pairs)
    or, without points, over the product of the ``layer``/``width``/``k`` axes.

    A point's ``k`` (the dark-matter grid's L0 axis) is its ``k`` field, else its ``l0`` field;
    its width and (unless given) layer come from the release when the config is parsed.
    """
    key = f"sweeps.{sweep}.pretrained"
    pre = dict(spec["pretrained"])
    if not isinstance(pre, dict) or not {"release", "sae_id"} <= set(pre):
        raise ConfigError(f"{key}: needs release and sae_id (an id, a list of ids or a template)")
    release, ids, listed = pre["release"], pre["sae_id"], pre.get("points")
    axes_given = [axis for axis in SWEEP_AXES if axis in spec]
    entries: list[tuple[dict[str, Any], str]] = []
    if isinstance(ids, list):
        if listed or axes_given:
            raise ConfigError(
                f"{key}.sae_id: a list of ids takes no points and no {list(SWEEP_AXES)} axes; "
                "use a template over the points' fields instead"
            )
        entries = [({}, str(sae_id)) for sae_id in ids]
    else:
        if listed is not None:
            if axes_given:
                raise ConfigError(
                    f"{key}.points: give the released points or the axes {axes_given}, not both"
                )
            coords_list = [dict(point) for point in listed]
        else:
            axes = {
                axis: _layer_list(spec[axis], n_layers, f"sweeps.{sweep}.layer")
                if axis == "layer"
                else (list(spec[axis]) if isinstance(spec[axis], list) else [spec[axis]])
                for axis in axes_given
            }
            coords_list = [
                dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())
            ]
        for coords in coords_list:
            fmt = {**coords, "l0": coords.get("l0", coords.get("k"))}
            try:
                entries.append((coords, str(ids).format(**fmt)))
            except (KeyError, IndexError) as err:
                raise ConfigError(
                    f"{key}.sae_id: the template {ids!r} needs field {err}; the point has "
                    f"{sorted(coords)}"
                ) from None
    if not entries:
        raise ConfigError(f"{key}: the family is empty")
    varying = [
        name
        for name in dict.fromkeys(k for coords, _ in entries for k in coords)
        if len({str(coords.get(name)) for coords, _ in entries}) > 1 or name == "layer"
    ]
    from saelab.saes.pretrained import safe_name

    base = {k: v for k, v in spec.items() if k not in (*SWEEP_AXES, "name", "pretrained")}
    runs: dict[str, dict[str, Any]] = {}
    points: list[SweepPoint] = []
    for index, (coords, sae_id) in enumerate(entries):
        if spec.get("name"):
            name = spec["name"].format(**{**coords, "i": index})
        elif coords:
            tags = "".join(f"-{_AXIS_PREFIX.get(f, f + '_')}{coords[f]}" for f in varying)
            name = sweep + (tags or f"-{index}")
        else:
            name = f"{sweep}-{safe_name(sae_id)}"
        if name in runs:
            raise ConfigError(f"sweeps.{sweep}.name: two points of the family are named {name!r}")
        run = {**base, "pretrained": {"release": release, "sae_id": sae_id}}
        fmt = {"layer": coords.get("layer"), "width": coords.get("width"), "k": coords.get("k")}
        for field_name in ("hook", "target_hook"):  # restated templates, checked on resolving
            if isinstance(run.get(field_name), str):
                run[field_name] = run[field_name].format(**fmt)
        if isinstance(coords.get("width"), int):
            run["width"] = coords["width"]
        runs[name] = run
        k = _int_or_none(coords.get("k", coords.get("l0")))
        points.append(SweepPoint(name, _int_or_none(coords.get("layer")), 0, k))
    return runs, points


_RUN_FIELDS = ("arch", "hook", "width", "cache", "target_hook", "group", "train", "pretrained")
#: What a released SAE's config may say besides ``pretrained``: where its activations are
#: cached, and restated facts of the release (checked against it).
_PRETRAINED_KEYS = {"pretrained", "cache", "arch", "hook", "width", "target_hook", "k"}


def _parse_run(name: str, spec: dict[str, Any]) -> SAERun:
    known = {key: spec[key] for key in _RUN_FIELDS if key in spec}
    options = {key: value for key, value in spec.items() if key not in _RUN_FIELDS}
    return SAERun(name=name, **known, options=options)


def _resolve_pretrained(
    name: str, spec: dict[str, Any], given: dict[str, Any], store: str
) -> dict[str, Any]:
    """The run spec of a released SAE with its hook, width and architecture from the release.

    ``given`` is the spec as the config file wrote it (before the schema's defaults): a key
    it restates must agree with the release, else the error names both values.
    """
    from saelab.saes.io import SAELoadError
    from saelab.saes.pretrained import resolve_release

    key = f"saes.{name}"
    extra = sorted(set(given) - _PRETRAINED_KEYS)
    if extra:
        raise ConfigError(
            f"{key}: a pretrained SAE takes no training recipe; remove {extra} (allowed beside "
            f"pretrained: {sorted(_PRETRAINED_KEYS - {'pretrained'})})"
        )
    pre = spec["pretrained"]
    if not isinstance(pre, dict) or not {"release", "sae_id"} <= set(pre):
        raise ConfigError(f"{key}.pretrained: needs release and sae_id, got {pre!r}")
    try:
        info = resolve_release(str(pre["release"]), str(pre["sae_id"]), store)
    except SAELoadError as err:
        raise ConfigError(f"{key}.pretrained: {err}") from None
    resolved = {
        "arch": info.arch,
        "hook": info.hook,
        "width": info.d_sae,
        "target_hook": info.hook_out if info.is_transcoder else None,
        "k": info.k,
    }
    for field_name, value in resolved.items():
        if field_name in given and given[field_name] != value:
            raise ConfigError(
                f"{key}.{field_name}: the config says {given[field_name]!r} but release "
                f"{info.release!r} / {info.sae_id!r} has {value!r}; remove the key (it comes "
                "from the release) or fix it"
            )
    run = {field_name: value for field_name, value in resolved.items() if value is not None}
    run["cache"] = spec.get("cache", "main")
    run["pretrained"] = {"release": info.release, "sae_id": info.sae_id, "info": asdict(info)}
    return run


@dataclass
class PipelineConfig:
    """The whole validated config."""

    model: str
    corpora: dict[str, CorpusConfig]
    caches: dict[str, CacheConfig]
    tiny: TinyConfig
    model_path: str | None = None
    device: str = "auto"
    precision: str = "auto"
    """``auto`` | ``float32`` | ``bfloat16`` (saelab.precision decides what ``auto`` means)."""
    saes: dict[str, SAERun] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    """Shared TrainConfig settings (saelab.train)."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    toy: dict[str, Any] = field(default_factory=dict)
    sweeps: dict[str, list[SweepPoint]] = field(default_factory=dict)
    """Generated SAE families (``sweeps`` section); their runs are also in ``saes``."""
    cooccurrence: dict[str, Any] = field(default_factory=dict)
    """The co-occurrence analysis section (saelab.cooccurrence)."""
    darkmatter: dict[str, Any] = field(default_factory=dict)
    """The dark-matter analysis section (saelab.darkmatter)."""
    trajectories: dict[str, Any] = field(default_factory=dict)
    """The trajectory analysis section (saelab.trajectories)."""
    tracking: dict[str, Any] = field(default_factory=dict)
    """Optional run tracking (``tracking.wandb``; saelab.tracking)."""
    pretrained_dir: str = "data/releases"
    """Local store of released SAEs (saelab.saes.pretrained), relative to the working directory."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

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


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def deep_merge(base: dict, override: dict) -> dict:
    """Merge ``override`` into a copy of ``base``, recursing into dicts (as ``--configfile``)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate_schema(config: dict[str, Any]) -> None:
    """Check ``config`` against ``config/schema.yaml`` and fill its defaults in place.

    Uses Snakemake's validator when it is importable (as in the Snakefile), so both places
    read defaults the same way, and plain ``jsonschema`` otherwise.
    """
    try:
        from snakemake.utils import validate
    except ImportError:  # pragma: no cover - snakemake is a core dependency
        import jsonschema

        jsonschema.validate(config, load_yaml(SCHEMA_PATH))
        return
    try:
        validate(config, str(SCHEMA_PATH))
    except Exception as err:  # WorkflowError wraps jsonschema's message
        raise ConfigError(f"config does not match config/schema.yaml: {err}") from err


def parse_config(config: dict[str, Any]) -> PipelineConfig:
    """Typed view of a schema-validated config dict, with semantic checks."""
    from saelab.models import ModelError, resolve_model

    tiny = _from_dict(TinyConfig, config.get("tiny", {}), "tiny")
    try:
        n_layers = resolve_model(
            config["model"], tiny=tiny, model_path=config.get("model_path")
        ).n_layers
    except ModelError as err:
        raise ConfigError(f"model: {err}") from err
    corpora = {
        name: _from_dict(CorpusConfig, spec, f"corpora.{name}")
        for name, spec in config.get("corpora", {}).items()
    }
    caches = {
        name: _from_dict(
            CacheConfig,
            {**spec, "hooks": expand_cache_hooks(spec, n_layers, f"caches.{name}")},
            f"caches.{name}",
        )
        for name, spec in config.get("caches", {}).items()
    }
    store = str(config.get("pretrained_dir", "data/releases"))
    run_specs = dict(config.get("saes", {}))
    for name, spec in run_specs.items():
        if spec.get("pretrained") is not None:
            given = _without_defaults(spec, "saes")
            run_specs[name] = _resolve_pretrained(name, spec, given, store)
        else:
            _require_recipe(f"saes.{name}", spec)
    sweeps: dict[str, list[SweepPoint]] = {}
    for sweep, spec in config.get("sweeps", {}).items():
        if spec.get("pretrained") is not None:
            given = _without_defaults(spec, "sweeps")
            runs, points = expand_sweep(sweep, given, n_layers)
            runs = {name: _resolve_pretrained(name, {**run, "cache": spec.get("cache", "main")},
                                              run, store)
                    for name, run in runs.items()}  # fmt: skip
            sweeps[sweep] = [_release_point(point, runs[point.name]) for point in points]
        else:
            _require_recipe(f"sweeps.{sweep}", spec)
            runs, sweeps[sweep] = expand_sweep(sweep, spec, n_layers)
        clash = sorted(set(runs) & set(run_specs))
        if clash:
            raise ConfigError(f"sweeps.{sweep}: generated SAE names {clash} are already taken")
        run_specs.update(runs)
    parsed = PipelineConfig(
        pretrained_dir=store,
        model=config["model"],
        model_path=config.get("model_path"),
        device=config.get("device", "auto"),
        precision=config.get("precision", "auto"),
        corpora=corpora,
        caches=caches,
        tiny=tiny,
        saes={name: _parse_run(name, spec) for name, spec in run_specs.items()},
        training=dict(config.get("training", {})),
        evaluation=dict(config.get("evaluation", {})),
        toy=dict(config.get("toy", {})),
        sweeps=sweeps,
        cooccurrence=dict(config.get("cooccurrence", {})),
        darkmatter=dict(config.get("darkmatter", {})),
        trajectories=dict(config.get("trajectories", {})),
        tracking=dict(config.get("tracking") or {}),
        raw=config,
    )
    check_config(parsed)
    return parsed


def _schema_defaults(section: str) -> dict[str, Any]:
    """Defaults the schema fills into every entry of ``saes`` or ``sweeps``."""
    props = load_yaml(SCHEMA_PATH)["properties"][section]["additionalProperties"]["properties"]
    return {key: value["default"] for key, value in props.items() if "default" in value}


def _without_defaults(spec: dict[str, Any], section: str) -> dict[str, Any]:
    """``spec`` without the values the schema filled in (what the config file restates)."""
    defaults = _schema_defaults(section)
    return {k: v for k, v in spec.items() if not (k in defaults and defaults[k] == v)}


def _require_recipe(key: str, spec: dict[str, Any]) -> None:
    missing = [name for name in ("arch", "hook", "width") if name not in spec]
    if missing:
        raise ConfigError(
            f"{key}: a trained SAE needs {missing} (or give pretrained: {{release, sae_id}})"
        )


def _release_point(point: SweepPoint, run: dict[str, Any]) -> SweepPoint:
    """A release family's point with the width (and layer) of its resolved release."""
    layer = point.layer
    if layer is None:
        try:
            layer = parse_hook(run["hook"]).layer
        except HookError:
            layer = None
    k = point.k if point.k is not None else run.get("k")
    return replace(point, layer=layer, width=int(run["width"]), k=k)


def check_config(cfg: PipelineConfig) -> None:
    """Semantic checks that JSON Schema cannot express. Raises :class:`ConfigError`."""
    from saelab.models import ModelError, resolve_model

    try:
        info = resolve_model(cfg.model, tiny=cfg.tiny, model_path=cfg.model_path)
    except ModelError as err:
        raise ConfigError(f"model: {err}") from err
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
        if info.n_ctx is not None and corpus.context_len > info.n_ctx:
            raise ConfigError(
                f"corpora.{name}.context_len: {corpus.context_len} exceeds the model's "
                f"context of {info.n_ctx} tokens"
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
                parse_hook(hook, info.n_layers)
            except HookError as err:
                raise ConfigError(f"caches.{name}.hooks[{index}]: {err}") from err
    _check_saes(cfg)
    _check_cooccurrence(cfg)
    _check_darkmatter(cfg)
    _check_trajectories(cfg)


def _check_cooccurrence(cfg: PipelineConfig) -> None:
    """Semantic checks of the ``cooccurrence`` section (names of SAEs it reads, ...)."""
    section = cfg.cooccurrence
    names = list(section.get("saes", []))
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
    if section.get("encoding") == "train_batchtopk":
        flat = [run.name for run in runs if run.arch not in ("batchtopk", "matryoshka")]
        if flat:
            raise ConfigError(
                f"{key}.encoding: train_batchtopk needs BatchTopK-style SAEs; {flat} are not"
            )
    width = runs[0].width
    low, high = section.get("component_size", [150, 200])
    if low > high or low > width:
        raise ConfigError(
            f"{key}.component_size: [{low}, {high}] needs min <= max and min <= the width {width}"
        )
    rep = section.get("representative", {})
    if rep.get("sae") is not None and rep["sae"] not in names:
        raise ConfigError(f"{key}.representative.sae: {rep['sae']!r} is not one of {names}")
    thresholds = [float(t) for t in section.get("thresholds", [0.0])]
    if rep.get("threshold") is not None and float(rep["threshold"]) not in thresholds:
        raise ConfigError(
            f"{key}.representative.threshold: {rep['threshold']} is not one of {thresholds}"
        )
    if len(set(thresholds)) != len(thresholds):
        raise ConfigError(f"{key}.thresholds: values repeat: {thresholds}")
    subgraph = rep.get("subgraph", "auto")
    if isinstance(subgraph, str) and subgraph != "auto":
        raise ConfigError(f"{key}.representative.subgraph: {subgraph!r}; use an id or 'auto'")
    for sub, field_name in (("representative", "size_range"), ("pca", "all_in_size_range")):
        bounds = section.get(sub, {}).get(field_name)
        if bounds is not None and bounds[0] > bounds[1]:
            raise ConfigError(f"{key}.{sub}.{field_name}: {bounds} needs min <= max")


def _check_darkmatter(cfg: PipelineConfig) -> None:
    """Semantic checks of the ``darkmatter`` section (its sweep, hooks, window, ...)."""
    from saelab.darkmatter.scaling import ScalingError, curve_points

    dm = cfg.darkmatter
    sweep = dm.get("sweep", "darkmatter")
    if sweep not in cfg.sweeps:
        if sweep == "darkmatter":  # the default name, not defined: the analysis is off
            return
        raise ConfigError(
            f"darkmatter.sweep: {sweep!r} is not a `sweeps` family; defined: {sorted(cfg.sweeps)}"
        )
    points = cfg.sweeps[sweep]
    window = dm.get("window", [1, 128])
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
        curve = curve_points(points, dm.get("fixed_k"))
    except ScalingError as err:
        raise ConfigError(f"darkmatter.fixed_k: {err}") from err
    if len({point.width for point in curve}) < 3:
        raise ConfigError(
            f"sweeps.{sweep}: the power law c + a W^-m needs at least 3 widths at k = "
            f"{curve[0].k}; the sweep has {[point.width for point in curve]}"
        )
    names = [point.name for point in points]
    for key, value in (("probe_sae", dm.get("probe_sae")),
                       ("noise.sae", dm.get("noise", {}).get("sae"))):  # fmt: skip
        if value is not None and value not in names:
            raise ConfigError(f"darkmatter.{key}: {value!r} is not in sweeps.{sweep}: {names}")
    baselines = dm.get("baselines_sweep")
    if baselines is not None and baselines not in cfg.sweeps:
        raise ConfigError(
            f"darkmatter.baselines_sweep: {baselines!r} is not a `sweeps` family; "
            f"defined: {sorted(cfg.sweeps)}"
        )


def _check_trajectories(cfg: PipelineConfig) -> None:
    """Semantic checks of the ``trajectories`` section (its sweep, layers, prompts, ...)."""
    from saelab.models import resolve_model
    from saelab.trajectories.settings import TrajectoriesConfig, check_trajectories

    if not TrajectoriesConfig.from_dict(cfg.trajectories).prompts:
        return  # nothing to analyse, so no SAEs are needed
    info = resolve_model(cfg.model, tiny=cfg.tiny, model_path=cfg.model_path)
    check_trajectories(cfg, info.n_layers)


def _check_saes(cfg: PipelineConfig) -> None:
    from saelab.saes import resolve_group_sizes

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


def load_config(*paths: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load, merge (later files win), schema-validate and check config files, as the Snakefile does."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, load_yaml(path))
    if overrides:
        merged = deep_merge(merged, overrides)
    validate_schema(merged)
    return parse_config(merged)
