"""Training: SAEs learn synthetic sparse data, groups share batches, schedules, outputs, exact
resume after a real SIGKILL, and divergence that stops without touching the last checkpoint."""

from __future__ import annotations

import pytest
import torch

from saelab.cache import ActivationReader
from tests.training.helpers import BATCH, GROUP_STEPS, SRC, TGT


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny SAEs: one thread is faster (and exact resume needs a fixed thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
