"""The one cache → codes stream: an SAE's sparse codes over a cache split, batch by batch.

:func:`code_batches` reads the SAE's hook of a cache in order (an
:class:`~saelab.cache.ActivationReader`, which owns the split, its contexts and windows) and
yields :class:`CodeBatch` ``(rows, x, codes)``: the batch's **global** cache rows, its
activations and its sparse codes (``codes.rows`` index the batch; ``rows[codes.rows]`` are
global rows). :func:`collect_codes` joins a stream's entries. The feature summaries, the
co-occurrence counts and the subgraph PCAs are its callers.

Codes with reconstructions (as spliced: :func:`encode_reconstruct`, with Matryoshka prefix
outputs) come from :func:`reconstruct_batches` over any batches (``x`` or transcoder ``(x, y)``
pairs): :func:`saelab.evaluate.evaluate_sae` and the dark-matter window
(:func:`saelab.darkmatter.info.encode_window`) are its callers.
Two loops keep their own map on purpose, because it is not :func:`encode_reconstruct`'s and
their numbers would change: the trainer's held-out metrics (``sae(x, y)``, the training
objective's forward) and the dark-matter error targets (``sae.reconstruct`` with gradients on,
whose sparse-path values can differ in the last bit).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import DTypeLike
from tqdm.auto import tqdm

from saelab.cache import ActivationReader, CacheError
from saelab.saes.base import SAE, SparseCodes
from saelab.saes.batchtopk import batch_topk

#: Encodings offered to the analyses (see :func:`encode_sparse`).
ENCODINGS = ("eval", "train_batchtopk")


@torch.inference_mode()
def encode_sparse(sae: SAE, x: torch.Tensor, encoding: str = "eval") -> SparseCodes:
    """Sparse codes of ``x`` [B, d_in] without changing the SAE's state.

    * ``eval``: the SAE's inference rule (``sae.eval()``: BatchTopK and Matryoshka keep
      activations above the learned threshold θ, so a token's code does not depend on its batch).
    * ``train_batchtopk``: BatchTopK over the batch as in training (exactly k·B selections),
      which is what the co-occurrence original did because it never called ``.eval()``
      (methods §2.2, caveat 1). Unlike the original, θ is not moved. Only for BatchTopK-style SAEs.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not allowed; use one of {ENCODINGS}")
    was_training = sae.training
    sae.eval()
    try:
        if encoding == "eval":
            return sae.encode(x).codes
        if not hasattr(sae, "threshold"):
            raise ValueError(
                f"encoding 'train_batchtopk' needs a BatchTopK-style SAE; {sae.cfg.arch!r} has none"
            )
        xn, _, _ = sae._normalize(x)
        return batch_topk(sae.pre_activations(xn), sae.cfg.k)
    finally:
        sae.train(was_training)


class Reconstruction(NamedTuple):
    codes: SparseCodes
    output: torch.Tensor
    """``sae.reconstruct(x)``, in the input's scale [B, d_out]."""
    prefix_outputs: list[torch.Tensor] | None
    """Matryoshka: reconstruction with the first g groups + b_dec, for g = 1..G."""


@torch.no_grad()
def encode_reconstruct(sae: SAE, x: torch.Tensor, prefixes: bool = False) -> Reconstruction:
    """Codes and reconstruction of ``x`` exactly as :meth:`SAE.reconstruct` computes them.

    Call with the SAE in eval mode. With ``prefixes`` and a Matryoshka SAE, also every nested
    prefix's reconstruction (first g groups + b_dec), de-normalised the same way.
    """
    xn, mean, std = sae._normalize(x)
    codes = sae.infer_codes(xn)

    def denormalize(out: torch.Tensor) -> torch.Tensor:
        # _normalize returns a mean and a std together, or neither.
        return out * std + mean if mean is not None and std is not None else out

    output = denormalize(sae.decode(codes))
    prefix_outputs = None
    prefix_contributions = getattr(sae, "prefix_contributions", None)
    if prefixes and prefix_contributions is not None:
        running = sae.b_dec.expand(x.shape[0], -1)
        prefix_outputs = []
        for contribution in prefix_contributions(codes):
            running = running + contribution
            prefix_outputs.append(denormalize(running))
    return Reconstruction(codes, output, prefix_outputs)


class ReconstructedBatch(NamedTuple):
    """One batch of :func:`reconstruct_batches`."""

    x: torch.Tensor
    """[B, d_in] the SAE's input, float32 on the device."""
    y: torch.Tensor
    """[B, d_out] its target (``x`` itself for an SAE), float32 on the device."""
    rec: Reconstruction


def reconstruct_batches(
    sae: SAE,
    batches: Iterable,
    *,
    n_rows: int | None = None,
    prefixes: bool = False,
    device: str | torch.device | None = None,
) -> Iterator[ReconstructedBatch]:
    """:func:`encode_reconstruct` of each of ``batches`` (``x`` [B, d_in], or ``(x, y)`` pairs
    for a transcoder), the first ``n_rows`` rows at most, moved to ``device`` (default: the
    SAE's) as float32. Call with the SAE in eval mode; stops at the first empty batch."""
    device = sae.device if device is None else device
    seen = 0
    for batch in batches:
        x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        if y is None:
            if sae.cfg.is_transcoder:
                raise ValueError("a transcoder needs (source, target) batches")
            y = x
        if n_rows is not None:
            x, y = x[: n_rows - seen], y[: n_rows - seen]
        if x.shape[0] == 0:
            return
        x = x.to(device, torch.float32)
        y = y.to(device, torch.float32)
        yield ReconstructedBatch(x, y, encode_reconstruct(sae, x, prefixes=prefixes))
        seen += x.shape[0]
        if n_rows is not None and seen >= n_rows:
            return


def drop_rows(codes: SparseCodes, drop: np.ndarray) -> SparseCodes:
    """``codes`` without the entries of rows where ``drop`` [n_rows] is True."""
    if not drop.any():
        return codes
    keep = ~torch.from_numpy(np.asarray(drop, dtype=bool))[codes.rows]
    return codes.select(keep)


def sae_reader(
    sae: SAE,
    cache_path: str | os.PathLike,
    batch_size: int,
    split: str = "all",
    *,
    exclude_special: bool = False,
    drop_last: bool = False,
) -> ActivationReader:
    """The SAE's hook of a cache, rows in order (special tokens included unless
    ``exclude_special``; callers then mask them). Fails with :class:`CacheError` when the
    cached hook is not ``d_in`` wide."""
    hook = sae.cfg.hook_name
    if not hook:
        raise ValueError("the SAE's cfg.hook_name is empty: cannot tell which cache rows to read")
    reader = ActivationReader(
        cache_path, hook, batch_size, split=split, shuffle=False,
        exclude_special=exclude_special, drop_last=drop_last,
    )  # fmt: skip
    if reader.widths[hook] != sae.cfg.d_in:
        raise CacheError(
            f"{hook} in {cache_path} is {reader.widths[hook]} wide but the SAE reads d_in="
            f"{sae.cfg.d_in}"
        )
    return reader


def concat_parts(parts: list[np.ndarray], dtype) -> np.ndarray:
    """The parts joined as ``dtype`` (an empty array when there are none)."""
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


class CodeBatch(NamedTuple):
    """One batch of the stream."""

    rows: np.ndarray
    """[B] int64 global cache rows of the batch, in cache order."""
    x: torch.Tensor
    """[B, d_in] the SAE's input activations."""
    codes: SparseCodes
    """Sparse codes of ``x`` (``codes.rows`` index the batch; special rows dropped if asked)."""


def code_batches(
    sae: SAE,
    reader: ActivationReader,
    *,
    n_rows: int | None = None,
    encoding: str = "eval",
    drop_special: bool = False,
    desc: str | None = None,
) -> Iterator[CodeBatch]:
    """The SAE's codes over ``reader``'s batches (read in order: see :func:`sae_reader`), the
    first ``n_rows`` rows at most. With ``drop_special`` the entries of special tokens
    (BOS/EOS/PAD) are dropped from the codes (their rows stay in the batch). ``desc`` shows a
    progress bar of that name."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not allowed; use one of {ENCODINGS}")
    if reader.shuffle:
        raise ValueError(
            "the codes stream reads a cache in order: build the reader with shuffle=False"
        )
    special = reader.group["special_mask"] if drop_special else None
    total = reader.n_rows if n_rows is None else min(n_rows, reader.n_rows)
    done = 0
    with tqdm(total=total, unit="tok", unit_scale=True, desc=desc, disable=desc is None) as bar:
        for x, rows in reader.batches(with_rows=True):
            if n_rows is not None:
                if done >= n_rows:
                    break
                x, rows = x[: n_rows - done], rows[: n_rows - done]
            codes = encode_sparse(sae, x, encoding)
            if special is not None:
                lo, hi = int(rows[0]), int(rows[-1]) + 1
                codes = drop_rows(codes, np.asarray(special[lo:hi], dtype=bool)[rows - lo])
            done += len(rows)
            bar.update(len(rows))
            yield CodeBatch(rows, x, codes)


class CollectedCodes(NamedTuple):
    """A stream's entries joined, one per (row, latent) with a nonzero code."""

    rows: np.ndarray
    """int64 global cache rows."""
    latents: np.ndarray
    values: np.ndarray
    """float32."""
    n_rows: int
    """Rows streamed (special ones included)."""


def collect_codes(
    batches: Iterable[CodeBatch], latent_dtype: DTypeLike = np.int64
) -> CollectedCodes:
    """Every entry of ``batches`` in stream order, with global rows."""
    rows, latents, values = [], [], []
    n_rows = 0
    for batch in batches:
        rows.append(batch.rows[batch.codes.rows.numpy()])
        latents.append(batch.codes.latents.numpy())
        values.append(batch.codes.values.float().numpy())
        n_rows += len(batch.rows)
    return CollectedCodes(
        concat_parts(rows, np.int64), concat_parts(latents, latent_dtype),
        concat_parts(values, np.float32), n_rows,
    )  # fmt: skip
