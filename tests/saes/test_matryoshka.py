"""Tests of ``saelab.saes.matryoshka``, moved from tests/test_saes.py.

Notes shared with the other tests moved from tests/test_saes.py: ``tests/saes/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.saes import (
    SAEConfig,
    build_sae,
)


def test_matryoshka_needs_group_sizes():
    with pytest.raises(ValueError, match="group_sizes"):
        build_sae(SAEConfig(arch="matryoshka", d_in=8, width=32, k=3))


def hand_matryoshka(loss: str = "bussmann"):
    """d = width = 4, groups [1, 1, 2], W_enc = I, W_dec = 2·I, b_dec = (0.5, 0, 0, -0.5):
    in eval mode with θ = 0 the codes are relu(x - b_dec) and latent i writes 2·f_i to dim i."""
    sae = build_sae(
        SAEConfig(arch="matryoshka", d_in=4, width=4, k=1, group_sizes=[1, 1, 2], loss=loss)
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(2 * torch.eye(4))
        sae.b_dec.copy_(torch.tensor([0.5, 0.0, 0.0, -0.5]))
        sae.threshold.fill_(0.0)
    return sae.eval()


X_HAND = torch.tensor([[1.5, 2.0, 1.0, 0.5], [0.5, 1.0, 3.0, 0.5]])


def hand_prefixes() -> list[list[list[float]]]:
    # codes: row 0 -> (1, 2, 1, 1); row 1 -> (0, 1, 3, 1)
    b = [0.5, 0.0, 0.0, -0.5]
    return [
        [[2.5, 0.0, 0.0, -0.5], [0.5, 0.0, 0.0, -0.5]],  # group 1: latent 0
        [[2.5, 4.0, 0.0, -0.5], [0.5, 2.0, 0.0, -0.5]],  # + latent 1
        [[2.5, 4.0, 2.0, 1.5], [0.5, 2.0, 6.0, 1.5]],  # + latents 2, 3
    ], b


def test_matryoshka_prefix_reconstructions_are_cumulative():
    sae = hand_matryoshka()
    prefixes, b_dec = hand_prefixes()
    out = sae(X_HAND)
    assert len(out.prefix_outputs) == 3
    for got, want in zip(out.prefix_outputs, prefixes, strict=True):
        torch.testing.assert_close(got, torch.tensor(want))
    torch.testing.assert_close(out.output, torch.tensor(prefixes[-1]))
    torch.testing.assert_close(sae.reconstruct(X_HAND), torch.tensor(prefixes[-1]))
    contributions = sae.prefix_contributions(sae.encode(X_HAND).codes)
    running = torch.tensor(b_dec).expand(2, 4)
    for contribution, want in zip(contributions, prefixes, strict=True):
        running = running + contribution
        torch.testing.assert_close(running, torch.tensor(want))


def _sq(a, b):
    return sum((u - v) ** 2 for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("loss", ["bussmann", "official", "saelens"])
def test_matryoshka_losses_match_hand_computation(loss):
    sae = hand_matryoshka(loss)
    prefixes, b_dec = hand_prefixes()
    x = X_HAND.tolist()
    n_groups, batch, d = 3, 2, 4
    # per prefix: mean over the batch of the squared error summed over dimensions
    per_prefix = [sum(_sq(p[r], x[r]) for r in range(batch)) / batch for p in prefixes]
    if loss == "bussmann":
        bias_only = sum(_sq(b_dec, x[r]) for r in range(batch)) / (batch * d)
        want = (bias_only + sum(e / d for e in per_prefix)) / (n_groups + 1)
    elif loss == "official":
        want = sum((1 / n_groups) * e for e in per_prefix) / n_groups
    else:
        want = sum(per_prefix)
    out = sae(X_HAND)
    assert out.recon_loss.item() == pytest.approx(want, rel=1e-6)
    assert out.loss.item() == pytest.approx(want, rel=1e-6)  # eval: no aux, l1 = 0


def test_prefix_errors_gradients_equal_autograd_of_the_naive_formula():
    from saelab.saes.matryoshka import _PrefixErrors

    g = torch.Generator().manual_seed(0)
    contributions = torch.randn(5, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b_dec = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    weights = torch.randn(4, dtype=torch.float64, generator=g)
    probe = torch.randn(5, 3, 4, dtype=torch.float64, generator=g)

    def naive(c, t, b):
        prefixes = c.cumsum(1) + b
        sse = torch.cat([(t - b).pow(2).sum()[None], (prefixes - t[:, None]).pow(2).sum((0, 2))])
        return sse, prefixes

    for use_sse, use_prefixes in ((True, False), (True, True), (False, True)):
        grads = []
        for fn in (_PrefixErrors.apply, naive):
            sse, prefixes = fn(contributions, target, b_dec)
            loss = 0
            if use_sse:
                loss = loss + (sse * weights).sum()
            if use_prefixes:
                loss = loss + (prefixes * probe).sum()
            grads.append(
                torch.autograd.grad(loss, (contributions, target, b_dec), materialize_grads=True)
            )
            if fn is naive:
                torch.testing.assert_close(
                    sse, _PrefixErrors.apply(contributions, target, b_dec)[0]
                )
        for got, want in zip(*grads, strict=True):
            torch.testing.assert_close(got, want)
