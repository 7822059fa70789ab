"""Writing a cache: one forward pass per batch of contexts, resumable (see :mod:`saelab.cache`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from saelab.cache.checked import MANIFEST_KEY, PROGRESS_FILE, CacheError, checksum_codecs
from saelab.cache.reader import context_rows
from saelab.cache.sources import probe_widths


class CacheSummary(NamedTuple):
    """What :func:`build_cache` did."""

    path: Path
    n_tokens: int
    resumed_from_context: int
    seconds: float
    tokens_per_s: float


@dataclass
class _Layout:
    n_contexts: int
    context_len: int
    batch_contexts: int

    @property
    def n_tokens(self) -> int:
        return self.n_contexts * self.context_len

    @property
    def chunk_rows(self) -> int:
        return self.batch_contexts * self.context_len


def _atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_progress(partial: Path) -> dict[str, Any] | None:
    try:
        with open(partial / PROGRESS_FILE) as handle:
            return json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _resume_point(partial: Path, identity: dict[str, Any]) -> int:
    """Contexts already written in ``partial`` for the same job, or 0 (and a clean slate)."""
    progress = _read_progress(partial)
    if progress is not None and progress.get("identity") == identity:
        try:
            zarr.open_group(partial, mode="r")
            return int(progress["contexts_done"])
        except Exception:  # unreadable metadata: start over
            pass
    if partial.exists():
        shutil.rmtree(partial)
    return 0


def build_cache(
    source: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    tokens: np.ndarray,
    special_mask: np.ndarray,
    hooks: list[str],
    out_path: str | Path,
    *,
    dtype: str = "float16",
    batch_contexts: int = 16,
    manifest: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    checksum: bool = True,
) -> CacheSummary:
    """Run ``source`` over ``tokens`` [n_contexts, ctx] and write every hook into one zarr group.

    Each hook's width is read from a probe forward on one short context, never assumed.
    ``manifest`` is stored in the group's attributes beside saelab's own fields.
    A job killed mid-way and run again with the same arguments continues from the last complete
    batch and produces bitwise-identical arrays. ``on_batch(contexts_done)`` is called after each
    committed batch (tests use it to kill a run at a known point). ``checksum=False`` leaves out
    the per-chunk crc32c (only the benchmark does, to measure its cost).
    """
    out_path = Path(out_path)
    if out_path.exists():
        raise CacheError(f"{out_path} already exists; delete it to rebuild the cache")
    if tokens.ndim != 2 or tokens.shape != special_mask.shape:
        raise CacheError(
            f"tokens must be [n_contexts, context_len] with a mask of the same shape; got "
            f"{tokens.shape} and {special_mask.shape}"
        )
    if dtype not in ("float16", "float32"):
        raise CacheError(f"dtype {dtype!r} is not allowed; use float16 or float32")
    layout = _Layout(tokens.shape[0], tokens.shape[1], batch_contexts)
    widths = probe_widths(source, tokens, device)
    partial = out_path.with_name(out_path.name + ".partial")
    identity = {
        "hooks": list(hooks),
        "widths": {h: int(widths[h]) for h in hooks},
        "dtype": dtype,
        "batch_contexts": batch_contexts,
        "shape": list(tokens.shape),
        "tokens_sha": _sha256(tokens),
        "manifest": manifest or {},
        "checksum": bool(checksum),
    }
    start_context = _resume_point(partial, identity)
    if start_context == 0:
        _create_group(partial, hooks, widths, layout, dtype, tokens, special_mask, checksum)
        _atomic_write_json(partial / PROGRESS_FILE, {"identity": identity, "contexts_done": 0})
    group = zarr.open_group(partial, mode="r+")
    # _create_group made every hook an array.
    arrays = {hook: cast(zarr.Array, group[hook]) for hook in hooks}

    t0 = time.perf_counter()
    bar = tqdm(
        total=layout.n_tokens,
        initial=start_context * layout.context_len,
        unit="tok",
        unit_scale=True,
        desc=f"cache {out_path.name}",
        disable=not progress,
        mininterval=1.0,
    )
    torch_dtype = getattr(torch, dtype)

    def commit(rows: slice, stored: dict[str, np.ndarray], first: int, last: int) -> None:
        # Arrays first, then the progress file: a kill in between re-runs this batch on resume.
        for hook, values in stored.items():
            arrays[hook][rows] = values
        _atomic_write_json(partial / PROGRESS_FILE, {"identity": identity, "contexts_done": last})
        bar.update((last - first) * layout.context_len)
        if on_batch is not None:
            on_batch(last)

    # One writer thread, FIFO: batch i is written while the model runs batch i + 1, which hides
    # the zarr write (10-18% of the time on CPU). At most one batch waits in memory.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer") as writer:
        pending = None
        for first in range(start_context, layout.n_contexts, batch_contexts):
            last = min(first + batch_contexts, layout.n_contexts)
            batch = torch.from_numpy(tokens[first:last].astype(np.int64)).to(device)
            acts = source(batch)
            rows = context_rows(first, last, layout.context_len)
            stored = {}
            for hook in hooks:
                if hook not in acts:
                    raise CacheError(f"the activation source returned no {hook!r}")
                value = acts[hook].reshape(batch.numel(), -1)
                if value.shape[1] != widths[hook]:
                    raise CacheError(
                        f"{hook}: activations are {value.shape[1]} wide, expected {widths[hook]}"
                    )
                # torch's float16 cast is ~10x faster than numpy's astype, and bit-identical.
                converted = value.to("cpu", torch_dtype)
                if not torch.isfinite(converted).all():
                    raise CacheError(
                        f"{hook}: non-finite activations in contexts {first}..{last - 1} after "
                        f"the cast to {dtype} (float16 overflows above 65504); use dtype: float32"
                    )
                stored[hook] = converted.numpy()
            if pending is not None:
                pending.result()  # re-raises a failed write here, before more work is queued
            pending = writer.submit(commit, rows, stored, first, last)
        if pending is not None:
            pending.result()
    bar.close()
    seconds = time.perf_counter() - t0
    done_tokens = (layout.n_contexts - start_context) * layout.context_len

    group.attrs[MANIFEST_KEY] = {
        **_manifest(hooks, widths, layout, dtype, manifest),
        "checksum": "crc32c" if checksum else None,
    }
    os.remove(partial / PROGRESS_FILE)
    os.replace(partial, out_path)
    return CacheSummary(
        out_path, layout.n_tokens, start_context, seconds, done_tokens / max(seconds, 1e-9)
    )


def _sha256(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _create_group(partial, hooks, widths, layout: _Layout, dtype, tokens, special_mask, checksum):
    group = zarr.open_group(partial, mode="w", zarr_format=3)
    rows = layout.chunk_rows
    for hook in hooks:
        # Uncompressed: zstd saves ~8% on activations and costs 3x in write and read speed.
        # The crc32c appends 4 bytes per chunk (benchmarks/cache_throughput.py measures it).
        group.create_array(
            hook,
            shape=(layout.n_tokens, int(widths[hook])),
            chunks=(rows, int(widths[hook])),
            dtype=dtype,
            compressors=checksum_codecs() if checksum else None,
            fill_value=0,
        )
    extra: dict[str, Any] = {"compressors": checksum_codecs()} if checksum else {}
    group.create_array("tokens", data=tokens.reshape(-1).astype(np.int32), chunks=(rows,), **extra)
    group.create_array(
        "special_mask", data=special_mask.reshape(-1).astype(bool), chunks=(rows,), **extra
    )


def _manifest(hooks, widths, layout: _Layout, dtype, extra) -> dict[str, Any]:
    from saelab import __version__

    return {
        **(extra or {}),
        "hooks": list(hooks),
        "widths": {h: int(widths[h]) for h in hooks},
        "dtype": dtype,
        "context_len": layout.context_len,
        "n_contexts": layout.n_contexts,
        "n_tokens": layout.n_tokens,
        "chunk_rows": layout.chunk_rows,
        "saelab_version": __version__,
        "torch_version": torch.__version__,
        "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
