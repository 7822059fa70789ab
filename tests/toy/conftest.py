"""Fixtures shared by the tests of this folder (moved verbatim from tests/test_toy.py)."""

from __future__ import annotations

import pytest

from saelab.toy import (
    HierarchyConfig,
    compare_architectures,
)


# ------------------------------------------------------------------------------ the result
@pytest.fixture(scope="module")
def comparison():
    """The default toy and training settings, three seeds of each architecture."""
    return compare_architectures(
        HierarchyConfig(), archs=["topk", "batchtopk", "matryoshka"], seeds=[0, 1, 2]
    )
