"""Tests of ``saelab.training.loop``, moved from tests/test_train.py and
tests/test_training_loop.py.

Notes shared with the other tests moved from tests/test_train.py: ``tests/test_train.py``.

Notes of tests/test_training_loop.py:

The one training loop (saelab.training.loop): one update against a hand-written update in
dictionary_learning's order, the batch-FVU loss by hand, k-annealing by hand, the options'
errors, and which updates run_steps makes and when it initialises from the first batch."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from saelab.cache import ActivationReader
from saelab.saes import SAEConfig, build_sae
from saelab.saes.io import load_sae
from saelab.train import (
    TrainConfig,
    TrainError,
    build_saes,
    train_saes,
)
from saelab.training.loop import (
    LoopOptions,
    SAEStepper,
    annealed_k,
    batch_fvu,
    default_lr,
    geometric_median,
    lr_factor,
    run_steps,
)
from tests.training.helpers import BATCH, SRC, widths_of

# ------------------------------------------------------------------ small pieces


def test_lr_schedule_values():
    # dictionary_learning's schedule: warmup index/warmup, then 1, then linear decay to 0
    assert lr_factor(0, 100, 10, 0.8) == 0.0
    assert lr_factor(5, 100, 10, 0.8) == 0.5
    assert lr_factor(10, 100, 10, 0.8) == 1.0
    assert lr_factor(79, 100, 10, 0.8) == 1.0
    assert lr_factor(80, 100, 10, 0.8) == 1.0
    assert lr_factor(90, 100, 10, 0.8) == 0.5
    assert lr_factor(99, 100, 10, 0.8) == pytest.approx(0.05)
    assert lr_factor(0, 100, 0, None) == 1.0 and lr_factor(99, 100, 0, None) == 1.0
    assert default_lr(2**14) == pytest.approx(2e-4) and default_lr(2**16) == pytest.approx(1e-4)
    with pytest.raises(TrainError, match="warmup"):
        TrainConfig(n_tokens=100 * BATCH, batch_size=BATCH, warmup_steps=50, decay_start=0.3)
    with pytest.raises(TrainError, match="unknown train config"):
        TrainConfig.from_dict({"n_tokens": 10, "learning_rate": 1})


def test_the_schedule_is_what_training_uses(cache, tmp_path):
    saes = build_saes({"s": {"arch": "topk", "width": 32, "k": 2, "hook_name": SRC}},
                      widths_of(cache))  # fmt: skip
    cfg = TrainConfig(
        n_tokens=20 * BATCH, batch_size=BATCH, lr=None, warmup_steps=4, decay_start=0.5,
        log_every=1, checkpoint_every=0,
    )  # fmt: skip
    train_saes(cache, saes, cfg, {"s": tmp_path / "s"}, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "s" / "train_log.jsonl").read_text().splitlines()]
    base = default_lr(32)
    lrs = {r["step"]: r["lr"] for r in lines}
    # step n is the n-th update, made with lr_factor(n - 1)
    assert lrs[1] == 0.0 and lrs[3] == pytest.approx(0.5 * base)
    assert lrs[5] == pytest.approx(base) and lrs[10] == pytest.approx(base)
    assert lrs[16] == pytest.approx(0.5 * base) and lrs[20] == pytest.approx(0.1 * base)
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["train"]["lr"] == pytest.approx(base) and config["train"]["lr_given"] is None


def test_geometric_median_of_a_hand_built_example():
    # A convex quadrilateral: the median is where the diagonals cross, not the mean.
    quad = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    median = geometric_median(quad)
    torch.testing.assert_close(median, torch.tensor([10 / 11, 10 / 11], dtype=torch.float64),
                               atol=1e-4, rtol=0)  # fmt: skip
    assert (median - quad.double().mean(0)).norm() > 1.5
    # Robust to an outlier: one far point barely moves it, while the mean moves a lot.
    cluster = torch.randn(99, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    with_outlier = torch.cat([cluster, torch.tensor([[1000.0, 1000.0, 1000.0]])])
    assert geometric_median(with_outlier).norm() < 0.1
    assert with_outlier.mean(0).norm() > 15
    # It minimises the summed distance: small moves do not lower it.
    pts = torch.randn(50, 4, generator=torch.Generator().manual_seed(1)).double()
    m = geometric_median(pts)
    cost = (pts - m).norm(dim=1).sum()
    for direction in torch.eye(4, dtype=torch.float64):
        for sign in (1, -1):
            assert (pts - (m + sign * 1e-3 * direction)).norm(dim=1).sum() >= cost - 1e-9


def test_b_dec_starts_at_the_geometric_median_of_the_first_batch(cache, tmp_path):
    spec = {"arch": "batchtopk", "width": 32, "k": 2, "hook_name": SRC,
            "b_dec_init": "geometric_median"}  # fmt: skip
    saes = build_saes({"s": spec}, widths_of(cache))
    # one update, at lr 0 (the first step of a warmup): b_dec is exactly its initial value
    cfg = TrainConfig(n_tokens=BATCH, batch_size=BATCH, warmup_steps=1, seed=5)
    train_saes(cache, saes, cfg, {"s": tmp_path / "s"}, progress=False)
    first = next(ActivationReader(cache, [SRC], BATCH, seed=5).batches())[0]
    expected = geometric_median(first).float()
    torch.testing.assert_close(load_sae(tmp_path / "s").b_dec, expected, atol=1e-6, rtol=0)
    assert (expected - first.mean(0)).norm() > 1e-3


D, WIDTH, K, N = 12, 32, 3, 64


def small_sae(**kwargs):
    return build_sae(SAEConfig(arch="topk", d_in=D, width=WIDTH, k=K, seed=1, **kwargs)).train()


def batch(seed: int) -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(seed)) + 0.5


def test_one_update_follows_dictionary_learnings_order():
    """lr from the warmup, loss, backward, decoder gradient without its radial part, clipping,
    Adam, decoder rows renormalised: written out by hand on a copy of the same SAE."""
    sae = small_sae()
    ref = copy.deepcopy(sae)
    opts = LoopOptions(steps=10, lr=1e-2, warmup_steps=4, clip_grad_norm=1e-3, fused_adam=False)
    stepper = SAEStepper(sae, opts)
    params = [p for p in ref.parameters() if p.requires_grad]
    adam = torch.optim.Adam(params, lr=1e-2)
    for step in (1, 2, 3):
        x = batch(step)
        stepper.step({"x": x}, step)

        for group in adam.param_groups:
            group["lr"] = 1e-2 * (step - 1) / 4  # linear warmup from 0
        ref(x).loss.backward()
        with torch.no_grad():
            rows = ref.W_dec / ref.W_dec.norm(dim=1, keepdim=True)
            ref.W_dec.grad -= (ref.W_dec.grad * rows).sum(dim=1, keepdim=True) * rows
            norm = torch.cat([p.grad.reshape(-1) for p in params]).norm()
            assert norm > 1e-3  # the clipping below is exercised
            for p in params:
                p.grad *= 1e-3 / (norm + 1e-6)
        adam.step()
        adam.zero_grad(set_to_none=True)
        with torch.no_grad():
            ref.W_dec /= ref.W_dec.norm(dim=1, keepdim=True)
        assert stepper.factor == (step - 1) / 4
    for (name, got), want in zip(sae.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(WIDTH))
    assert not torch.equal(sae.W_enc, copy.deepcopy(small_sae()).W_enc)  # it did learn


def test_batch_fvu_is_sse_over_the_batch_centred_sum_of_squares():
    rng = np.random.default_rng(0)
    target, output = rng.normal(size=(50, 7)), rng.normal(size=(50, 7))
    sse = ((target - output) ** 2).sum()
    sst = ((target - target.mean(axis=0)) ** 2).sum()  # per-dimension means
    got = batch_fvu(torch.from_numpy(target), torch.from_numpy(output))
    assert float(got) == pytest.approx(sse / sst, rel=1e-12)
    assert float(batch_fvu(torch.from_numpy(target), torch.from_numpy(target))) == 0.0


def test_batch_fvu_loss_is_what_the_stepper_minimises():
    sae = small_sae(aux_penalty=0.0)
    stepper = SAEStepper(sae, LoopOptions(steps=1, lr=0.0, loss="batch_fvu"))
    x = batch(7)
    with torch.no_grad():
        expected = batch_fvu(x, copy.deepcopy(sae)(x).output)
    stepper.step({"x": x}, 1)
    torch.testing.assert_close(stepper.loss, expected)


def test_annealed_k_and_lr_factor_by_hand():
    # 12 + (2 - 12) * i / 5 = 12 - 2 i over five updates, then k itself (None)
    assert [annealed_k(i, 2, 12, 5) for i in range(7)] == [12, 10, 8, 6, 4, None, None]
    assert annealed_k(0, 2, 12, 0) is None  # no annealing steps: k from the start
    assert [annealed_k(i, 3, 4.5, 2) for i in range(3)] == [4, 4, None]  # round(4.5) == 4
    assert [lr_factor(i, 10, 0, 0.5) for i in (0, 4, 5, 9)] == [1.0, 1.0, 1.0, 0.2]


def test_stepper_anneals_k_and_gives_it_back():
    sae = small_sae()
    opts = LoopOptions(steps=4, lr=1e-3, k_anneal_steps=2, k_anneal_start=lambda s: 4 * s.cfg.k)
    stepper = SAEStepper(sae, opts)
    seen = []
    forward = sae.forward

    def spy(*args, **kwargs):
        seen.append(sae.active_k)
        return forward(*args, **kwargs)

    sae.forward = spy
    run_steps([stepper], iter([{"x": batch(i)} for i in range(4)]), 4)
    assert seen == [12, 8, K, K]  # 12 + (3 - 12) * 1 / 2 = 7.5 -> 8
    assert sae.k_train is None and sae.active_k == K


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "mse"}, "loss 'mse' is not allowed"),
        ({"b_dec_init": "mean"}, "b_dec_init 'mean' is not allowed"),
        ({"k_anneal_steps": 3}, "needs k_anneal_start"),
    ],
)
def test_loop_options_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoopOptions(steps=1, **kwargs)


class RecordingStepper(SAEStepper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inits, self.steps = [], []

    def init_from_first_batch(self, acts):
        self.inits.append(acts["x"])
        super().init_from_first_batch(acts)

    def step(self, acts, step):
        self.steps.append(step)
        super().step(acts, step)


def test_run_steps_initialises_from_the_first_batch_of_a_fresh_run_only():
    batches = [{"x": batch(i)} for i in range(5)]
    fresh = RecordingStepper(small_sae(b_dec_init="geometric_median"), LoopOptions(steps=5))
    after = []
    run_steps([fresh], iter(batches), 5, after_step=after.append)
    assert fresh.steps == after == [1, 2, 3, 4, 5] and len(fresh.inits) == 1
    assert fresh.inits[0] is batches[0]["x"]

    probe = small_sae(b_dec_init="geometric_median")
    SAEStepper(probe, LoopOptions(steps=1)).init_from_first_batch(batches[0])
    torch.testing.assert_close(probe.b_dec, geometric_median(batches[0]["x"]).float())

    resumed = RecordingStepper(small_sae(b_dec_init="geometric_median"), LoopOptions(steps=5))
    run_steps([resumed], iter(batches[2:]), 5, start=2)
    assert resumed.steps == [3, 4, 5] and resumed.inits == []

    untouched = RecordingStepper(small_sae(), LoopOptions(steps=2, first_batch_init=False))
    run_steps([untouched], iter(batches), 2)
    assert untouched.inits == []


def test_the_options_b_dec_init_overrides_the_saes():
    x = batch(3)
    sae = small_sae()  # b_dec_init "zeros"
    SAEStepper(sae, LoopOptions(steps=1)).init_from_first_batch({"x": x})
    assert not sae.b_dec.any()
    SAEStepper(sae, LoopOptions(steps=1, b_dec_init="geometric_median")).init_from_first_batch(
        {"x": x}
    )
    torch.testing.assert_close(sae.b_dec, geometric_median(x).float())
