"""Tests of ``saelab.groups``, moved from tests/test_saes.py.

Notes shared with the other tests moved from tests/test_saes.py: ``tests/saes/__init__.py``."""

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
