"""Checks and choices of the ``saes`` section that need SAE code: released SAEs resolved
against their release (the config module itself imports no SAE code)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from saelab.saes.io import SAELoadError
from saelab.saes.pretrained import resolve_release
from saelab.schema import ConfigError

#: What a released SAE's config may say besides ``pretrained``: where its activations are
#: cached, and restated facts of the release (checked against it).
_PRETRAINED_KEYS = {"pretrained", "cache", "arch", "hook", "width", "target_hook", "k"}


def resolve_pretrained(
    name: str, spec: dict[str, Any], given: dict[str, Any], store: str
) -> dict[str, Any]:
    """The run spec of a released SAE with its hook, width and architecture from the release.

    ``given`` is the spec as the config file wrote it (before the schema's defaults): a key
    it restates must agree with the release, else the error names both values.
    """
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
