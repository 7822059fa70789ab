"""Per-SAE arrays over the analysis window: the replacement of the original's ``SAEInfoObject``.

For one SAE and its cache, :func:`compute_sae_info` reads the hook's activations over the
analysis window (a slice of positions of every context of one cache split, special tokens
excluded, at most ``n_tokens`` tokens, contexts in cache order), encodes and decodes them, and
returns x, x̂, the error ``x − x̂`` (the original stored x̂ − x), squared norms, L0 and the active
latents. :func:`write_sae_info` stores them as one zarr group (built under ``.partial``, renamed
when complete); :func:`load_sae_info` reads it back as numpy arrays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np
import zarr

from saelab.runtime import atomic_dir, dataclass_from_section
from saelab.schema import section_defaults

#: Defaults of WindowConfig: the schema's ``darkmatter`` section, their one place.
_DEFAULTS = section_defaults("darkmatter")

if TYPE_CHECKING:
    from saelab.cache.checked import CheckedArray

# torch and saelab.evaluate are imported where SAEs run: readers of an info group (every
# downstream rule) then start without importing torch.

#: Array names of an info group, in order (the contract other analyses read).
INFO_ARRAYS = (
    "x", "x_hat", "error", "error_sq_norm", "x_sq_norm", "l0",
    "latent_idx", "latent_val", "rows", "token_ids", "position",
)  # fmt: skip


class SAEInfoError(ValueError):
    """A window, split or SAE that cannot give an analysis window, with what is allowed."""


@dataclass
class WindowConfig:
    """Which cached tokens the dark-matter analyses look at."""

    window: list[int] = field(default_factory=lambda: section_defaults("darkmatter")["window"])
    """Positions [start, stop) within each context (the original: [1, 1023) for the power
    laws, [200, 1023) elsewhere). ``stop`` is clipped to the context length; special tokens
    (BOS) are always excluded."""
    n_tokens: int = _DEFAULTS["n_tokens"]
    """At most this many tokens (whole contexts in cache order, the last one cut)."""
    split: str = _DEFAULTS["split"]
    """Cache split: ``heldout`` (contexts the SAEs never trained on), ``train`` or ``all``."""
    batch_size: int = _DEFAULTS["batch_size"]
    """Tokens per SAE forward."""

    @classmethod
    def from_section(cls, darkmatter: Mapping[str, Any]) -> WindowConfig:
        """The window of the ``darkmatter`` config section (its keys of the same names)."""
        return dataclass_from_section(cls, darkmatter)

    def __post_init__(self):
        if len(self.window) != 2 or not 0 <= self.window[0] < self.window[1]:
            raise SAEInfoError(
                f"window {self.window!r} must be [start, stop) with 0 <= start < stop"
            )
        if self.n_tokens < 1:
            raise SAEInfoError(f"n_tokens {self.n_tokens} must be positive")
        if self.split not in ("heldout", "train", "all"):
            raise SAEInfoError(f"split {self.split!r} is not allowed; use heldout, train or all")


class SAEInfo(NamedTuple):
    """One SAE over the analysis window (N tokens, d dimensions, kmax = max L0)."""

    x: np.ndarray
    """Activations [N, d] float32."""
    x_hat: np.ndarray
    """Reconstructions [N, d] float32."""
    error: np.ndarray
    """x − x̂ [N, d] float32."""
    error_sq_norm: np.ndarray
    """‖x − x̂‖² [N] float32."""
    x_sq_norm: np.ndarray
    """‖x‖² [N] float32."""
    l0: np.ndarray
    """Active latents per token [N] int32."""
    latent_idx: np.ndarray
    """Active latent indices [N, kmax] int32, −1 padded, sorted by descending value."""
    latent_val: np.ndarray
    """Their activations [N, kmax] float32, 0 padded."""
    rows: np.ndarray
    """Row of each token in the cache [N] int64 (``saelab.cache.split_rows`` gives its context)."""
    token_ids: np.ndarray
    """Token id [N] int64."""
    position: np.ndarray
    """Position within its context [N] int32."""
    attrs: dict[str, Any]
    """sae, hook, width, k, cache, window, split, context_len, d."""


def _dense_top(codes, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L0, latent indices and values [n, kmax] (−1 / 0 padded, by descending value)."""
    import torch

    l0 = torch.bincount(codes.rows, minlength=n_rows)
    kmax = max(int(l0.max()) if n_rows else 0, 1)
    # Order by (row ascending, value descending): rows are sorted; sort values within rows.
    order = torch.argsort(codes.values, descending=True, stable=True)
    order = order[torch.argsort(codes.rows[order], stable=True)]
    rows, latents, values = codes.rows[order], codes.latents[order], codes.values[order]
    starts = torch.cumsum(l0, 0) - l0
    slot = torch.arange(len(rows)) - starts[rows]
    idx = torch.full((n_rows, kmax), -1, dtype=torch.int32)
    val = torch.zeros((n_rows, kmax), dtype=torch.float32)
    idx[rows, slot] = latents.to(torch.int32)
    val[rows, slot] = values.float()
    return l0.to(torch.int32).numpy(), idx.numpy(), val.numpy()


def encode_window(sae, x: np.ndarray, batch_size: int = 4096, device: str = "cpu"):
    """x̂, L0, latent indices and values of ``x`` [N, d] under ``sae`` (eval mode)."""
    import torch
    from tqdm.auto import tqdm

    from saelab.codes import reconstruct_batches

    sae.eval()
    x_hat = np.empty_like(x, dtype=np.float32)
    parts = []
    starts = tqdm(range(0, len(x), batch_size), desc="encode", mininterval=1.0)
    batches = (torch.from_numpy(x[b : b + batch_size]) for b in starts)
    b = 0
    for batch, _, rec in reconstruct_batches(sae, batches, device=device):
        x_hat[b : b + len(batch)] = rec.output.float().cpu().numpy()
        b += len(batch)
        codes = rec.codes
        codes = codes._replace(
            rows=codes.rows.cpu(), latents=codes.latents.cpu(), values=codes.values.cpu()
        )
        parts.append(_dense_top(codes, len(batch)))
    kmax = max(p[1].shape[1] for p in parts)

    def pad(a: np.ndarray, fill) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, kmax - a.shape[1])), constant_values=fill)

    l0 = np.concatenate([p[0] for p in parts])
    idx = np.concatenate([pad(p[1], -1) for p in parts])
    val = np.concatenate([pad(p[2], 0.0) for p in parts])
    return x_hat, l0, idx, val


def compute_sae_info(
    sae, cache_path: str | Path, cfg: WindowConfig, name: str, device: str = "cpu"
) -> SAEInfo:
    """Encode the analysis window of ``cache_path`` with ``sae`` (an SAE, not a transcoder)."""
    from saelab.cache import ActivationReader

    if sae.cfg.is_transcoder:
        raise SAEInfoError(
            f"{name} is a transcoder ({sae.cfg.hook_name} -> {sae.cfg.target_hook_name}); "
            "the dark-matter analyses need an SAE that reconstructs its own input"
        )
    hook = sae.cfg.hook_name
    reader = ActivationReader(cache_path, hook, 1, split=cfg.split, shuffle=False)
    ctx = reader.context_len
    group = reader.group
    try:
        rows = reader.window_rows(cfg.window, cfg.n_tokens)
    except ValueError as err:
        raise SAEInfoError(str(err)) from err
    # Read the contiguous span that holds the rows, then pick them (one sequential read).
    acts = cast("CheckedArray", group[hook])  # a cache's hooks are arrays, not groups
    span = np.asarray(acts[int(rows[0]) : int(rows[-1]) + 1], dtype=np.float32)
    x = np.ascontiguousarray(span[rows - rows[0]])
    del span
    x_hat, l0, idx, val = encode_window(sae, x, cfg.batch_size, device)
    error = x - x_hat
    return SAEInfo(
        x=x,
        x_hat=x_hat,
        error=error,
        error_sq_norm=np.square(error, dtype=np.float64).sum(1).astype(np.float32),
        x_sq_norm=np.square(x, dtype=np.float64).sum(1).astype(np.float32),
        l0=l0,
        latent_idx=idx,
        latent_val=val,
        rows=rows,
        token_ids=np.asarray(cast("CheckedArray", group["tokens"])[:], dtype=np.int64)[rows],
        position=reader.position_of(rows).astype(np.int32),
        attrs={
            "sae": name,
            "hook": hook,
            "width": int(sae.cfg.width),
            "k": None if sae.cfg.k is None else int(sae.cfg.k),
            "cache": str(cache_path),
            "window": [int(cfg.window[0]), int(min(cfg.window[1], ctx))],
            "split": cfg.split,
            "context_len": ctx,
            "d": int(x.shape[1]),
            "n_tokens": len(rows),
        },
    )


def write_sae_info(info: SAEInfo, path: str | os.PathLike) -> Path:
    """Write ``info`` as a zarr group at ``path``, atomically (:func:`saelab.runtime.atomic_dir`)."""
    with atomic_dir(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        for name in INFO_ARRAYS:
            array = getattr(info, name)
            group.create_array(name, data=array, chunks=array.shape, compressors=None)
        group.attrs["sae_info"] = info.attrs
    return Path(path)


def load_sae_info(path: str | os.PathLike) -> SAEInfo:
    """Read an info group written by :func:`write_sae_info`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SAE info at {path} (rule `darkmatter_info` makes it)")
    group = zarr.open_group(path, mode="r")
    if "sae_info" not in group.attrs:
        raise SAEInfoError(f"{path} is not an SAE info group (no 'sae_info' attributes)")
    arrays = {name: np.asarray(cast(zarr.Array, group[name])[...]) for name in INFO_ARRAYS}
    return SAEInfo(**arrays, attrs=dict(cast(dict, group.attrs["sae_info"])))
