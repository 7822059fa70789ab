"""Tests of ``saelab.training.group``, moved from tests/test_train.py.

Notes shared with the other tests moved from tests/test_train.py: ``tests/test_train.py``."""

from __future__ import annotations

import pytest

from saelab.cache import ActivationReader
from tests.training.helpers import BATCH, GROUP_STEPS, SRC, TGT


def test_group_saes_see_the_same_batches_in_reader_order(trained):
    reference = trained.seen["topk"]
    assert len(reference) == GROUP_STEPS
    for name, sums in trained.seen.items():
        assert sums == reference, f"{name} saw other batches"
    # The batches are the reader's, epoch after epoch, with the training seed.
    reader = ActivationReader(trained.cache, [SRC, TGT], BATCH, seed=trained.cfg.seed)
    expected = []
    while len(expected) < GROUP_STEPS:
        expected += [float(src.double().sum()) for src, _ in reader.batches()]
    assert reference == pytest.approx(expected[:GROUP_STEPS], rel=1e-12)
