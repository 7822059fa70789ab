"""Tests of saelab.saes: every architecture's invariants on hand-built or brute-force-checked
examples, the sparse decoder and encoder gradients, decoder upkeep, the aux loss and dead
counter, bias conventions, transcoders, and the SAE-Lens round trip in both directions.

Hand-built SAEs use identity-like weights so that every code and loss can be written down; the
random cases compare against a dense brute-force implementation. sae_lens is imported only by
the tests that need it (it takes a few seconds)."""

from __future__ import annotations

import pytest

from saelab.saes import (
    build_sae,
    resolve_group_sizes,
)
from tests.saes.helpers import make

# ---------------------------------------------------------------------- Matryoshka


def test_group_sizes_individual_or_cumulative_resolve_the_same():
    assert resolve_group_sizes([4, 4, 8, 16], 32) == [4, 4, 8, 16]
    assert resolve_group_sizes([4, 8, 16, 32], 32) == [4, 4, 8, 16]
    individual = build_sae(make("matryoshka", group_sizes=[4, 4, 8, 16]))
    cumulative = build_sae(make("matryoshka", group_sizes=[4, 8, 16, 32]))
    assert individual.cfg.group_sizes == cumulative.cfg.group_sizes == [4, 4, 8, 16]
    assert individual.group_bounds == [(0, 4), (4, 8), (8, 16), (16, 32)]


@pytest.mark.parametrize("sizes", [[4, 4, 4], [8, 4, 32], [0, 32], [-4, 36], []])
def test_bad_group_sizes_are_clear_errors(sizes):
    with pytest.raises(ValueError, match=r"group.sizes"):
        build_sae(make("matryoshka", group_sizes=sizes))
