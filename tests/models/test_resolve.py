"""Tests of ``saelab.models.resolve``, moved from tests/test_models.py.

Notes shared with the other tests moved from tests/test_models.py: ``tests/models/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.models import (
    ModelError,
    configured_device,
    default_device,
    load_hf_model,
    load_model,
    prepare_model,
    read_manifest,
    resolve_model,
)


def test_hub_name_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = tmp_path / "gpt2-small"
    with pytest.raises(ModelError) as excinfo:
        prepare_model(resolve_model("gpt2"), model_dir)
    message = str(excinfo.value)
    assert "model_path" in message
    assert "hf download gpt2" in message
    assert "gemma-3-270m" in message and "tiny" in message
    assert read_manifest(model_dir) is None
    assert not model_dir.exists() or not any(model_dir.iterdir())


def test_model_path_must_be_an_hf_directory(tmp_path):
    with pytest.raises(ModelError, match="not a directory"):
        prepare_model(resolve_model("gpt2", model_path=str(tmp_path / "nope")), tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"config\.json"):
        prepare_model(resolve_model("gpt2", model_path=str(tmp_path / "empty")), tmp_path / "m")


def test_unknown_model_lists_allowed_names():
    with pytest.raises(ModelError) as excinfo:
        resolve_model("no-such-model-xyz")
    message = str(excinfo.value)
    for name in ("tiny", "gemma-3-270m", "gpt2", "OFFICIAL_MODEL_NAMES"):
        assert name in message


def test_unprepared_model_dir_names_path_and_rule(tmp_path):
    missing = tmp_path / "models" / "gemma-3-270m"
    with pytest.raises(ModelError) as excinfo:
        load_model(resolve_model("gemma-3-270m"), missing)
    assert str(missing) in str(excinfo.value) and "prepare_model" in str(excinfo.value)
    with pytest.raises(ModelError) as excinfo:
        load_model(resolve_model("tiny"), tmp_path / "models" / "tiny")
    assert "train_tiny_lm" in str(excinfo.value)
    with pytest.raises(ModelError):
        load_hf_model(resolve_model("tiny"), tmp_path / "models" / "tiny")
    with pytest.raises(ModelError, match="train_tiny_lm"):
        prepare_model(resolve_model("tiny"), tmp_path / "models" / "tiny")


def test_default_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device() == expected
    assert default_device("auto") == expected
    assert default_device("cpu") == "cpu"
    with pytest.raises(ModelError) as excinfo:
        default_device("gpu")
    assert "'auto'" in str(excinfo.value) and "'cpu'" in str(excinfo.value)


def test_configured_device_reads_the_run_config():
    """Scripts take the device from the config when they run (it is not a rule param)."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert configured_device({"device": "cpu", "model": "tiny"}) == "cpu"
    assert configured_device({}) == expected  # the schema's default, auto
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        configured_device({"device": "tpu"})
