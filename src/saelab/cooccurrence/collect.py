"""Sparse codes of an SAE over the tokens of a cache, and their co-occurrence counts.

Kept apart from :mod:`saelab.cooccurrence.counts` so that the graph and summary steps do not
import torch.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from saelab.codes import ENCODINGS, code_batches, concat_parts, sae_reader
from saelab.cooccurrence.counts import CooccurrenceCounts, SparseActivity, counts_from_activity
from saelab.saes.base import SAE

log = logging.getLogger("saelab.cooccurrence")


@torch.inference_mode()
def collect_activity(
    sae: SAE,
    cache_path: str | os.PathLike,
    n_tokens: int,
    *,
    batch_size: int = 4096,
    split: str = "all",
    encoding: str = "eval",
    progress: bool = True,
) -> SparseActivity:
    """Sparse codes of the first ``n_tokens`` non-special tokens of ``split``, in cache order.

    Batches hold ``batch_size`` non-special tokens, like the original's 4096-token batches (so
    ``train_batchtopk`` selects exactly k·batch_size entries per batch; its last, partial batch
    is dropped). ``encoding`` is ``eval`` (the SAE's threshold inference) or
    ``train_batchtopk`` (the original's unintended training-mode encoding).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not allowed; use one of {ENCODINGS}")
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    reader = sae_reader(
        sae, cache_path, batch_size, split, exclude_special=True,
        drop_last=encoding == "train_batchtopk",
    )  # fmt: skip
    rows, latents, values = [], [], []
    done = 0
    desc = "co-occurrence" if progress else None
    for batch in code_batches(sae, reader, n_rows=n_tokens, encoding=encoding, desc=desc):
        if encoding == "train_batchtopk" and len(batch.rows) < batch_size:
            break  # a partial batch would select fewer than k·batch_size entries
        # rows numbered among the non-special tokens streamed, from 0
        rows.append(batch.codes.rows.numpy() + done)
        latents.append(batch.codes.latents.numpy())
        values.append(batch.codes.values.float().numpy())
        done += len(batch.rows)
    if done < n_tokens:
        log.warning("the cache split %r holds only %d usable tokens of %d asked", split, done,
                    n_tokens)  # fmt: skip
    return SparseActivity(
        concat_parts(rows, np.int64), concat_parts(latents, np.int64),
        concat_parts(values, np.float32), done, sae.cfg.width,
    )  # fmt: skip


def cooccurrence_from_cache(
    sae: SAE,
    cache_path: str | os.PathLike,
    n_tokens: int,
    thresholds: list[float],
    *,
    batch_size: int = 4096,
    split: str = "all",
    encoding: str = "eval",
    method: str = "sparse",
    sae_name: str = "",
    progress: bool = True,
) -> dict[float, CooccurrenceCounts]:
    """Counts at every activation threshold, from one pass over the cache."""
    activity = collect_activity(
        sae, cache_path, n_tokens, batch_size=batch_size, split=split, encoding=encoding,
        progress=progress,
    )  # fmt: skip
    meta = {
        "sae": sae_name or sae.cfg.extra.get("run", ""),
        "arch": sae.cfg.arch,
        "hook": sae.cfg.hook_name,
        "cache": str(cache_path),
        "split": split,
        "encoding": encoding,
        "group_sizes": list(sae.cfg.group_sizes or []),
        "l0_mean": float(len(activity.rows) / max(activity.n_tokens, 1)),
    }
    return {float(t): counts_from_activity(activity, t, method, meta) for t in thresholds}
