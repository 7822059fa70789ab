"""Firing counts and pair counts of binarised SAE codes, and the matrices derived from them.

A latent is *active* on a token when its activation is strictly above the activation threshold
τ (methods §2.2). Over N tokens, with A [N, D] the binarised codes:

* n_i = Σ_t A_ti (firing counts), C = AᵀA (pair counts; C_ii = n_i);
* the normalised co-occurrence N_ij = C_ij / max(n_i, n_j) = min(P(i|j), P(j|i)) with the
  diagonal set to 1, as the original defines it (its comment calls it "P(j|i)", which it is not);
* the true Jaccard index C_ij / (n_i + n_j − C_ij);
* :func:`seed000_jaccard`, the original's quantity of that name, which divides the *normalised*
  N_ij by raw counts (n_i + n_j − N_ij). It is not a Jaccard index; it is kept under its own name
  only to reproduce the original's files.

The original forms C as a dense binarised float matmul in chunks of 1000 rows, O(N·D²) time and a
dense D×D matrix (:func:`dense_pair_counts`, kept for the benchmark and the tests). Here C comes
from the sparse codes: a scipy CSR product AᵀA costing O(Σ_t k_t²) = O(N·k²), stored as CSR.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from saelab.runtime import load_npz, savez_atomic

log = logging.getLogger("saelab.cooccurrence")

#: How the pair counts are formed: from the sparse codes, the original's dense chunked matmul
#: (restricted to latents that fire), or whichever :func:`choose_method` expects to be cheaper.
METHODS = ("sparse", "dense", "auto")

#: A sparse pair product costs about this many dense multiply-adds (scipy's SpGEMM against BLAS
#: sgemm, measured on 2 CPU cores: ~20 ns against ~0.1 ns).
SPARSE_COST_FACTOR = 128

#: The dense method's U×U float32 accumulator may take at most this many bytes.
DENSE_MAX_BYTES = 2**30

#: Above this many sparse pair products (Σ_t k_t², ~20 ns each: ~7 minutes) with no room for the
#: dense method, the codes are not sparse codes: :func:`counts_from_activity` stops and says why.
MAX_SPARSE_PRODUCTS = 2e10


class CooccurrenceCounts(NamedTuple):
    """Counts of one SAE at one activation threshold."""

    counts: sp.csr_matrix
    """[D, D] int32 (N < 2^31), symmetric: C_ij = tokens on which latents i and j are both active
    (C_ii = n_i); zeros are not stored."""
    firing_count: np.ndarray
    """[D] int64: n_i, tokens on which latent i is active."""
    n_tokens: int
    """Tokens counted (special tokens excluded)."""
    threshold: float
    """Activation threshold τ: active means activation > τ."""
    meta: dict[str, Any]
    """sae, hook, cache, split, encoding, method."""

    @property
    def width(self) -> int:
        return int(self.firing_count.shape[0])


def threshold_tag(threshold: float) -> str:
    """File-name tag of an activation threshold, as the original writes it: 1.5 -> ``1_5``."""
    return str(float(threshold)).replace(".", "_").replace("-", "m")


# ---------------------------------------------------------------------------------------------
# Pair counts
# ---------------------------------------------------------------------------------------------


def binarised_codes(rows: np.ndarray, latents: np.ndarray, n_rows: int, width: int):
    """A [n_rows, width] CSR of ones at the given (row, latent) entries (each entry once)."""
    rows = np.asarray(rows, dtype=np.int64)
    latents = np.asarray(latents, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"row indices must lie in 0..{n_rows - 1}")
    if len(latents) and (latents.min() < 0 or latents.max() >= width):
        raise ValueError(f"latent indices must lie in 0..{width - 1}")
    if n_rows >= 2**31:
        raise ValueError(f"{n_rows} tokens: int32 counts hold at most 2^31 - 1")
    ones = np.ones(len(rows), dtype=np.int32)
    matrix = sp.csr_matrix((ones, (rows, latents)), shape=(n_rows, width))
    if matrix.nnz != len(rows):  # duplicates were summed: an entry listed twice
        raise ValueError("each (row, latent) entry must appear once")
    return matrix


def pair_counts(rows: np.ndarray, latents: np.ndarray, n_rows: int, width: int) -> sp.csr_matrix:
    """C = AᵀA [width, width] (int32 CSR, sorted indices) of the binarised codes, in O(N·k²)."""
    a = binarised_codes(rows, latents, n_rows, width)
    counts = (a.T.tocsr() @ a).tocsr()
    counts.sort_indices()
    counts.eliminate_zeros()
    return counts


def dense_pair_counts(
    rows: np.ndarray, latents: np.ndarray, n_rows: int, width: int, chunk_rows: int = 1000
) -> np.ndarray:
    """The original's method: dense binarised float32 chunks of ``chunk_rows`` tokens, C += AᵀA.

    O(N·D²) time and a dense D×D accumulator (float32 like the original's torch tensor while
    counts stay exact, i.e. below 2^24 tokens; float64 beyond). Returns that accumulator
    [width, width], whose values are exact integer counts.
    """
    rows = np.asarray(rows, dtype=np.int64)
    latents = np.asarray(latents, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows, latents = rows[order], latents[order]
    dtype = np.float32 if n_rows < 2**24 else np.float64
    total = np.zeros((width, width), dtype=dtype)
    chunk = np.zeros((chunk_rows, width), dtype=np.float32)
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        lo, hi = np.searchsorted(rows, [start, stop])
        chunk.fill(0)
        chunk[rows[lo:hi] - start, latents[lo:hi]] = 1.0
        block = chunk[: stop - start]
        total += block.T @ block
    return total


# ---------------------------------------------------------------------------------------------
# Derived matrices (sparse: zero where C is zero, except the diagonal)
# ---------------------------------------------------------------------------------------------


def _with_diagonal(matrix: sp.coo_matrix, value: float) -> sp.csr_matrix:
    """``matrix`` with every diagonal entry (stored or not) set to ``value``."""
    off = matrix.row != matrix.col
    width = matrix.shape[0]  # pyright: ignore[reportOptionalSubscript]  # scipy's inferred shape is None
    diag = np.arange(width)
    row = np.concatenate([matrix.row[off], diag])
    col = np.concatenate([matrix.col[off], diag])
    data = np.concatenate([matrix.data[off], np.full(width, value, dtype=matrix.data.dtype)])
    out = sp.csr_matrix((data, (row, col)), shape=matrix.shape)
    out.sort_indices()
    return out


def normalised_cooccurrence(cc: CooccurrenceCounts, diagonal: float | None = 1.0) -> sp.csr_matrix:
    """N_ij = C_ij / max(n_i, n_j) (float32 CSR), the diagonal set to ``diagonal`` (the
    original: 1; ``None`` keeps C_ii / n_i, i.e. 1 for latents that fire, absent otherwise).

    N_ij = min(P(i|j), P(j|i)). The original adds 1e-10 to the denominator, which changes
    nothing where C_ij > 0, and zero entries stay zero."""
    coo = cc.counts.tocoo()
    den = np.maximum(cc.firing_count[coo.row], cc.firing_count[coo.col]).astype(np.float64)
    data = (coo.data / den).astype(np.float32)
    result = sp.coo_matrix((data, (coo.row, coo.col)), shape=coo.shape)
    if diagonal is None:
        # a coo_matrix's tocsr() is a csr_matrix; pyright infers scipy's shared code as csr_array
        return result.tocsr()  # pyright: ignore[reportReturnType]
    return _with_diagonal(result, diagonal)


def jaccard(cc: CooccurrenceCounts) -> sp.csr_matrix:
    """The true Jaccard index |i ∧ j| / |i ∨ j| = C_ij / (n_i + n_j − C_ij) (float32 CSR),
    diagonal 1."""
    coo = cc.counts.tocoo()
    n = cc.firing_count.astype(np.float64)
    data = (coo.data / (n[coo.row] + n[coo.col] - coo.data)).astype(np.float32)
    return _with_diagonal(sp.coo_matrix((data, (coo.row, coo.col)), shape=coo.shape), 1.0)


def seed000_jaccard(cc: CooccurrenceCounts) -> sp.csr_matrix:
    """The original's "Jaccard" (seed 000 ``2_get_cooc_mat_normal.py``), NOT a Jaccard index:
    with N' = the normalised matrix with zero diagonal, J_ij = N'_ij / (n_i + n_j − N'_ij + 1e-10),
    diagonal 1. It mixes a ratio in [0, 1] with raw counts, so it is roughly N_ij / (n_i + n_j).
    (NaN and inf cannot arise on stored entries; the original mapped them to 0 and 1.)"""
    normalised = normalised_cooccurrence(cc, diagonal=None).tocoo()
    off = normalised.row != normalised.col
    row, col, value = normalised.row[off], normalised.col[off], normalised.data[off]
    n = cc.firing_count.astype(np.float64)
    data = (value / (n[row] + n[col] - value + 1e-10)).astype(np.float32)
    return _with_diagonal(sp.coo_matrix((data, (row, col)), shape=normalised.shape), 1.0)


def without_diagonal(matrix: sp.spmatrix) -> sp.csr_matrix:
    """A copy with the diagonal removed (the graph of co-occurrence between distinct latents)."""
    coo = matrix.tocoo()  # pyright: ignore[reportAttributeAccessIssue]  # scipy's spmatrix mixin declares no tocoo
    off = coo.row != coo.col
    out = sp.csr_matrix((coo.data[off], (coo.row[off], coo.col[off])), shape=coo.shape)
    out.sort_indices()
    return out


def mean_cooccurrence_by_latent(matrix: sp.spmatrix) -> np.ndarray:
    """Row means of ``matrix`` with its diagonal zeroed, over the D − 1 other latents."""
    width = matrix.shape[0]
    sums = np.asarray(without_diagonal(matrix).sum(axis=1)).ravel()
    return sums / max(width - 1, 1)


# ---------------------------------------------------------------------------------------------
# Counts of an activity table
# ---------------------------------------------------------------------------------------------


class SparseActivity(NamedTuple):
    """The positive activations of an SAE over N tokens: entry i is f[rows[i], latents[i]]."""

    rows: np.ndarray
    latents: np.ndarray
    values: np.ndarray
    n_tokens: int
    width: int


def pair_products(rows: np.ndarray, n_rows: int) -> float:
    """Σ_t k_t²: the pair products a sparse count makes (k_t = entries of token t)."""
    per_row = np.bincount(rows, minlength=n_rows).astype(np.float64)
    return float((per_row**2).sum())


def choose_method(rows: np.ndarray, latents: np.ndarray, n_rows: int) -> str:
    """``dense`` when Σ_t k_t² (sparse products) costs more than N·U² dense multiply-adds over
    the U latents that fire, and U×U fits in 1 GiB of float32; else ``sparse``."""
    n_firing = len(np.unique(latents))
    dense_ok = n_firing**2 * 4 <= DENSE_MAX_BYTES
    sparse_cost = SPARSE_COST_FACTOR * pair_products(rows, n_rows)
    return "dense" if dense_ok and sparse_cost > n_rows * float(n_firing) ** 2 else "sparse"


def check_sparse_cost(rows: np.ndarray, latents: np.ndarray, n_rows: int, threshold: float,
                      meta: dict) -> None:  # fmt: skip
    """Stop before an O(N·k²) count that would run for hours: codes that dense mean an SAE that
    is not sparse at this threshold (typically a BatchTopK inference threshold still near its
    initial value after a few training steps)."""
    products = pair_products(rows, n_rows)
    if products <= MAX_SPARSE_PRODUCTS:
        return
    n_firing = len(np.unique(latents))
    mean_l0 = len(rows) / max(n_rows, 1)
    raise ValueError(
        f"co-occurrence of SAE {meta.get('sae') or '?'!r} at tau={threshold}: its codes have mean "
        f"L0 {mean_l0:.0f} over {n_rows} tokens ({n_firing} latents fire), i.e. "
        f"{products:.2e} pair products (limit {MAX_SPARSE_PRODUCTS:.0e}, hours of work), and a "
        f"dense {n_firing}x{n_firing} count matrix needs {4 * n_firing**2 / 2**30:.1f} GiB (limit "
        f"{DENSE_MAX_BYTES / 2**30:g} GiB). Codes this dense are not an SAE's sparse codes: "
        "train the SAE longer (a BatchTopK "
        "inference threshold needs many steps of `threshold_ema`), raise the threshold "
        "(`cooccurrence.thresholds`) or use `cooccurrence.encoding: train_batchtopk`."
    )


def dense_pair_counts_compact(
    rows: np.ndarray, latents: np.ndarray, n_rows: int, width: int
) -> sp.csr_matrix:
    """:func:`dense_pair_counts` over only the latents that fire, scattered back to CSR."""
    firing, compact = np.unique(latents, return_inverse=True)
    dense = dense_pair_counts(rows, compact, n_rows, len(firing))
    i, j = np.nonzero(dense)
    counts = sp.csr_matrix(
        (dense[i, j].astype(np.int32), (firing[i], firing[j])), shape=(width, width)
    )
    counts.sort_indices()
    return counts


def counts_from_activity(
    activity: SparseActivity, threshold: float, method: str = "sparse", meta: dict | None = None
) -> CooccurrenceCounts:
    """Firing and pair counts of the entries with activation > ``threshold``."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not allowed; use one of {METHODS}")
    active = activity.values > threshold
    rows, latents = activity.rows[active], activity.latents[active]
    width = activity.width
    if method == "auto":
        method = choose_method(rows, latents, activity.n_tokens)
    if method == "sparse":
        check_sparse_cost(rows, latents, activity.n_tokens, threshold, meta or {})
        counts = pair_counts(rows, latents, activity.n_tokens, width)
    else:
        counts = dense_pair_counts_compact(rows, latents, activity.n_tokens, width)
    firing = np.bincount(latents, minlength=width).astype(np.int64)
    return CooccurrenceCounts(
        counts, firing, activity.n_tokens, float(threshold),
        {**(meta or {}), "method": method},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------


def save_sparse_matrix(matrix: sp.spmatrix, path: str | os.PathLike) -> Path:
    """A scipy CSR matrix in ``scipy.sparse.save_npz`` layout, written atomically."""
    csr = sp.csr_matrix(matrix)
    arrays = {
        "format": np.array("csr"),
        "shape": np.array(csr.shape),
        "data": csr.data,
        "indices": csr.indices,
        "indptr": csr.indptr,
    }
    return savez_atomic(path, arrays)


def save_counts(cc: CooccurrenceCounts, path: str | os.PathLike) -> Path:
    csr = cc.counts
    arrays = {
        "data": csr.data,
        "indices": csr.indices,
        "indptr": csr.indptr,
        "shape": np.array(csr.shape),
        "firing_count": cc.firing_count,
        "n_tokens": np.array(cc.n_tokens),
        "threshold": np.array(cc.threshold),
        "meta_json": np.array(json.dumps(cc.meta)),
    }
    return savez_atomic(path, arrays)


_COUNTS_ARRAYS = (
    "data", "indices", "indptr", "shape", "firing_count", "n_tokens", "threshold", "meta_json",
)  # fmt: skip


def load_counts(path: str | os.PathLike) -> CooccurrenceCounts:
    data = load_npz(path, _COUNTS_ARRAYS, "co-occurrence counts", "cooccurrence")
    counts = sp.csr_matrix(
        (data["data"], data["indices"], data["indptr"]), shape=tuple(data["shape"])
    )
    return CooccurrenceCounts(
        counts, data["firing_count"], int(data["n_tokens"]), float(data["threshold"]),
        json.loads(str(data["meta_json"])),
    )  # fmt: skip
