"""Newcomers, per-length edges and the backward trace (methods §6.3-6.4). Rule ``trajectory_graph``.

Nodes are ``(token, layer)``. For one prompt length (last token ``l = length - 1``) and one layer:

* ``initial`` = latents of step 0 (resid_pre); ``newcomers`` = latents of any later step that are
  not initial;
* a newcomer is kept iff it is in the last step (the full attention sum) at a rank <= T (rank 0 =
  largest activation); its origin token is ``first - 1``, ``first`` the first step >= 1 holding it:
  the source token whose contribution first brought it in.

Edges of one length, for each studied layer L after the first (the first layer's newcomers have
no layer below them, as in the original): ``(s, L_prev) -> (l, L)`` for each origin token ``s``
with kept newcomers, carrying their count, the best (smallest) final rank and the
``(final_rank, latent)`` pairs; plus two empty edges that the original draws as scaffolding,
``(0, L_prev) -> (0, L)`` and, when no newcomer comes from the last token itself, the vertical
``(l, L_prev) -> (l, L)``.

The backward trace starts from the full-length edges with a non-BOS source and, from every
reached node ``(t, L)`` with ``t > 0``, follows the edges into it in the graph of length ``t + 1``
(where ``t`` is the last token), until nothing new is reached.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import networkx as nx

from saelab.trajectories.evolution import steps_at

Node = tuple[int, int]


class Newcomer(NamedTuple):
    """A latent that attention brought into the top ranks of the last token."""

    latent: int
    origin_token: int
    """The source token whose contribution first brought it in (first step - 1)."""
    first_step: int
    final_rank: int
    """Its rank in the last step (0 = largest activation)."""


class Edge(NamedTuple):
    source: Node
    target: Node
    trajectories: tuple[tuple[int, int], ...]
    """(final_rank, latent) of each newcomer carried, sorted."""
    empty: bool = False
    """Scaffolding edge with no newcomer (the BOS column and the last-token vertical)."""

    @property
    def num_trajectories(self) -> int:
        return len(self.trajectories)

    @property
    def best_final_position(self) -> int | None:
        return min(rank for rank, _ in self.trajectories) if self.trajectories else None


def find_newcomers(steps: Sequence[Sequence[int]], T: int) -> list[Newcomer]:
    """The newcomer rule on one (length, layer): ``steps[0]`` = resid_pre's latents by rank,
    ``steps[t]`` after the contributions of tokens 0..t-1; keep final rank <= ``T``."""
    if len(steps) < 2:
        raise ValueError(f"need step 0 and at least one attention step, got {len(steps)} steps")
    initial = set(steps[0])
    final = {latent: rank for rank, latent in enumerate(steps[-1])}
    seen: set[int] = set()
    out = []
    for t, step in enumerate(steps[1:], start=1):
        for latent in step:
            if latent in initial or latent in seen:
                continue
            seen.add(latent)
            rank = final.get(latent)
            if rank is not None and rank <= T:
                out.append(Newcomer(latent, t - 1, t, rank))
    return sorted(out, key=lambda n: (n.origin_token, n.final_rank, n.latent))


def length_edges(
    evolution: Mapping[str, Any], length: int, T: int, layers: Sequence[int] | None = None
) -> list[Edge]:
    """The edges of one prompt length (see the module docstring), in layer then token order."""
    layers = list(layers if layers is not None else evolution["metadata"]["layers"])
    last = length - 1
    edges: list[Edge] = []
    for previous, layer in itertools.pairwise(layers):
        edges.append(Edge((0, previous), (0, layer), (), empty=True))
        by_token: dict[int, list[tuple[int, int]]] = {}
        for newcomer in find_newcomers(steps_at(evolution, length, layer), T):
            by_token.setdefault(newcomer.origin_token, []).append(
                (newcomer.final_rank, newcomer.latent)
            )
        for token in sorted(by_token):
            edges.append(Edge((token, previous), (last, layer), tuple(sorted(by_token[token]))))
        if last not in by_token:
            edges.append(Edge((last, previous), (last, layer), (), empty=True))
    return edges


def all_length_edges(evolution: Mapping[str, Any], T: int) -> dict[int, list[Edge]]:
    """Edges of every prompt length of the evolution data."""
    return {
        length: length_edges(evolution, length, T) for length in evolution["metadata"]["lengths"]
    }


def trace_backwards(edges_by_length: Mapping[int, Sequence[Edge]], full_length: int) -> nx.DiGraph:
    """The backward trace from the full-length graph into a DiGraph (edge attributes
    ``num_trajectories``, ``best_final_position``, ``trajectories``, ``empty``, ``length``)."""
    if full_length not in edges_by_length:
        raise KeyError(f"no edges for length {full_length}; have {sorted(edges_by_length)}")
    graph = nx.DiGraph()

    def add(edge: Edge, length: int) -> None:
        graph.add_edge(
            edge.source,
            edge.target,
            num_trajectories=edge.num_trajectories,
            best_final_position=edge.best_final_position,
            trajectories=list(edge.trajectories),
            empty=edge.empty,
            length=length,
        )

    frontier: list[Node] = []
    for edge in edges_by_length[full_length]:
        if edge.source[0] != 0:
            add(edge, full_length)
            frontier.append(edge.source)
    visited: set[Node] = set()
    while frontier:
        node = frontier.pop()
        if node in visited:
            continue
        visited.add(node)
        token, _layer = node
        if token <= 0 or token + 1 not in edges_by_length:
            continue
        for edge in edges_by_length[token + 1]:
            if edge.target == node and edge.source[0] != 0:
                add(edge, token + 1)
                frontier.append(edge.source)
    return graph


def node_newcomers(
    edges_by_length: Mapping[int, Sequence[Edge]], node: Node
) -> list[tuple[int, int, int]]:
    """(latent, origin token, final rank) of the newcomers arriving at ``node`` = (t, L) in the
    graph of length t + 1, BOS-origin and empty edges excluded (the hover of the HTML)."""
    token, _ = node
    out = []
    for edge in edges_by_length.get(token + 1, ()):
        if edge.target == node and edge.source[0] != 0 and not edge.empty:
            out.extend((latent, edge.source[0], rank) for rank, latent in edge.trajectories)
    return sorted(out, key=lambda item: (item[2], item[0]))


def graph_to_json(graph: nx.DiGraph, evolution: Mapping[str, Any], T: int) -> dict[str, Any]:
    """A JSON-ready view of a traced graph."""
    meta = evolution["metadata"]
    edges = [
        {"from": list(u), "to": list(v), **{k: d[k] for k in ("num_trajectories", "best_final_position", "empty", "length")},
         "trajectories": [{"final_position": r, "sae_index": i} for r, i in d["trajectories"]]}
        for u, v, d in sorted(graph.edges(data=True))
    ]  # fmt: skip
    return {
        "metadata": {
            "prompt_name": meta["prompt_name"],
            "tokens": meta["tokens"],
            "layers": meta["layers"],
            "filter_T": T,
            "n_nodes": graph.number_of_nodes(),
            "n_edges": graph.number_of_edges(),
            "total_trajectories": sum(e["num_trajectories"] for e in edges),
        },
        "edges": edges,
    }


class TracedGraph(NamedTuple):
    """The backward-traced graph of one prompt and T, with the per-length edges it came from."""

    graph: nx.DiGraph
    edges_by_length: dict[int, list[Edge]]
    T: int
    evolution: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return graph_to_json(self.graph, self.evolution, self.T)


def trajectory_graph(evolution: Mapping[str, Any], T: int) -> TracedGraph:
    """Edges of every length, traced backwards from the full prompt."""
    edges = all_length_edges(evolution, T)
    full = evolution["metadata"]["max_prompt_length"]
    return TracedGraph(trace_backwards(edges, full), edges, T, evolution)
