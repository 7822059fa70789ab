"""PCA of a subgraph's partial reconstructions (the original's ``5_pca.py``, methods §2.2).

For a subgraph S: take tokens (special tokens excluded) where Σ_{i∈S} f_i > 0, compute the
partial reconstruction r_t = Σ_{i∈S} f_i(x_t)·W_dec[i] (no bias), keep the first
``max_examples`` such tokens, and project them on their first three principal components
(centred, full SVD, like sklearn ``PCA(3, svd_solver='full')``, with sklearn's sign convention).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch

from saelab.features import drop_rows, encode_sparse, sae_reader
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


@torch.inference_mode()
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
    latents = np.unique(np.asarray(latents, dtype=np.int64))
    if len(latents) == 0:
        raise ValueError("the subgraph has no latents")
    if latents.max() >= sae.cfg.width:
        raise ValueError(f"latent {latents.max()} is out of range for width {sae.cfg.width}")
    reader = sae_reader(sae, cache_path, batch_size, split)
    special = reader.group["special_mask"]
    tokens = reader.group["tokens"]
    in_subgraph = torch.zeros(sae.cfg.width, dtype=torch.bool)
    in_subgraph[torch.from_numpy(latents)] = True
    W_dec = sae.W_dec.detach().float()
    recon, rows_out, ids_out, argmax_out = [], [], [], []
    found = scanned = 0
    for x, rows in reader.batches(with_rows=True):
        if found >= max_examples or scanned >= max_tokens:
            break
        x, rows = x[: max_tokens - scanned], rows[: max_tokens - scanned]
        scanned += len(rows)
        mask = np.asarray(special[int(rows[0]) : int(rows[-1]) + 1], dtype=bool)
        codes = drop_rows(encode_sparse(sae, x, encoding), mask)
        codes = codes.select(in_subgraph[codes.latents])
        if codes.values.numel() == 0:
            continue
        dense = torch.zeros(len(rows), len(latents))
        column = torch.from_numpy(np.searchsorted(latents, codes.latents.numpy()))
        dense[codes.rows, column] = codes.values.float()
        fired = dense.sum(1) > 0
        part = dense[fired] @ W_dec[torch.from_numpy(latents)]
        recon.append(part.numpy())
        fired_rows = rows[fired.numpy()]
        rows_out.append(fired_rows)
        ids_out.append(np.asarray(tokens[int(rows[0]) : int(rows[-1]) + 1])[fired_rows - rows[0]])
        argmax_out.append(latents[dense[fired].argmax(1).numpy()])
        found += int(fired.sum())
    if found == 0:
        raise ValueError(
            f"no token among the {scanned} scanned fires any latent of the subgraph {latents.tolist()}"
        )
    points = np.concatenate(recon)[:max_examples]
    coords, ratio = pca_project(points)
    return SubgraphPCA(
        coords=coords,
        explained_variance_ratio=ratio,
        rows=np.concatenate(rows_out)[:max_examples].astype(np.int64),
        token_ids=np.concatenate(ids_out)[:max_examples].astype(np.int64),
        active_latent=np.concatenate(argmax_out)[:max_examples].astype(np.int64),
        latents=latents,
        n_tokens_scanned=scanned,
    )
