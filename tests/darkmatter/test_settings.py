"""Tests of ``saelab.darkmatter.settings``, moved from tests/test_darkmatter.py.

Notes shared with the other tests moved from tests/test_darkmatter.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.checks import load_config
from saelab.schema import ConfigError

torch.set_num_threads(1)


# ------------------------------------------------------------------ config
def test_config_checks_name_the_key(tmp_path):
    from saelab.schema import REPO_ROOT

    micro = REPO_ROOT / "tests" / "config" / "micro.yaml"
    with pytest.raises(ConfigError, match=r"darkmatter\.sweep"):
        load_config(micro, overrides={"darkmatter": {"sweep": "nope"}})
    with pytest.raises(ConfigError, match="probe_sae"):
        load_config(micro, overrides={"darkmatter": {"probe_sae": "nope"}})
    with pytest.raises(ConfigError, match="baselines_sweep"):
        load_config(micro, overrides={"darkmatter": {"baselines_sweep": "nope"}})
    with pytest.raises(ConfigError, match="3 widths"):
        load_config(micro, overrides={"sweeps": {"darkmatter": {"width": [64, 128]}}})
    with pytest.raises(ConfigError):
        load_config(micro, overrides={"darkmatter": {"window": [5, 2]}})


def test_darkmatter_choices_are_resolved_when_the_config_is_parsed(tmp_path):
    """The SAEs every dark-matter analysis reads, by hand from micro's 3 x 2 grid (fixed_k 8,
    fixed_width 64), and the checks that moved out of the rule files, each naming its key."""
    from saelab.schema import REPO_ROOT

    micro = REPO_ROOT / "tests" / "config" / "micro.yaml"
    choices = load_config(micro).analyses["darkmatter"]
    assert choices.width_sweep == [f"darkmatter-w{w}-k8" for w in (64, 128, 256)]
    assert choices.fixed_width == 64
    assert choices.k_sweep == ["darkmatter-w64-k4", "darkmatter-w64-k8"]
    assert choices.fixed_sae == "darkmatter-w64-k8"
    assert choices.section_saes == dict.fromkeys(
        ("components", "train_on_error"), "darkmatter-w64-k8"
    )
    assert choices.pursuit_saes == [*choices.width_sweep, "darkmatter-w64-k4"]
    assert choices.probe_sae == "darkmatter-w256-k8"  # the widest at fixed_k
    assert choices.noise_sae == "darkmatter-w64-k8"  # the narrowest at its largest k
    assert set(choices.component_hooks) | set(choices.skipped_components) == {
        "prev_res",
        "mlp",
        "att",
    }
    width_only = load_config(micro, overrides={"darkmatter": {"pursuit": {"saes": "width_sweep"}}})
    assert width_only.analyses["darkmatter"].pursuit_saes == choices.width_sweep
    import yaml

    from saelab.schema import load_yaml

    raw = load_yaml(micro)
    del raw["sweeps"]["darkmatter"]  # the default sweep name, undefined: the analysis is off
    raw["darkmatter"] = {"baselines_sweep": None}
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "off.yaml").analyses["darkmatter"] is None
    with pytest.raises(
        ConfigError,
        match=r"darkmatter\.fixed_width: no SAE of the grid has width 100; widths: \[64, 128, 256\]",
    ):
        load_config(micro, overrides={"darkmatter": {"fixed_width": 100}})
    with pytest.raises(
        ConfigError, match=r"darkmatter\.components\.sae: 'nope' is not in the grid"
    ):
        load_config(micro, overrides={"darkmatter": {"components": {"sae": "nope"}}})
    with pytest.raises(
        ConfigError, match=r"darkmatter\.train_on_error\.sae: 'nope' is not in the grid"
    ):
        load_config(micro, overrides={"darkmatter": {"train_on_error": {"sae": "nope"}}})
    with pytest.raises(
        ConfigError, match=r"darkmatter\.components\.predictors: .*'res' is reserved"
    ):
        load_config(micro, overrides={"darkmatter": {"components": {"predictors": {"res": "x"}}}})
