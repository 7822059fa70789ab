"""Hook names, in TransformerLens / SAE-Lens conventions (``blocks.{L}.hook_resid_pre`` ...).

Every cached array, SAE and analysis names its site by one of these strings, so an SAE
trained here loads in SAE-Lens with the same ``hook_name`` and vice versa.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: Sites inside a block that saelab can cache, and which model width each one has.
SITE_WIDTHS: dict[str, str] = {
    "hook_resid_pre": "d_model",
    "hook_resid_mid": "d_model",
    "hook_resid_post": "d_model",
    "hook_attn_out": "d_model",
    "hook_mlp_out": "d_model",
    "ln2.hook_normalized": "d_model",
    "attn.hook_z": "n_heads*d_head",
    "mlp.hook_pre": "d_mlp",
    "mlp.hook_post": "d_mlp",
}

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class HookSite(NamedTuple):
    """A parsed hook name."""

    layer: int
    """Block index."""
    site: str
    """Site inside the block, e.g. ``hook_resid_pre`` or ``attn.hook_z``."""

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.site}"


class HookError(ValueError):
    """A hook name that saelab does not know, or a layer the model does not have."""


def parse_hook(name: str, n_layers: int | None = None) -> HookSite:
    """Parse ``blocks.{L}.{site}``; check the site and, if ``n_layers`` is given, the layer."""
    match = _HOOK_RE.match(name) if isinstance(name, str) else None
    if match is None or match.group(2) not in SITE_WIDTHS:
        raise HookError(
            f"unknown hook name {name!r}: expected 'blocks.<layer>.<site>' with site one of "
            f"{sorted(SITE_WIDTHS)}"
        )
    layer = int(match.group(1))
    if n_layers is not None and not 0 <= layer < n_layers:
        raise HookError(
            f"hook {name!r} names layer {layer}, but the model has layers 0..{n_layers - 1}"
        )
    return HookSite(layer, match.group(2))


def hook_width(name: str, cfg) -> int:
    """Width of the vectors at a hook, from a HookedTransformerConfig-like ``cfg``."""
    site = parse_hook(name).site
    kind = SITE_WIDTHS[site]
    if kind == "d_model":
        return int(cfg.d_model)
    if kind == "d_mlp":
        return int(cfg.d_mlp)
    return int(cfg.n_heads * cfg.d_head)


def deepest_layer(hook_names: list[str]) -> int:
    """The largest block index among ``hook_names``: the forward can stop after it."""
    return max(parse_hook(h).layer for h in hook_names)
