"""Config validation: schema types and defaults, then models, hooks and layers, with clear errors."""

from __future__ import annotations

import pytest

from saelab.checks import load_config
from saelab.config import REPO_ROOT, ConfigError, load_yaml

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
