"""Tests of ``saelab.trajectories.settings``, moved from tests/test_trajectories.py.

Notes shared with the other tests moved from tests/test_trajectories.py:
``tests/trajectories/__init__.py``."""

from __future__ import annotations

import json

import pytest

from saelab.checks import load_config
from saelab.schema import ConfigError
from tests.trajectories.helpers import REPO

# ------------------------------------------------------------------ config checks


def _config(tmp_path, trajectories=None, sweeps=None, caches=None):
    override = {"trajectories": trajectories or {}}
    if sweeps is not None:
        override["sweeps"] = sweeps
    if caches is not None:
        override["caches"] = caches
    path = tmp_path / "override.yaml"
    path.write_text(json.dumps(override))
    return load_config(REPO / "tests" / "config" / "micro.yaml", path)


def test_config_is_checked_once_and_resolved_with_its_layers(tmp_path, monkeypatch):
    """check_trajectories runs once per config parse; the rule files read its result."""
    import saelab.trajectories.settings as settings

    calls = []
    check = settings.check_trajectories
    monkeypatch.setattr(
        settings, "check_trajectories", lambda *args: calls.append(args) or check(*args)
    )
    cfg = _config(tmp_path, {"prompts": [{"name": "a", "text": "hello"}], "layers": [0, 1]})
    assert len(calls) == 1
    choices = cfg.analyses["trajectories"]
    assert choices.layers == [0, 1] and choices.settings.prompt_names == ["a"]
    calls.clear()
    cfg = _config(tmp_path, {"prompts": []})
    assert not calls and cfg.analyses["trajectories"].layers == []


def test_config_checks(tmp_path):
    prompts = [{"name": "a", "text": "hello"}]
    cfg = _config(tmp_path, {"prompts": prompts})
    assert cfg.trajectories["T"] == [6, 20]  # micro's T survives, defaults filled
    with pytest.raises(ConfigError, match="not a sweeps family"):
        _config(tmp_path, {"prompts": prompts, "sweep": "nope"})
    with pytest.raises(ConfigError, match="names repeat"):
        _config(tmp_path, {"prompts": prompts * 2})
    with pytest.raises(ConfigError, match="needs SAEs at hook_resid_mid or hook_resid_post"):
        _config(tmp_path, {"prompts": prompts, "sweep": "darkmatter"})
    with pytest.raises(ConfigError, match="evolution_layers"):
        _config(tmp_path, {"prompts": prompts, "evolution_layers": [5]})
    with pytest.raises(ConfigError, match="distinct"):
        _config(tmp_path, {"prompts": prompts, "T": [3, 3]})
    # a resid_post family is allowed (the original's site); resid_pre is not
    cache = {
        "corpus": "python-docs",
        "layers": "all",
        "hooks": ["blocks.{layer}.hook_resid_post", "blocks.{layer}.hook_resid_pre"],
    }
    family = {"arch": "batchtopk", "cache": "post", "layer": "all", "width": 64, "k": 4}
    sweeps = {"post": {**family, "hook": "blocks.{layer}.hook_resid_post"},
              "pre": {**family, "hook": "blocks.{layer}.hook_resid_pre"}}  # fmt: skip
    cfg = _config(tmp_path, {"prompts": prompts, "sweep": "post"}, sweeps, {"post": cache})
    assert cfg.trajectories["sweep"] == "post"
    with pytest.raises(ConfigError, match="hook_resid_mid or hook_resid_post"):
        _config(tmp_path, {"prompts": prompts, "sweep": "pre"}, sweeps, {"post": cache})
    with pytest.raises(ConfigError, match="needs at least two"):
        _config(tmp_path, {"prompts": prompts, "layers": [1, 1]})
