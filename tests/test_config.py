"""Config validation: schema types and defaults, then models, hooks and layers, with clear errors."""

from __future__ import annotations

import pytest

from saelab.config import REPO_ROOT, ConfigError, load_config, load_yaml

DEFAULT = REPO_ROOT / "config" / "config.yaml"
PRESETS = ["tiny.yaml", "gpt2-small.yaml", "gemma-2-2b.yaml"]


def test_default_config_is_valid_and_gets_schema_defaults():
    cfg = load_config(DEFAULT)
    assert cfg.model == "gemma-3-270m"
    assert cfg.caches["main"].hooks[0] == "blocks.6.hook_resid_pre"
    assert cfg.caches["main"].backend == "auto"  # filled in by the schema
    assert cfg.tiny.vocab_size == 4096


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_override_the_default(preset):
    cfg = load_config(DEFAULT, REPO_ROOT / "config" / preset)
    assert cfg.model != "gemma-3-270m" or preset == "tiny.yaml"


def test_presets_match_the_originals():
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
