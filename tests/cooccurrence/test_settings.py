"""Tests of ``saelab.cooccurrence.settings``, moved from tests/test_cooccurrence.py.

Notes shared with the other tests moved from tests/test_cooccurrence.py:
``tests/cooccurrence/__init__.py``."""

from __future__ import annotations

import pytest

# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"saes": ["nope"]}, "not SAEs of"),
        ({"saes": ["batchtopk"]}, "matryoshka"),
        ({"saes": ["matryoshka", "matryoshka-transcoder", "darkmatter-w1024-k16"]}, "one width"),
        ({"saes": ["matryoshka", "relu"], "encoding": "train_batchtopk"}, "train_batchtopk"),
        ({"saes": ["matryoshka"], "component_size": [300, 200]}, "min <= max"),
        ({"saes": ["matryoshka"], "component_size": [5000, 6000]}, "width 4096"),
        ({"saes": ["matryoshka"], "representative": {"threshold": 2.0}}, "not one of"),
        ({"saes": ["matryoshka"], "representative": {"subgraph": "big"}}, "'auto'"),
    ],
)
def test_config_errors_name_the_key(section, message):
    from saelab.checks import load_config
    from saelab.schema import REPO_ROOT, ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(REPO_ROOT / "config" / "config.yaml", overrides={"cooccurrence": section})


def test_default_config_section_is_valid():
    from saelab.checks import load_config
    from saelab.schema import REPO_ROOT

    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    assert cfg.cooccurrence["saes"] == ["matryoshka", "batchtopk"]
    assert cfg.cooccurrence["component_size"] == [150, 200]
    micro = load_config(REPO_ROOT / "config" / "config.yaml", REPO_ROOT / "tests/config/micro.yaml")
    low, high = micro.cooccurrence["component_size"]
    assert low <= high < micro.saes["matryoshka"].width  # reachable bounds for width 256
