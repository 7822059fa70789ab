"""Config validation: schema types and defaults, then models, hooks and layers, with clear errors."""

from __future__ import annotations

import pytest

from saelab.checks import load_config
from saelab.schema import REPO_ROOT, ConfigError, load_yaml

DEFAULT = REPO_ROOT / "config" / "config.yaml"
PRESETS = [
    "tiny.yaml",
    "gpt2-small.yaml",
    "gemma-2-2b.yaml",
    "gemma-2-9b-darkmatter.yaml",
    "gemma-2-2b-trajectories.yaml",
]


def test_default_config_is_valid_and_gets_schema_defaults():
    cfg = load_config(DEFAULT)
    assert cfg.model == "gemma-3-270m"
    assert cfg.caches["main"].hooks[0] == "blocks.6.hook_resid_pre"
    assert cfg.caches["main"].backend == "auto"  # filled in by the schema
    assert cfg.tiny.vocab_size == 4096


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_override_the_default(preset, in_preset_store):
    cfg = load_config(DEFAULT, REPO_ROOT / "config" / preset)
    assert cfg.model != "gemma-3-270m" or preset == "tiny.yaml"


def test_presets_match_the_originals(in_preset_store):
    gpt2 = load_config(DEFAULT, REPO_ROOT / "config" / "gpt2-small.yaml")
    assert gpt2.model == "gpt2-small"
    assert "blocks.8.hook_resid_pre" in gpt2.caches["main"].hooks
    assert gpt2.corpora["openwebtext"].dataset == "Skylion007/openwebtext"


def test_micro_test_config_is_valid():
    cfg = load_config(DEFAULT, REPO_ROOT / "tests" / "config" / "micro.yaml")
    assert cfg.model == "tiny" and cfg.tiny.n_layers == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": "gpt-17"}, r"model: unknown model 'gpt-17'; allowed: 'tiny'"),
        ({"corpora": {"python-docs": {"n_tokens": "many"}}}, r"'many' is not of type 'integer'"),
        ({"corpora": {"python-docs": {"bos": "sometimes"}}}, r"'sometimes' is not one of"),
        ({"device": "tpu"}, r"'tpu' is not one of"),
        (
            {"caches": {"main": {"hooks": ["blocks.6.hook_resid_sideways"]}}},
            r"caches.main.hooks\[0\]: unknown hook name 'blocks.6.hook_resid_sideways'",
        ),
        (
            {"caches": {"main": {"hooks": ["blocks.18.hook_resid_pre"]}}},
            r"caches.main.hooks\[0\].*layer 18, but the model has layers 0..17",
        ),
        ({"caches": {"main": {"corpus": "wiki"}}}, r"caches.main.corpus: 'wiki' is not a defined"),
        ({"caches": {"main": {"colour": "red"}}}, r"Additional properties are not allowed"),
        ({"corpora": {"local": {"source": "text"}}}, r"corpora.local.paths: source 'text' needs"),
        (
            {"caches": {"layers": {"layers": [3, 18]}}},
            r"caches.layers.layers: layer 18 is out of range; allowed: 0..17 or 'all'",
        ),
        (
            {"sweeps": {"darkmatter": {"k": [16, 0]}}},
            r"is not valid under any of the given schemas",
        ),
        (
            {"sweeps": {"darkmatter": {"name": "dm-w{width}"}}},
            r"sweeps.darkmatter.name: the template 'dm-w\{width\}' gives 'dm-w256' twice",
        ),
        (
            {"sweeps": {"layers": {"hook": "blocks.{layer}.hook_mlp_out"}}},
            r"saes.layers-l0.hook: 'blocks.0.hook_mlp_out' is not cached by caches.layers",
        ),
    ],
)
def test_bad_config_names_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEFAULT, overrides=override)


def test_layer_range_of_the_tiny_model_follows_its_config():
    base = load_yaml(REPO_ROOT / "config" / "tiny.yaml")
    base["caches"]["main"]["hooks"] = ["blocks.2.hook_resid_pre"]
    with pytest.raises(ConfigError, match=r"layers 0\.\.1"):
        load_config(DEFAULT, overrides=base)


def test_sweeps_expand_to_one_named_run_per_point():
    cfg = load_config(DEFAULT)
    grid = cfg.sweeps["darkmatter"]
    widths = sorted({point.width for point in grid})
    ks = sorted({point.k for point in grid})
    assert len(grid) == len(widths) * len(ks) > 1
    first = cfg.saes[grid[0].name]
    assert grid[0].name == f"darkmatter-w{grid[0].width}-k{grid[0].k}"
    assert first.options["k"] == grid[0].k and first.width == grid[0].width
    assert first.group == "darkmatter"  # the whole family trains from one pass
    layers = cfg.sweeps["layers"]
    assert [point.layer for point in layers] == list(range(18))  # layer: all on gemma-3-270m
    assert cfg.saes["layers-l17"].hook == "blocks.17.hook_resid_mid"
    assert cfg.caches["layers"].hooks == [f"blocks.{i}.hook_resid_mid" for i in range(18)]
    # Sweep SAEs are not among the named runs that the SAE figures evaluate.
    assert set(cfg.named_saes) == set(load_yaml(DEFAULT)["saes"])


# ------------------------------------------------------------------ typed sections
def _section_classes():
    from saelab.config import TYPED_SECTIONS

    return TYPED_SECTIONS


def _field_docstrings(cls) -> set[str]:
    """Fields of ``cls`` followed by a string literal in its source (an attribute docstring)."""
    import ast
    import inspect
    import itertools
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {
        node.target.id
        for node, after in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    }


@pytest.mark.parametrize(
    "section", ["tracking", "budget", "toy", "training", "evaluation", "cooccurrence", "darkmatter"]
)
def test_typed_sections_are_the_schema(section):
    """One field per schema key (nested objects as nested sections), each documented, none
    with a default of its own: the schema stays the one place of keys and defaults."""
    import dataclasses

    schema = load_yaml(REPO_ROOT / "config" / "schema.yaml")["properties"]

    def check(cls, props, key, required=()):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(fields) == set(props), key
        # keys with neither a default nor required are None when absent, and only those
        optional = {name for name, prop in props.items() if "default" not in prop}
        assert cls.OPTIONAL == optional - set(required), key
        assert _field_docstrings(cls) == set(fields), key
        for name, field in fields.items():
            assert field.default is dataclasses.MISSING, f"{key}.{name} has a default"
            assert field.default_factory is dataclasses.MISSING, f"{key}.{name} has a default"
            if "properties" in props[name]:
                assert name in cls.NESTED, f"{key}.{name}"
                sub = props[name]
                check(cls.NESTED[name], sub["properties"], f"{key}.{name}", sub.get("required", ()))
        assert set(cls.NESTED) <= set(fields)

    check(_section_classes()[section], schema[section]["properties"], section)


def test_typed_sections_read_as_the_validated_dicts():
    """Attribute access is typed and frozen; the mapping view is the schema-validated data."""
    import dataclasses

    from saelab.schema import deep_merge, validate_schema

    micro = REPO_ROOT / "tests" / "config" / "micro.yaml"
    raw = deep_merge({}, load_yaml(micro))
    validate_schema(raw)
    cfg = load_config(micro)
    for section in _section_classes():
        typed = getattr(cfg, section)
        assert dict(typed) == raw[section] and typed == raw[section], section
        assert list(typed) == list(raw[section]), section  # key order too (scripts dump them)
    # micro gives noise.n_tokens and noise.grid, the schema fills the rest after them
    assert list(cfg.darkmatter["noise"])[:2] == ["n_tokens", "grid"]
    assert list(cfg.darkmatter["noise"]) == list(raw["darkmatter"]["noise"])
    assert list(dict(cfg.cooccurrence)["features"]) == list(raw["cooccurrence"]["features"])
    assert cfg.darkmatter.noise.grid == [0.0, 1.0, 2.0]  # micro's value, typed access
    assert cfg.darkmatter["noise"]["units"] == "activation_std"  # schema default, mapping access
    assert type(cfg.darkmatter["noise"]) is dict and type(dict(cfg.darkmatter)["pursuit"]) is dict
    assert cfg.cooccurrence.features.top_n == 5 and cfg.training.batch_size == 512
    assert cfg.train_settings(cfg.saes["matryoshka"])["source"] == "cache"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.darkmatter.noise.seed = 1
    with pytest.raises(KeyError):
        cfg.evaluation["nope"]


def test_typed_tracking_and_budget():
    """An absent tracking.wandb is None and absent from the mapping view (tracking off); a set
    one is typed, with the schema's defaults."""
    micro = REPO_ROOT / "tests" / "config" / "micro.yaml"
    cfg = load_config(micro)
    assert cfg.tracking.wandb is None and dict(cfg.tracking) == {} and not cfg.tracking
    assert cfg.tracking.get("wandb") is None and cfg.budget.check_disk is True
    cfg = load_config(
        micro, overrides={"tracking": {"wandb": {"project": "p"}}, "budget": {"check_disk": False}}
    )
    assert cfg.tracking.wandb.project == "p" and cfg.tracking.wandb.mode == "online"
    assert cfg.tracking["wandb"] == {"project": "p", "entity": None, "mode": "online",
                                     "dir": "logs/wandb"}  # fmt: skip
    assert type(cfg.tracking["wandb"]) is dict and cfg.budget.check_disk is False


def test_toy_schema_is_the_library_defaults():
    """The toy section's keys are split_params' (HierarchyConfig fields and RUN_KEYS), and its
    defaults are HierarchyConfig's and compare_architectures', so the filled section runs the
    same toy as the sparse params block the rule passed before the section was typed."""
    import dataclasses
    import inspect

    from saelab.schema import section_defaults
    from saelab.toy import compare_architectures
    from saelab.toy.compare import RUN_KEYS, split_params
    from saelab.toy.hierarchy import HierarchyConfig

    defaults = section_defaults("toy")
    library = {f.name: f.default for f in dataclasses.fields(HierarchyConfig)}
    signature = inspect.signature(compare_architectures).parameters
    library |= {key: signature[key].default for key in RUN_KEYS}
    library["archs"], library["seeds"] = list(library["archs"]), list(library["seeds"])
    assert defaults == library
    assert all(type(defaults[key]) is type(value) for key, value in library.items())
    cfg = load_config(REPO_ROOT / "tests" / "config" / "micro.yaml")
    sparse = load_yaml(REPO_ROOT / "tests" / "config" / "micro.yaml")["toy"]
    assert split_params(dict(cfg.toy)) == (
        HierarchyConfig(**{k: v for k, v in sparse.items() if k not in RUN_KEYS}),
        {**{key: signature[key].default for key in RUN_KEYS}, "archs": list(library["archs"]),
         "seeds": list(library["seeds"]), **{k: v for k, v in sparse.items() if k in RUN_KEYS}},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="toy"):
        load_config(REPO_ROOT / "tests" / "config" / "micro.yaml", overrides={"toy": {"nope": 1}})


def test_darkmatter_views_are_built_from_the_section():
    """NoiseConfig, WindowConfig and ErrorSAEConfig come from the typed darkmatter section
    (typed or as the rules pass it, a dict) with the keys the scripts passed before, and their
    library defaults are the schema's."""
    import dataclasses

    from saelab.darkmatter.info import WindowConfig
    from saelab.darkmatter.noise import NoiseConfig
    from saelab.darkmatter.train_on_error import ErrorSAEConfig
    from saelab.schema import _schema

    dm = load_config(REPO_ROOT / "tests" / "config" / "micro.yaml").darkmatter
    noise = dict(dm["noise"])
    assert NoiseConfig.from_section(dm.noise) == NoiseConfig(**noise)
    assert vars(NoiseConfig.from_section(noise)) == noise  # noise.json's config, as before
    window = {key: dm[key] for key in ("window", "n_tokens", "split", "batch_size")}
    assert WindowConfig.from_section(dm) == WindowConfig(**window)
    assert WindowConfig.from_section(window) == WindowConfig(**window)
    opts = dm.train_on_error
    expected = ErrorSAEConfig(
        width=opts.width or 4 * 64, k=opts.k, n_tokens=opts.n_tokens,
        batch_size=opts.batch_size, lr=opts.lr, seed=opts.seed,
    )  # fmt: skip
    assert ErrorSAEConfig.from_section(opts, 64) == expected
    assert ErrorSAEConfig.from_section({**opts, "width": None}, 64).width == 256
    assert ErrorSAEConfig.from_section({**opts, "width": 48}, 64).width == 48

    schema = _schema()["properties"]["darkmatter"]["properties"]

    def defaults(props):
        return {key: prop["default"] for key, prop in props.items() if "default" in prop}

    assert vars(NoiseConfig()) == defaults(schema["noise"]["properties"])
    assert vars(WindowConfig()) == {key: schema[key]["default"] for key in window}
    library = dict(ErrorSAEConfig._field_defaults)
    del library["warmup_fraction"]  # not a config key (the original's schedule)
    train_on_error = defaults(schema["train_on_error"]["properties"])
    assert library == {key: train_on_error[key] for key in library}
    assert {f.name for f in dataclasses.fields(NoiseConfig)} == set(noise)


def test_typed_sections_name_unknown_and_missing_keys():
    from saelab.sections import TrainingSection

    data = dict(load_config(REPO_ROOT / "tests" / "config" / "micro.yaml").training)
    with pytest.raises(ConfigError, match=r"unknown training key\(s\) \['nope'\]"):
        TrainingSection.from_dict({**data, "nope": 1}, "training", ConfigError)
    del data["lr"]
    with pytest.raises(ConfigError, match=r"training: missing key\(s\) \['lr'\]"):
        TrainingSection.from_dict(data, "training", ConfigError)


def test_trajectories_settings_are_the_schema():
    import dataclasses

    from saelab.trajectories.settings import TrajectoriesConfig

    props = load_yaml(REPO_ROOT / "config" / "schema.yaml")["properties"]["trajectories"]
    fields = dataclasses.fields(TrajectoriesConfig)
    assert {f.name for f in fields} == set(props["properties"])
    assert _field_docstrings(TrajectoriesConfig) == {f.name for f in fields}
    assert all(f.default is dataclasses.MISSING for f in fields)
    assert all(f.default_factory is dataclasses.MISSING for f in fields)


@pytest.mark.parametrize("configs", [["config.yaml"], ["config.yaml", "gpt2-small.yaml"],
                                     ["config.yaml", "../tests/config/micro.yaml"]])  # fmt: skip
def test_schema_defaults_are_filled_as_snakemake_fills_them(configs, in_preset_store):
    """The library fills defaults without importing Snakemake; the Snakefile's check is
    Snakemake's ``validate``: the same config comes out of both, values and key order."""
    import copy
    import json

    from snakemake.utils import validate  # noqa: TID251 - the reference the library is held to

    from saelab.schema import SCHEMA_PATH, deep_merge, validate_schema

    raw: dict = {}
    for name in configs:
        raw = deep_merge(raw, load_yaml(REPO_ROOT / "config" / name))
    ours, theirs = copy.deepcopy(raw), copy.deepcopy(raw)
    validate_schema(ours)
    validate(theirs, str(SCHEMA_PATH))
    assert json.dumps(ours) == json.dumps(theirs)  # key order too
    assert ours != raw  # defaults were filled
