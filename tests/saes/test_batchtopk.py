"""Tests of ``saelab.saes.batchtopk``, moved from tests/test_saes.py.

Notes shared with the other tests moved from tests/test_saes.py: ``tests/saes/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.saes import (
    SparseCodes,
    build_sae,
)
from saelab.saes import batchtopk as batchtopk_module
from saelab.saes.batchtopk import batch_topk
from tests.saes.helpers import brute_batch_topk, entries, make, randomize

# ---------------------------------------------------------------------- BatchTopK selection


@pytest.mark.parametrize(
    ("n_rows", "width", "k", "shift"),
    [(64, 256, 4, 0.0), (300, 512, 8, -1.0), (40, 16, 6, 0.0), (17, 33, 2, 0.5)],
)
def test_batch_topk_equals_brute_force(n_rows, width, k, shift):
    torch.manual_seed(n_rows)
    acts = torch.relu(torch.randn(n_rows, width) + shift)  # continuous: no ties among positives
    # Heterogeneous latents and tokens, as in a real SAE.
    acts = acts * torch.rand(width).pow(3) * 3 * torch.rand(n_rows, 1)
    codes = batch_topk(acts, k)
    want = brute_batch_topk(acts, k)
    assert entries(codes) == pytest.approx(want)
    assert codes.values.numel() == min(k * n_rows, int((acts > 0).sum()))
    flat_index = codes.rows * width + codes.latents
    assert bool((flat_index[1:] > flat_index[:-1]).all()), "row-major order"


def test_batch_topk_fast_path_and_fallback_both_exact(monkeypatch):
    floors = []
    real_floor = batchtopk_module._candidate_floor

    def spy(acts, n_select):
        floors.append(real_floor(acts, n_select))
        return floors[-1]

    monkeypatch.setattr(batchtopk_module, "_candidate_floor", spy)
    torch.manual_seed(1)
    n_rows, width, k = 256, 1024, 4
    n_select = k * n_rows

    # Fast path: the sampled floor leaves enough (but not all) candidates.
    acts = torch.relu(torch.randn(n_rows, width))
    codes = batch_topk(acts, k)
    n_above = int((acts > floors[-1]).sum())
    assert floors[-1] > 0 and n_select <= n_above < int((acts > 0).sum()) // 4
    assert entries(codes) == pytest.approx(brute_batch_topk(acts, k))

    # Fallback: large values exactly where the strided sample looks, so its floor is too high.
    acts = torch.rand(n_rows, width)
    stride = batchtopk_module._sample_stride(acts.numel(), width, batchtopk_module._SAMPLE_SIZE)
    acts.view(-1)[::stride] = 10 + torch.rand(acts.view(-1)[::stride].shape)
    codes = batch_topk(acts, k)
    assert int((acts > floors[-1]).sum()) < n_select, "the fallback was not exercised"
    assert entries(codes) == pytest.approx(brute_batch_topk(acts, k))


def test_batch_topk_keeps_positives_hidden_in_a_crowded_row():
    """Fewer than k·B positive entries overall, all of them in one row (more than any per-row
    candidate budget): every positive entry is selected, nothing else."""
    acts = torch.zeros(64, 128)
    acts[5] = torch.rand(128) + 0.1
    codes = batch_topk(acts, 1)  # k·B = 64 < 128 positives in row 5
    assert entries(codes) == pytest.approx(brute_batch_topk(acts, 1))
    acts[5, 64:] = 0
    codes = batch_topk(acts, 2)  # 128 slots, 64 positives: all of them
    assert sorted(entries(codes)) == [(5, j) for j in range(64)]


def test_batch_topk_with_ties_selects_exactly_k_times_rows():
    acts = torch.tensor([[3.0, 1.0, 1.0, 0.0], [1.0, 1.0, 2.0, 1.0], [0.0, 1.0, 0.0, 5.0]])
    codes = batch_topk(acts, 2)  # 6 of: 5, 3, 2 and seven 1s
    assert codes.values.numel() == 6
    got = entries(codes)
    assert {(0, 0), (1, 2), (2, 3)} <= set(got)
    assert sorted(got.values()) == [1.0, 1.0, 1.0, 2.0, 3.0, 5.0]


def test_batchtopk_sae_training_selects_k_times_batch_with_varying_l0():
    sae = build_sae(make("batchtopk", d_in=16, width=64, k=4)).train()
    randomize(sae)
    x = torch.randn(128, 16) * torch.rand(128, 1) * 4  # token norms vary, so L0 does
    acts = sae.pre_activations(x).detach()
    out = sae(x)
    assert out.codes.values.numel() == 4 * 128
    l0 = out.codes.l0()
    assert l0.float().mean() == 4 and l0.min() < 4 < l0.max()
    assert entries(out.codes) == pytest.approx(brute_batch_topk(acts, 4))


def test_batchtopk_eval_threshold_is_strict_and_per_token():
    sae = build_sae(make("batchtopk", d_in=4, width=4, k=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.threshold.fill_(0.5)
    sae.eval()
    x = torch.tensor([[0.5, 0.6, 0.4, 2.0], [0.0, 0.0, 0.0, 0.0]])
    codes = sae(x).codes
    assert entries(codes) == pytest.approx({(0, 1): 0.6, (0, 3): 2.0})  # 0.5 == θ dropped
    # Independent of the rest of the batch (unlike training mode).
    assert entries(sae(x[:1]).codes) == entries(codes)
    sae.train()
    assert sae(x).codes.values.numel() == 2  # k·B in training mode


def test_threshold_ema_from_zero_matches_hand_computation():
    ema = 0.25
    sae = build_sae(make("batchtopk", d_in=6, width=6, k=2, threshold_ema=ema)).train()
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(6))
    assert float(sae.threshold) == 0.0
    torch.manual_seed(3)
    theta = 0.0
    for _ in range(3):
        x = torch.rand(5, 6) * 3
        smallest = min(brute_batch_topk(x, 2).values())
        sae(x)
        theta = (1 - ema) * theta + ema * smallest
        assert float(sae.threshold) == pytest.approx(theta, rel=1e-6)
    assert int(sae.train_steps) == 3


def test_threshold_unset_until_start_step_then_first_minimum():
    ema = 0.1
    sae = build_sae(
        make("batchtopk", d_in=6, width=6, k=2, threshold_ema=ema, threshold_start_step=2)
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(6))
    torch.manual_seed(4)
    batches = [torch.rand(5, 6) * 3 for _ in range(4)]
    minima = [min(brute_batch_topk(x, 2).values()) for x in batches]
    sae.eval()
    # Unset (-1) means "no threshold yet": every positive activation is active in eval.
    assert entries(sae(batches[0]).codes) == pytest.approx(
        entries(SparseCodes.from_dense(batches[0]))
    )
    sae.train()
    sae(batches[0])
    sae(batches[1])
    assert float(sae.threshold) == -1.0  # steps 1..threshold_start_step leave it unset
    sae(batches[2])
    assert float(sae.threshold) == pytest.approx(minima[2])  # first minimum, no EMA
    sae(batches[3])
    assert float(sae.threshold) == pytest.approx((1 - ema) * minima[2] + ema * minima[3])
