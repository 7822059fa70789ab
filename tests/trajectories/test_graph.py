"""Tests of ``saelab.trajectories.graph``, moved from tests/test_trajectories.py.

Notes shared with the other tests moved from tests/test_trajectories.py:
``tests/trajectories/__init__.py``."""

from __future__ import annotations

from saelab.trajectories import (
    Newcomer,
    find_newcomers,
    length_edges,
    node_newcomers,
    trace_backwards,
)
from saelab.trajectories.graph import all_length_edges
from tests.trajectories.helpers import hand_evolution

# ------------------------------------------------------------------ newcomers, edges, trace


def test_find_newcomers_hand_example():
    steps = [[1, 2, 3], [1, 4, 2], [4, 1, 5, 2], [4, 5, 1, 6]]
    # 4 enters at step 1 (token 0), ends at rank 0; 5 at step 2 (token 1), rank 1;
    # 6 at step 3 (token 2), rank 3 > T; 3 is initial.
    assert find_newcomers(steps, T=2) == [Newcomer(4, 0, 1, 0), Newcomer(5, 1, 2, 1)]
    assert find_newcomers(steps, T=3)[-1] == Newcomer(6, 2, 3, 3)
    assert find_newcomers(steps, T=0) == [Newcomer(4, 0, 1, 0)]
    # a newcomer that drops out again is not kept, whatever T
    assert find_newcomers([[1], [1, 9], [1]], T=10) == []


def test_edges_and_trace_hand_example():
    evolution = hand_evolution()
    T = 1
    # Length 4 (last token 3): layer 1 gets 7 from token 1 (rank 0); layer 2 gets 11 from
    # token 1 (rank 0) and 9 from token 2 (rank 1); 8 from token 3 ends at rank 3 > T.
    edges4 = length_edges(evolution, 4, T)
    assert [(e.source, e.target, e.trajectories, e.empty) for e in edges4] == [
        ((0, 0), (0, 1), (), True),
        ((1, 0), (3, 1), ((0, 7),), False),
        ((3, 0), (3, 1), (), True),
        ((0, 1), (0, 2), (), True),
        ((1, 1), (3, 2), ((0, 11),), False),
        ((2, 1), (3, 2), ((1, 9),), False),
        ((3, 1), (3, 2), (), True),
    ]
    # Length 2: 6 comes from the last token itself, so that edge replaces the empty vertical.
    assert [(e.source, e.target, e.trajectories) for e in length_edges(evolution, 2, T)] == [
        ((0, 0), (0, 1), ()),
        ((1, 0), (1, 1), ((1, 6),)),
        ((0, 1), (0, 2), ()),
        ((1, 1), (1, 2), ()),
    ]
    graph = trace_backwards(all_length_edges(evolution, T), full_length=4)
    expected = {
        # from the full prompt (BOS-source edges left out)
        ((1, 0), (3, 1)): (1, 0, False, 4),
        ((3, 0), (3, 1)): (0, None, True, 4),
        ((1, 1), (3, 2)): (1, 0, False, 4),
        ((2, 1), (3, 2)): (1, 1, False, 4),
        ((3, 1), (3, 2)): (0, None, True, 4),
        # (1, 1) traced into length 2, where token 1 is last
        ((1, 0), (1, 1)): (1, 1, False, 2),
        # (2, 1) traced into length 3: its BOS edge (0, 0) -> (2, 1) is left out
        ((2, 0), (2, 1)): (0, None, True, 3),
    }
    got = {
        (u, v): (d["num_trajectories"], d["best_final_position"], d["empty"], d["length"])
        for u, v, d in graph.edges(data=True)
    }
    assert got == expected
    assert node_newcomers(all_length_edges(evolution, T), (3, 2)) == [(11, 1, 0), (9, 2, 1)]
    # T = 0 drops 9 and 6: (2, 1) -> (3, 2) goes, and (1, 1) now comes only from an empty vertical
    strict = trace_backwards(all_length_edges(evolution, 0), full_length=4)
    assert ((2, 1), (3, 2)) not in strict.edges
    assert strict.edges[(1, 0), (1, 1)]["empty"]
