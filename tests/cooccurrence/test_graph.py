"""Tests of ``saelab.cooccurrence.graph``, moved from tests/test_cooccurrence.py.

Notes shared with the other tests moved from tests/test_cooccurrence.py:
``tests/cooccurrence/__init__.py``."""

from __future__ import annotations

import logging

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from saelab.cooccurrence import (
    connected_subgraphs,
    find_edge_threshold,
    node_info_table,
)

# ------------------------------------------------------------------ bisection and subgraphs


def path_graph() -> sp.csr_matrix:
    """0-1-2-3-4 at 0.9, 4-5 at 0.6, 5-6 at 0.3; 7, 8, 9 alone. Largest component: 7 nodes for
    θ ≤ 0.3, 6 for θ ≤ 0.6, 5 for θ ≤ 0.9, else 1."""
    edges = {(0, 1): 0.9, (1, 2): 0.9, (2, 3): 0.9, (3, 4): 0.9, (4, 5): 0.6, (5, 6): 0.3}
    dense = np.eye(10, dtype=np.float32)
    for (i, j), w in edges.items():
        dense[i, j] = dense[j, i] = w
    return sp.csr_matrix(dense)


def test_bisection_by_hand(caplog):
    matrix = path_graph()
    found = find_edge_threshold(matrix, 6, 6)
    assert found.reached and found.threshold == 0.5 and found.largest_size == 6
    found = find_edge_threshold(matrix, 7, 7)  # 0.5 gives 6 (too small): hi = 0.5, then 0.25
    assert found.threshold == 0.25 and found.largest_size == 7
    assert found.trace == [(0.5, 6), (0.25, 7)]
    with caplog.at_level(logging.WARNING, logger="saelab.cooccurrence"):
        found = find_edge_threshold(matrix, 3, 4)  # unreachable: sizes jump 5 -> 1
    assert not found.reached
    # 0.5 -> 6, 0.75 -> 5, 0.875 -> 5, 0.9375 -> 1, ...: closest to 3.5 is the first 5
    assert found.threshold == 0.75 and found.largest_size == 5
    assert "no edge threshold" in caplog.text
    with pytest.raises(ValueError, match="bounds"):
        find_edge_threshold(matrix, 5, 4)


def test_components_match_networkx_order():
    rng = np.random.default_rng(0)
    dense = np.triu(rng.random((40, 40)) * (rng.random((40, 40)) < 0.05), 1)
    dense = dense + dense.T
    matrix = sp.csr_matrix(dense)
    result = connected_subgraphs(matrix, 0.2)
    graph = nx.Graph()
    graph.add_nodes_from(range(40))
    graph.add_edges_from(zip(*np.nonzero(dense >= 0.2), strict=True))
    for index, component in enumerate(nx.connected_components(graph)):
        assert set(np.nonzero(result.labels == index)[0]) == component
        assert all(result.sizes[list(component)] == len(component))
    assert result.matrix.data.min() >= 0.2 and result.matrix.diagonal().sum() == 0


def test_node_info_table():
    result = connected_subgraphs(path_graph(), 0.5)
    table = node_info_table(result, "m", 1.5, np.arange(10))
    assert list(table.columns) == [
        "node_id", "sae_name", "activity_threshold", "subgraph_id", "subgraph_size",
        "feature_activations",
    ]  # fmt: skip
    assert table["subgraph_size"].tolist() == [6] * 6 + [1] * 4
    assert table["subgraph_id"].tolist() == [0] * 6 + [1, 2, 3, 4]
