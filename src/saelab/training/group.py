"""A group of SAEs trained together on one cache: their hooks, built and checked against the
cache's widths."""

from __future__ import annotations

from typing import Any, cast

from saelab.saes import SAE, SAEConfig, build_sae
from saelab.training.config import TrainError


def sae_hooks(sae: SAE) -> tuple[str, str]:
    """(input hook, target hook) of an SAE or transcoder."""
    if not sae.cfg.hook_name:
        raise TrainError(f"SAE {sae.cfg.arch}: hook_name is empty; name the hook it reads")
    return sae.cfg.hook_name, sae.cfg.target_hook_name or sae.cfg.hook_name


def hooks_of(saes: dict[str, SAE]) -> list[str]:
    """The union of the SAEs' input and target hooks, in first-seen order."""
    return _union(sae_hooks(sae) for sae in saes.values())


def spec_hooks(specs: dict[str, dict[str, Any]]) -> list[str]:
    """:func:`hooks_of` for SAE config dicts (before the SAEs exist, e.g. to start a stream)."""
    return _union((s.get("hook_name"), s.get("target_hook_name")) for s in specs.values())


def _union(pairs) -> list[str]:
    hooks: list[str] = []
    for pair in pairs:
        for hook in pair:
            if hook and hook not in hooks:
                hooks.append(hook)
    return hooks


def check_widths(saes: dict[str, SAE], widths: dict[str, int]) -> None:
    """Every SAE's d_in / d_out equals its hooks' widths in the cache."""
    for name, sae in saes.items():
        source, target = sae_hooks(sae)
        for hook, dim, what in ((source, sae.cfg.d_in, "d_in"), (target, sae.cfg.d_out, "d_out")):
            if hook not in widths:
                raise TrainError(
                    f"SAE {name!r}: hook {hook!r} is not in the cache; it holds {sorted(widths)}"
                )
            if int(widths[hook]) != int(cast(int, dim)):  # SAEConfig sets d_out (default d_in)
                raise TrainError(
                    f"SAE {name!r}: {what} = {dim} but hook {hook!r} is {widths[hook]} wide in "
                    f"the cache; build the SAE from the cache's widths"
                )


def build_saes(specs: dict[str, dict[str, Any]], widths: dict[str, int]) -> dict[str, SAE]:
    """SAEs from config dicts (SAEConfig fields without d_in/d_out) and the cache's widths."""
    saes = {}
    for name, spec in specs.items():
        spec = dict(spec)
        for key in ("d_in", "d_out"):
            if spec.get(key) is not None:
                raise TrainError(f"SAE {name!r}: {key} comes from the cache; remove it")
            spec.pop(key, None)
        hook, target = spec.get("hook_name"), spec.get("target_hook_name")
        for h in (hook, target):
            if h is not None and h not in widths:
                raise TrainError(
                    f"SAE {name!r}: hook {h!r} is not in the cache; it holds {sorted(widths)}"
                )
        if not hook:
            raise TrainError(f"SAE {name!r}: hook_name is required")
        spec["extra"] = {**(spec.get("extra") or {}), "name": name}
        cfg = SAEConfig(
            **spec, d_in=int(widths[hook]), d_out=int(widths[target]) if target else None
        )
        saes[name] = build_sae(cfg)
    return saes
