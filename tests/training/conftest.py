"""Fixtures of the training tests (moved verbatim from tests/test_train.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny SAEs: one thread is faster (and exact resume needs a fixed thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
