"""PCA of a subgraph's partial reconstructions (the original's ``5_pca.py``, methods §2.2).

For a subgraph S: take tokens (special tokens excluded) where Σ_{i∈S} f_i > 0, compute the
partial reconstruction r_t = Σ_{i∈S} f_i(x_t)·W_dec[i] (no bias), keep the first
``max_examples`` such tokens, and project them on their first three principal components
(centred, full SVD, like sklearn ``PCA(3, svd_solver='full')``, with sklearn's sign convention).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import numpy as np
import torch

from saelab.codes import code_batches, sae_reader
from saelab.saes.base import SAE


class SubgraphPCA(NamedTuple):
    coords: np.ndarray
    """[n, 3] token coordinates on PC1..PC3 (fewer columns if n or |S| is smaller)."""
    explained_variance_ratio: np.ndarray
    rows: np.ndarray
    """[n] cache row of each token."""
    token_ids: np.ndarray
    """[n] token id of each token."""
    active_latent: np.ndarray
    """[n] the latent of S with the largest activation on the token."""
    latents: np.ndarray
    """The subgraph's latents."""
    n_tokens_scanned: int


def pca_project(points: np.ndarray, n_components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates on the top principal components and their explained-variance ratios.

    Signs follow sklearn's ``svd_flip``: each component's largest-|.| loading is positive."""
    centred = points - points.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    k = min(n_components, vt.shape[0])
    biggest = np.argmax(np.abs(vt[:k]), axis=1)
    signs = np.sign(vt[np.arange(k), biggest])
    signs[signs == 0] = 1
    coords = (u[:, :k] * s[:k]) * signs
    variance = s**2
    ratio = variance[:k] / variance.sum() if variance.sum() > 0 else np.zeros(k)
    return coords, ratio


class _SubgraphScan:
    """The fired tokens of one subgraph S, gathered batch by batch."""

    def __init__(self, latents: np.ndarray, width: int):
        self.latents = latents
        self.member = torch.zeros(width, dtype=torch.bool)
        self.member[torch.from_numpy(latents)] = True
        self.recon, self.rows, self.ids, self.argmax = [], [], [], []
        self.found = 0

    def add(self, codes, rows: np.ndarray, tokens: np.ndarray, W_dec: torch.Tensor) -> None:
        """Fired tokens of this batch (``codes`` special-masked, ``tokens`` of ``rows``)."""
        codes = codes.select(self.member[codes.latents])
        if codes.values.numel() == 0:
            return
        dense = torch.zeros(len(rows), len(self.latents))
        column = torch.from_numpy(np.searchsorted(self.latents, codes.latents.numpy()))
        dense[codes.rows, column] = codes.values.float()
        fired = dense.sum(1) > 0
        self.recon.append((dense[fired] @ W_dec[torch.from_numpy(self.latents)]).numpy())
        self.rows.append(rows[fired.numpy()])
        self.ids.append(tokens[fired.numpy()])
        self.argmax.append(self.latents[dense[fired].argmax(1).numpy()])
        self.found += int(fired.sum())

    def result(self, max_examples: int, scanned: int) -> SubgraphPCA:
        if self.found == 0:
            raise ValueError(
                f"no token among the {scanned} scanned fires any latent of the subgraph "
                f"{self.latents.tolist()}"
            )
        coords, ratio = pca_project(np.concatenate(self.recon)[:max_examples])
        return SubgraphPCA(
            coords=coords,
            explained_variance_ratio=ratio,
            rows=np.concatenate(self.rows)[:max_examples].astype(np.int64),
            token_ids=np.concatenate(self.ids)[:max_examples].astype(np.int64),
            active_latent=np.concatenate(self.argmax)[:max_examples].astype(np.int64),
            latents=self.latents,
            n_tokens_scanned=scanned,
        )


@torch.inference_mode()
def subgraph_pcas(
    sae: SAE,
    cache_path: str | os.PathLike,
    subgraphs: dict[int, np.ndarray | list[int]],
    *,
    max_examples: int = 500,
    max_tokens: int = 65536,
    batch_size: int = 4096,
    split: str = "all",
    encoding: str = "eval",
) -> dict[int, SubgraphPCA | ValueError]:
    """:func:`subgraph_pca` of several subgraphs from one encoding pass over the cache: each
    subgraph takes the same tokens it would alone (rows in order, until it has
    ``max_examples`` fired tokens or ``max_tokens`` rows are scanned). A subgraph that no
    scanned token fires gets the ValueError :func:`subgraph_pca` would raise."""
    scans = {}
    for key, latents in subgraphs.items():
        latents = np.unique(np.asarray(latents, dtype=np.int64))
        if len(latents) == 0:
            raise ValueError(f"subgraph {key} has no latents")
        if latents.max() >= sae.cfg.width:
            raise ValueError(f"latent {latents.max()} is out of range for width {sae.cfg.width}")
        scans[key] = _SubgraphScan(latents, sae.cfg.width)
    reader = sae_reader(sae, cache_path, batch_size, split)
    W_dec = sae.W_dec.detach().float()
    scanned = 0
    scanned_by = {}
    pending = list(scans)
    if max_examples > 0 and max_tokens > 0:
        for batch in code_batches(
            sae, reader, n_rows=max_tokens, encoding=encoding, drop_special=True
        ):
            scanned += len(batch.rows)
            batch_tokens = reader.tokens_of(batch.rows)
            for key in pending:
                scans[key].add(batch.codes, batch.rows, batch_tokens, W_dec)
                scanned_by[key] = scanned
            pending = [key for key, scan in scans.items() if scan.found < max_examples]
            if not pending:
                break
    out = {}
    for key, scan in scans.items():
        try:
            out[key] = scan.result(max_examples, scanned_by.get(key, scanned))
        except ValueError as err:
            out[key] = err
    return out


def subgraph_pca(
    sae: SAE,
    cache_path: str | os.PathLike,
    latents: np.ndarray | list[int],
    *,
    max_examples: int = 500,
    max_tokens: int = 65536,
    batch_size: int = 4096,
    split: str = "all",
    encoding: str = "eval",
) -> SubgraphPCA:
    """Scan at most ``max_tokens`` cache rows in order until ``max_examples`` tokens fire S."""
    if len(np.asarray(latents)) == 0:
        raise ValueError("the subgraph has no latents")
    result = subgraph_pcas(
        sae, cache_path, {0: latents}, max_examples=max_examples, max_tokens=max_tokens,
        batch_size=batch_size, split=split, encoding=encoding,
    )[0]  # fmt: skip
    if isinstance(result, ValueError):
        raise result
    return result


def pca_series(result: SubgraphPCA, token_strings: list[str], subgraph: int) -> dict[str, Any]:
    """What the PCA figures of ``subgraph`` show (rules plot_pca_*), as npz arrays: the fields
    of ``result``, the subgraph id and each token's string (``token_strings_json``: the UTF-8
    bytes of a JSON list, as a numpy string array would drop a token's trailing NULs)."""
    if len(token_strings) != len(result.coords):
        raise ValueError(f"{len(token_strings)} token strings for {len(result.coords)} tokens")
    text = json.dumps(list(token_strings), ensure_ascii=False).encode("utf-8")
    return {
        **result._asdict(),
        "subgraph": np.int64(subgraph),
        "token_strings_json": np.frombuffer(text, dtype=np.uint8),
    }
