"""The config schema (``config/schema.yaml``): loading config files, validating them and filling
their defaults, and reading the defaults (the one place they live) for library code.

A leaf module: it imports nothing of saelab's science, and not Snakemake (the library fills
defaults as ``snakemake.utils.validate`` does; a test holds the two to the same result).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"


class ConfigError(ValueError):
    """A config value that is wrong, with the key that holds it and what is allowed."""


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

    Defaults are filled as Snakemake's ``validate`` fills them (the Snakefile's check): at every
    level, each property with a ``default`` that the instance lacks is added, after the keys it
    has, before the property's own schema is checked (so a default object gets its own
    defaults too). A test holds the two to the same result, key order included.
    """
    import jsonschema

    try:
        _defaults_validator_class()(_schema()).validate(config)
    except jsonschema.ValidationError as err:
        raise ConfigError(
            f"config does not match config/schema.yaml: {err.message} "
            f"(at {'.'.join(map(str, err.absolute_path)) or 'the top level'})"
        ) from err


@functools.cache
def _defaults_validator_class():
    from jsonschema import Draft202012Validator, validators

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": properties_with_defaults})


@functools.cache
def _schema() -> dict[str, Any]:
    return load_yaml(SCHEMA_PATH)


def section_defaults(*path: str) -> dict[str, Any]:
    """The schema's default of every key of the object at ``path`` (e.g. ``"training"``, or
    ``"darkmatter", "noise"``): the one place of defaults, for library code that takes a
    section's keys as arguments (deep copies: a caller may change them)."""
    node = _schema()
    for key in path:
        node = node["properties"][key]
    props = node["properties"]
    return {
        key: copy.deepcopy(value["default"]) for key, value in props.items() if "default" in value
    }


def schema_defaults(section: str) -> dict[str, Any]:
    """Defaults the schema fills into every entry of ``saes`` or ``sweeps``."""
    props = _schema()["properties"][section]["additionalProperties"]["properties"]
    return {key: value["default"] for key, value in props.items() if "default" in value}
