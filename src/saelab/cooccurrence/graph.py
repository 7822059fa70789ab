"""Subgraphs of co-occurring latents: the edge threshold and the connected components.

The graph has an edge i–j (i ≠ j) iff N_ij ≥ θ, N the normalised co-occurrence. The original's
``find_threshold`` bisects θ on [0, 1] until the largest connected component has between 150
and 200 nodes (methods §2.2); the bounds are parameters here. Components are labelled in order
of their smallest node, which is the order of ``networkx.connected_components`` the original
used for ``subgraph_id``.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from saelab.cooccurrence.counts import without_diagonal

log = logging.getLogger("saelab.cooccurrence")


def thresholded(matrix: sp.spmatrix, theta: float) -> sp.csr_matrix:
    """Off-diagonal entries ≥ ``theta`` (the rest dropped, not stored)."""
    return _edges_at(without_diagonal(matrix).tocoo(), theta)


def _edges_at(off_diagonal: sp.coo_matrix | sp.coo_array, theta: float) -> sp.csr_matrix:
    keep = off_diagonal.data >= theta
    out = sp.csr_matrix(
        (off_diagonal.data[keep], (off_diagonal.row[keep], off_diagonal.col[keep])),
        shape=off_diagonal.shape,
    )
    out.sort_indices()
    return out


def component_labels(matrix: sp.spmatrix, theta: float) -> np.ndarray:
    """Component id of every node of the graph {i–j : N_ij ≥ θ}, numbered by smallest node."""
    return _labels(thresholded(matrix, theta))


def _labels(graph: sp.csr_matrix) -> np.ndarray:
    _, labels = connected_components(graph, directed=False)
    # scipy already numbers components in order of first node; make that explicit and stable
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[labels]


def largest_component_size(matrix: sp.spmatrix, theta: float) -> int:
    return _largest(_labels(thresholded(matrix, theta)))


def _largest(labels: np.ndarray) -> int:
    return int(np.bincount(labels).max()) if len(labels) else 0


class ThresholdSearch(NamedTuple):
    """Result of :func:`find_edge_threshold`."""

    threshold: float
    largest_size: int
    """Largest component at ``threshold``."""
    reached: bool
    """Whether the largest component lies within the bounds (else: the closest found)."""
    trace: list[tuple[float, int]]
    """Every (θ, largest component size) tried, in order."""


def find_edge_threshold(
    matrix: sp.spmatrix,
    min_size: int = 150,
    max_size: int = 200,
    tolerance: float = 1e-3,
    target: float | None = None,
) -> ThresholdSearch:
    """Bisection of θ on [0, 1] as the original's ``find_threshold``.

    mid = (lo + hi) / 2; s = largest component at mid. If min_size ≤ s ≤ max_size return mid; if
    s < min_size the graph is too sparse (hi = mid), else too connected (lo = mid). Stop when
    hi − lo ≤ ``tolerance`` and return the θ whose s was closest to ``target`` (default the middle
    of the bounds, 175 for 150–200; the first such θ on ties), with a warning.
    """
    if not 1 <= min_size <= max_size:
        raise ValueError(
            f"component bounds must satisfy 1 <= min <= max; got {min_size}, {max_size}"
        )
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    if target is None:
        target = (min_size + max_size) / 2
    off_diagonal = without_diagonal(matrix).tocoo()  # once, not at every bisection step
    lo, hi = 0.0, 1.0
    trace: list[tuple[float, int]] = []
    best: tuple[float, int] | None = None
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        size = _largest(_labels(_edges_at(off_diagonal, mid)))
        trace.append((mid, size))
        if min_size <= size <= max_size:
            return ThresholdSearch(mid, size, True, trace)
        if best is None or abs(size - target) < abs(best[1] - target):
            best = (mid, size)
        if size < min_size:
            hi = mid
        else:
            lo = mid
    assert best is not None
    log.warning(
        "no edge threshold gives a largest component of %d..%d nodes (width %d); using the "
        "closest, theta=%.4f with %d nodes",
        min_size, max_size, matrix.shape[0], best[0], best[1],
    )  # fmt: skip
    return ThresholdSearch(best[0], best[1], False, trace)


class SubgraphResult(NamedTuple):
    labels: np.ndarray
    """[D] subgraph id of each latent (components numbered by their smallest latent)."""
    sizes: np.ndarray
    """[D] size of each latent's subgraph (1: a singleton)."""
    matrix: sp.csr_matrix
    """The thresholded matrix (off-diagonal entries ≥ θ)."""
    threshold: float


def connected_subgraphs(matrix: sp.spmatrix, theta: float) -> SubgraphResult:
    labels = component_labels(matrix, theta)
    sizes = np.bincount(labels)[labels] if len(labels) else labels
    return SubgraphResult(labels, sizes, thresholded(matrix, theta), float(theta))


def node_info_table(
    result: SubgraphResult, sae_name: str, activation_threshold: float, firing_count: np.ndarray
) -> pd.DataFrame:
    """The original's ``node_info`` table: one row per latent, its subgraph and firing count."""
    return pd.DataFrame(
        {
            "node_id": np.arange(len(result.labels)),
            "sae_name": sae_name,
            "activity_threshold": float(activation_threshold),
            "subgraph_id": result.labels,
            "subgraph_size": result.sizes,
            "feature_activations": np.asarray(firing_count, dtype=np.int64),
        }
    )
