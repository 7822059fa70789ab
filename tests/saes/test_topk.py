"""Tests of ``saelab.saes.topk``, moved from tests/test_saes.py.

Notes shared with the other tests moved from tests/test_saes.py: ``tests/saes/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.saes import (
    build_sae,
)
from saelab.saes.topk import topk_per_row
from tests.saes.helpers import entries, make, randomize

# ---------------------------------------------------------------------- TopK


def test_topk_keeps_the_k_largest_positive_entries_of_each_row():
    torch.manual_seed(0)
    acts = torch.randn(50, 20)
    acts[3] = -acts[3].abs()  # no positive entry
    acts[4] = -acts[4].abs()
    acts[4, 7] = 0.5  # one positive entry, fewer than k
    codes = topk_per_row(acts, 5)
    got = entries(codes)
    for row in range(50):
        positives = [(float(v), j) for j, v in enumerate(acts[row]) if v > 0]
        want = {(row, j): v for v, j in sorted(positives, reverse=True)[:5]}
        assert {key: val for key, val in got.items() if key[0] == row} == want
    l0 = codes.l0()
    assert l0[3] == 0 and l0[4] == 1
    assert l0.tolist() == [min(5, int((row > 0).sum())) for row in acts]
    assert bool((codes.rows[1:] >= codes.rows[:-1]).all()), "rows must be sorted"


@pytest.mark.parametrize("training", [True, False])
def test_topk_sae_has_exactly_k_active_latents_per_token(training):
    sae = build_sae(make("topk", k=4))
    randomize(sae)
    sae.train(training)
    x = torch.randn(64, 8) * 3
    out = sae(x)
    assert (out.codes.l0() == 4).all()
    acts = sae.pre_activations(x).detach()
    assert entries(out.codes) == pytest.approx(entries(topk_per_row(acts, 4)))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_annealed_k_selects_more_in_training_only(arch):
    sae = build_sae(make(arch, k=3)).train()
    randomize(sae)
    x = torch.randn(16, 8)
    assert sae.encode(x).codes.l0().float().mean() == pytest.approx(3)
    sae.k_train = 7
    assert sae.encode(x).codes.l0().float().mean() == pytest.approx(7)
    if arch == "topk":
        sae.eval()  # inference always uses cfg.k (BatchTopK: its threshold)
        assert sae.encode(x).codes.l0().tolist() == [3] * 16
