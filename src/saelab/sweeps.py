"""The ``saes`` and ``sweeps`` sections as run specs: ``{layer}`` hook templates expanded,
sweep families multiplied out over their axes, release families listed point by point.

Pure config arithmetic: the model's layer count comes in as a number and released SAEs are
resolved by a function the caller passes (:func:`saelab.checks.parse_config` passes
:func:`saelab.saes.settings.resolve_pretrained`), so this module needs no model or SAE code.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from saelab.config import SweepPoint
from saelab.hooks import HookError, parse_hook
from saelab.schema import ConfigError, schema_defaults

#: ``resolve(name, spec, given, store) -> run spec`` of a released SAE (see :func:`expand_runs`).
ResolvePretrained = Callable[[str, dict[str, Any], dict[str, Any], str], dict[str, Any]]


def safe_name(text: str) -> str:
    """``text`` as a name of letters, digits, '-' and '_' (for SAE names made from ids)."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-")


#: Keys of a sweep that may hold a list (or, for ``layer``, ``all``); their product is the family.
SWEEP_AXES = ("layer", "width", "k")
_AXIS_PREFIX = {"layer": "l", "width": "w", "k": "k"}


def _layer_list(value: Any, n_layers: int | None, key: str) -> list[int]:
    if value == "all":
        if n_layers is None:
            raise ConfigError(
                f"{key}: 'all' needs a model whose layer count saelab knows; list the layers"
            )
        return list(range(n_layers))
    layers = list(value) if isinstance(value, list) else [value]
    for layer in layers:
        if not isinstance(layer, int) or layer < 0 or (n_layers is not None and layer >= n_layers):
            allowed = f"0..{n_layers - 1}" if n_layers is not None else "non-negative integers"
            raise ConfigError(
                f"{key}: layer {layer!r} is out of range; allowed: {allowed} or 'all'"
            )
    return layers


def expand_cache_hooks(spec: dict[str, Any], n_layers: int | None, key: str) -> list[str]:
    """The cache's hook list with every ``{layer}`` template expanded over ``layers``."""
    hooks: list[str] = []
    templated = [hook for hook in spec["hooks"] if "{layer}" in hook]
    if templated and spec.get("layers") is None:
        raise ConfigError(
            f"{key}.layers: hooks {templated} hold '{{layer}}'; give layers: [..] or all"
        )
    layers = _layer_list(spec["layers"], n_layers, f"{key}.layers") if templated else []
    for hook in spec["hooks"]:
        if "{layer}" in hook:
            hooks.extend(hook.format(layer=layer) for layer in layers)
        else:
            hooks.append(hook)
    return hooks


def expand_sweep(
    sweep: str, spec: dict[str, Any], n_layers: int | None
) -> tuple[dict[str, dict[str, Any]], list[SweepPoint]]:
    """Run specs (as in ``saes``) and points of one ``sweeps`` family: the product of its axes.

    ``hook``, ``target_hook``, ``group`` and ``name`` are templates over ``{layer}``, ``{width}``
    and ``{k}`` (a ``group`` template splits the family into several training groups);
    the default name is the sweep name plus one ``l``/``w``/``k`` tag per swept axis.
    """
    key = f"sweeps.{sweep}"
    if spec.get("pretrained") is not None:
        return _expand_release_family(sweep, spec, n_layers)
    axes: dict[str, list[Any]] = {}
    for axis in SWEEP_AXES:
        if axis not in spec:
            continue
        if axis == "layer":
            axes[axis] = _layer_list(spec[axis], n_layers, f"{key}.layer")
        else:
            axes[axis] = list(spec[axis]) if isinstance(spec[axis], list) else [spec[axis]]
    if "{layer}" in str(spec.get("hook", "")) and "layer" not in axes:
        raise ConfigError(f"{key}.layer: the hook {spec['hook']!r} holds '{{layer}}'; give layer")
    swept = [axis for axis, values in axes.items() if len(values) > 1 or axis == "layer"]
    default_name = sweep + "".join(f"-{_AXIS_PREFIX[axis]}{{{axis}}}" for axis in swept)
    template = spec.get("name") or default_name
    base = {k: v for k, v in spec.items() if k not in (*SWEEP_AXES, "name")}
    base["group"] = base.get("group") or sweep
    runs: dict[str, dict[str, Any]] = {}
    points: list[SweepPoint] = []
    names = list(axes)
    for values in itertools.product(*(axes[name] for name in names)):
        coords = dict(zip(names, values, strict=True))
        fmt = {"layer": coords.get("layer"), "width": coords.get("width"), "k": coords.get("k")}
        run = dict(base)
        for field_name in ("hook", "target_hook", "group"):
            if isinstance(run.get(field_name), str):
                run[field_name] = run[field_name].format(**fmt)
        run["width"] = coords["width"]
        if "k" in coords:
            run["k"] = coords["k"]
        name = template.format(**fmt)
        if name in runs:
            raise ConfigError(f"{key}.name: the template {template!r} gives {name!r} twice")
        runs[name] = run
        points.append(SweepPoint(name, coords.get("layer"), coords["width"], coords.get("k")))
    return runs, points


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _expand_release_family(
    sweep: str, spec: dict[str, Any], n_layers: int | None
) -> tuple[dict[str, dict[str, Any]], list[SweepPoint]]:
    """A ``sweeps`` family of released SAEs: ``pretrained.sae_id`` is a list of ids, or a template
    over the fields of ``pretrained.points`` (e.g. Gemma Scope's released ``(width, l0)`` pairs)
    or, without points, over the product of the ``layer``/``width``/``k`` axes.

    A point's ``k`` (the dark-matter grid's L0 axis) is its ``k`` field, else its ``l0`` field;
    its width and (unless given) layer come from the release when the config is parsed.
    """
    key = f"sweeps.{sweep}.pretrained"
    pre = dict(spec["pretrained"])
    if not isinstance(pre, dict) or not {"release", "sae_id"} <= set(pre):
        raise ConfigError(f"{key}: needs release and sae_id (an id, a list of ids or a template)")
    release, ids, listed = pre["release"], pre["sae_id"], pre.get("points")
    axes_given = [axis for axis in SWEEP_AXES if axis in spec]
    entries: list[tuple[dict[str, Any], str]] = []
    if isinstance(ids, list):
        if listed or axes_given:
            raise ConfigError(
                f"{key}.sae_id: a list of ids takes no points and no {list(SWEEP_AXES)} axes; "
                "use a template over the points' fields instead"
            )
        entries = [({}, str(sae_id)) for sae_id in ids]
    else:
        if listed is not None:
            if axes_given:
                raise ConfigError(
                    f"{key}.points: give the released points or the axes {axes_given}, not both"
                )
            coords_list = [dict(point) for point in listed]
        else:
            axes = {
                axis: _layer_list(spec[axis], n_layers, f"sweeps.{sweep}.layer")
                if axis == "layer"
                else (list(spec[axis]) if isinstance(spec[axis], list) else [spec[axis]])
                for axis in axes_given
            }
            coords_list = [
                dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())
            ]
        for coords in coords_list:
            fmt = {**coords, "l0": coords.get("l0", coords.get("k"))}
            try:
                entries.append((coords, str(ids).format(**fmt)))
            except (KeyError, IndexError) as err:
                raise ConfigError(
                    f"{key}.sae_id: the template {ids!r} needs field {err}; the point has "
                    f"{sorted(coords)}"
                ) from None
    if not entries:
        raise ConfigError(f"{key}: the family is empty")
    varying = [
        name
        for name in dict.fromkeys(k for coords, _ in entries for k in coords)
        if len({str(coords.get(name)) for coords, _ in entries}) > 1 or name == "layer"
    ]
    base = {k: v for k, v in spec.items() if k not in (*SWEEP_AXES, "name", "pretrained")}
    runs: dict[str, dict[str, Any]] = {}
    points: list[SweepPoint] = []
    for index, (coords, sae_id) in enumerate(entries):
        if spec.get("name"):
            name = spec["name"].format(**{**coords, "i": index})
        elif coords:
            tags = "".join(f"-{_AXIS_PREFIX.get(f, f + '_')}{coords[f]}" for f in varying)
            name = sweep + (tags or f"-{index}")
        else:
            name = f"{sweep}-{safe_name(sae_id)}"
        if name in runs:
            raise ConfigError(f"sweeps.{sweep}.name: two points of the family are named {name!r}")
        run = {**base, "pretrained": {"release": release, "sae_id": sae_id}}
        fmt = {"layer": coords.get("layer"), "width": coords.get("width"), "k": coords.get("k")}
        for field_name in (
            "hook",
            "target_hook",
            "group",
        ):  # restated templates, checked on resolving
            if isinstance(run.get(field_name), str):
                run[field_name] = run[field_name].format(**fmt)
        if isinstance(coords.get("width"), int):
            run["width"] = coords["width"]
        runs[name] = run
        k = _int_or_none(coords.get("k", coords.get("l0")))
        points.append(SweepPoint(name, _int_or_none(coords.get("layer")), 0, k))
    return runs, points


def without_defaults(spec: dict[str, Any], section: str) -> dict[str, Any]:
    """``spec`` without the values the schema filled in (what the config file restates)."""
    defaults = schema_defaults(section)
    return {k: v for k, v in spec.items() if not (k in defaults and defaults[k] == v)}


def require_recipe(key: str, spec: dict[str, Any]) -> None:
    missing = [name for name in ("arch", "hook", "width") if name not in spec]
    if missing:
        raise ConfigError(
            f"{key}: a trained SAE needs {missing} (or give pretrained: {{release, sae_id}})"
        )


def release_point(point: SweepPoint, run: dict[str, Any]) -> SweepPoint:
    """A release family's point with the width (and layer) of its resolved release."""
    layer = point.layer
    if layer is None:
        try:
            layer = parse_hook(run["hook"]).layer
        except HookError:
            layer = None
    k = point.k if point.k is not None else run.get("k")
    return replace(point, layer=layer, width=int(run["width"]), k=k)


def expand_runs(
    config: dict[str, Any], n_layers: int | None, resolve: ResolvePretrained
) -> tuple[dict[str, dict[str, Any]], dict[str, list[SweepPoint]]]:
    """Every run spec (the ``saes`` section plus each ``sweeps`` family multiplied out, released
    SAEs resolved by ``resolve``) and the points of each family."""
    store = str(config.get("pretrained_dir", "data/releases"))
    run_specs = dict(config.get("saes", {}))
    for name, spec in run_specs.items():
        if spec.get("pretrained") is not None:
            run_specs[name] = resolve(name, spec, without_defaults(spec, "saes"), store)
        else:
            require_recipe(f"saes.{name}", spec)
    sweeps: dict[str, list[SweepPoint]] = {}
    for sweep, spec in config.get("sweeps", {}).items():
        if spec.get("pretrained") is not None:
            given = without_defaults(spec, "sweeps")
            runs, points = expand_sweep(sweep, given, n_layers)
            runs = {name: resolve(name, {**run, "cache": spec.get("cache", "main")}, run, store)
                    for name, run in runs.items()}  # fmt: skip
            sweeps[sweep] = [release_point(point, runs[point.name]) for point in points]
        else:
            require_recipe(f"sweeps.{sweep}", spec)
            runs, sweeps[sweep] = expand_sweep(sweep, spec, n_layers)
        clash = sorted(set(runs) & set(run_specs))
        if clash:
            raise ConfigError(f"sweeps.{sweep}: generated SAE names {clash} are already taken")
        run_specs.update(runs)
    return run_specs, sweeps
