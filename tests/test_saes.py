"""Tests of saelab.saes: every architecture's invariants on hand-built or brute-force-checked
examples, the sparse decoder and encoder gradients, decoder upkeep, the aux loss and dead
counter, bias conventions, transcoders, and the SAE-Lens round trip in both directions.

Hand-built SAEs use identity-like weights so that every code and loss can be written down; the
random cases compare against a dense brute-force implementation. sae_lens is imported only by
the tests that need it (it takes a few seconds).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from saelab.saes import (
    ARCHITECTURES,
    SAEConfig,
    SparseCodes,
    build_sae,
    resolve_group_sizes,
)
from saelab.saes import batchtopk as batchtopk_module
from saelab.saes.batchtopk import batch_topk, threshold_codes
from saelab.saes.io import SAELoadError, load_sae, save_sae
from saelab.saes.sparse import gather_decode, sparse_decode
from saelab.saes.topk import topk_per_row

ALL_ARCHS = ["topk", "batchtopk", "matryoshka", "relu", "jumprelu"]
GROUPS = [4, 4, 8, 16]  # individual sizes of a width-32 Matryoshka SAE


def make(arch: str, d_in: int = 8, width: int = 32, k: int = 3, **kw) -> SAEConfig:
    if arch == "matryoshka" and "group_sizes" not in kw:
        kw["group_sizes"] = list(GROUPS) if width == 32 else [width // 2, width - width // 2]
    return SAEConfig(arch=arch, d_in=d_in, width=width, k=k, **kw)


def entries(codes: SparseCodes) -> dict[tuple[int, int], float]:
    return {
        (int(r), int(latent)): float(v)
        for r, latent, v in zip(codes.rows, codes.latents, codes.values.detach(), strict=True)
    }


def brute_batch_topk(acts: torch.Tensor, k: int) -> dict[tuple[int, int], float]:
    """The k·B largest entries of the flattened matrix, positive ones only (dense reference)."""
    n_rows, width = acts.shape
    flat = acts.reshape(-1).double()
    order = torch.argsort(flat, descending=True)[: k * n_rows]
    return {
        (int(i) // width, int(i) % width): float(acts.reshape(-1)[i]) for i in order if flat[i] > 0
    }


def randomize(sae, seed: int = 0, scale: float = 0.3) -> None:
    """Non-zero biases (and thresholds), so every bias convention shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=g) * scale)
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=g) * scale)
        if sae.cfg.arch == "jumprelu":
            sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=g) * 0.3)


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


# ---------------------------------------------------------------------- ReLU and JumpReLU


def test_relu_sae_codes_and_l1_term():
    cfg = SAEConfig(arch="relu", d_in=3, width=3, k=1, l1_coeff=0.1, loss="official")
    sae = build_sae(cfg).train()
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.0]))
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.5, 3.0]])
    out = sae(x)
    # codes = relu(x + b_enc): (1, 1, 0) and (0.5, 0, 3); every positive one is active
    assert entries(out.codes) == pytest.approx({(0, 0): 1.0, (0, 1): 1.0, (1, 0): 0.5, (1, 2): 3.0})
    assert out.sparsity_loss.item() == pytest.approx(0.1 * (1 + 1 + 0.5 + 3) / 2)
    recon = ((1 + 1) + (0.5**2)) / 2  # errors (0, -1, 1) and (0, -0.5, 0) summed per token
    assert out.recon_loss.item() == pytest.approx(recon)
    assert out.loss.item() == pytest.approx(recon + 0.1 * 5.5 / 2)
    assert out.aux_loss.item() == 0


def test_jumprelu_per_latent_thresholds_are_strict():
    sae = build_sae(SAEConfig(arch="jumprelu", d_in=3, width=3, k=1)).eval()
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.b_dec.zero_()
        sae.threshold.copy_(torch.tensor([0.5, 1.0, 0.0]))
    x = torch.tensor([[0.5, 1.5, 0.1], [0.6, 1.0, -0.2]])
    assert entries(sae(x).codes) == pytest.approx({(0, 1): 1.5, (0, 2): 0.1, (1, 0): 0.6})
    per_latent = threshold_codes(x, torch.tensor([0.0, 2.0, 0.0]))
    assert entries(per_latent) == pytest.approx({(0, 0): 0.5, (0, 2): 0.1, (1, 0): 0.6})


# ---------------------------------------------------------------------- shared machinery


def random_codes(n_rows=20, width=40, d=6, seed=0) -> SparseCodes:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n_rows, width, generator=g) * (torch.rand(n_rows, width, generator=g) < 0.1)
    dense[3] = 0  # an empty row
    rows, latents = dense.nonzero(as_tuple=True)
    # shuffle latents within rows (rows stay sorted): the decoder must not rely on their order
    order = torch.argsort(rows * width + torch.randperm(width, generator=g)[latents])
    rows, latents = rows[order], latents[order]
    return SparseCodes(rows, latents, dense[rows, latents], n_rows, width)


@pytest.mark.parametrize("dense_enough", [False, True])
def test_sparse_decoder_equals_dense_matmul_with_gradients(dense_enough):
    codes = random_codes()
    if dense_enough:  # takes gather_decode's dense branch
        codes = SparseCodes.from_dense(torch.rand(20, 40) + 0.01)
    W = torch.randn(40, 6, dtype=torch.float64).float().requires_grad_()
    values = codes.values.clone().requires_grad_()
    out = sparse_decode(codes._replace(values=values), W)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()

    W_ref = W.detach().clone().requires_grad_()
    values_ref = codes.values.clone().requires_grad_()
    dense = torch.zeros(20, 40).index_put((codes.rows, codes.latents), values_ref)
    ref = dense @ W_ref
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(W.grad, W_ref.grad)
    torch.testing.assert_close(values.grad, values_ref.grad)
    assert (out[3] == 0).all() or dense_enough


def test_gather_decode_with_bags():
    """Bags are (token, group) pairs for Matryoshka: one gather gives every group's part."""
    codes = random_codes()
    W = torch.randn(40, 6)
    bags = codes.rows * 2 + (codes.latents >= 20)
    order = torch.argsort(bags, stable=True)
    out = gather_decode(codes.values[order], W, bags[order], codes.latents[order], 40)
    dense = codes.dense()
    ref = torch.stack([dense[:, :20] @ W[:20], dense[:, 20:] @ W[20:]], 1).reshape(40, 6)
    torch.testing.assert_close(out, ref)


def dense_path_step(sae, x, target=None):
    """The same forward with autograd through the dense pre-activations (the reference)."""
    sae.sparse_backward = False
    try:
        return sae(x, target)
    finally:
        del sae.sparse_backward


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "jumprelu"])
@pytest.mark.parametrize("variant", ["sae", "official", "transcoder", "centred", "normalized"])
def test_sparse_encoder_gradients_equal_dense_autograd(arch, variant):
    kw = {"aux_k": 8, "dead_after_tokens": 1}
    if variant == "official":
        kw["loss"] = "official"  # b_enc used, aux normalised
    if variant in ("transcoder", "centred"):
        kw.update(d_out=5, target_hook_name="blocks.0.hook_mlp_out")
    if variant == "centred":
        kw.update(center_input=True)
    if variant == "normalized":
        kw.update(normalize_input=True, loss="saelens")
    sae = build_sae(make(arch, d_in=8, width=32, k=3, **kw)).train()
    randomize(sae)
    if variant == "centred":
        with torch.no_grad():
            sae.input_center.normal_()
    sae.tokens_since_fired.fill_(5)
    sae.tokens_since_fired[:10] = 0  # 22 dead latents: the aux loss is on
    ref = copy.deepcopy(sae)
    torch.manual_seed(0)
    x = torch.randn(24, 8)
    target = torch.randn(24, 5) if variant in ("transcoder", "centred") else None
    out, out_ref = sae(x, target), dense_path_step(ref, x, target)
    assert entries(out.codes) == pytest.approx(entries(out_ref.codes))
    assert arch == "jumprelu" or out.aux_loss.item() > 0
    torch.testing.assert_close(out.loss, out_ref.loss)
    out.loss.backward()
    out_ref.loss.backward()
    for (name, p), p_ref in zip(sae.named_parameters(), ref.parameters(), strict=True):
        if p_ref.grad is None:
            assert p.grad is None, name
            continue
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_sparse_path_gives_input_gradients():
    sae = build_sae(make("batchtopk", loss="official")).eval()
    randomize(sae)
    with torch.no_grad():
        sae.threshold.fill_(0.1)
    x = torch.randn(6, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    sae.reconstruct(x).pow(2).sum().backward()
    xn, _, _ = sae._normalize(x_ref)
    codes = sae.select(sae.pre_activations(xn))
    sae.decode(codes).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_remove_parallel_decoder_grad_leaves_gradients_orthogonal_to_rows():
    sae = build_sae(make("topk"))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(32, 1) + 0.5)  # rows off the sphere: the projection normalises
    grad = torch.randn(32, 8)
    sae.W_dec.grad = grad.clone()
    sae.remove_parallel_decoder_grad()
    rows = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    assert (sae.W_dec.grad * rows).sum(1).abs().max() < 1e-5
    # the orthogonal part is untouched
    torch.testing.assert_close(sae.W_dec.grad, grad - (grad * rows).sum(1, keepdim=True) * rows)


def test_normalize_decoder_gives_unit_rows():
    sae = build_sae(make("batchtopk"))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(32, 1) * 3 + 0.1)
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))


def test_decoder_is_initialised_as_unit_rows_tied_and_contiguous():
    sae = build_sae(make("batchtopk"))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))
    assert sae.W_dec.is_contiguous()  # row gathers are fast only on a row-major decoder
    cos = torch.nn.functional.cosine_similarity(sae.W_dec, sae.W_enc.T, dim=1)
    torch.testing.assert_close(cos, torch.ones(32))


@pytest.mark.parametrize("d_out", [None, 8, 5])
def test_encoder_init_decoder_transpose(d_out):
    """dictionary_learning's and SAE-Lens's init: unit-norm decoder rows, W_enc = W_dec^T
    exactly (a transcoder's encoder too when the widths match, else unit-norm columns)."""
    kw = {} if d_out is None else {"d_out": d_out, "target_hook_name": "blocks.0.hook_mlp_out"}
    sae = build_sae(make("batchtopk", encoder_init="decoder_transpose", **kw))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(sae.W_enc.norm(dim=0), torch.ones(32))
    if d_out != 5:
        assert torch.equal(sae.W_enc, sae.W_dec.T)
    kaiming = build_sae(make("batchtopk"))  # Bart's: the encoder keeps kaiming's small scale
    assert kaiming.W_enc.norm(dim=0).max() < 0.5
    with pytest.raises(ValueError, match="encoder_init 'xavier' is not allowed"):
        make("topk", encoder_init="xavier")


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


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_center_input_is_the_same_map_after_folding_into_b_enc(arch):
    """A transcoder with an input centre c computes ReLU((x - c) W_enc + b_enc); folding gives
    b_enc - c W_enc and c = 0 with identical outputs, and sparse gradients equal dense ones."""
    kw = {"d_out": 5, "target_hook_name": "blocks.0.hook_mlp_out", "center_input": True}
    sae = build_sae(make(arch, **kw)).eval()
    randomize(sae)
    with torch.no_grad():
        sae.threshold.fill_(0.05)
        sae.input_center.copy_(torch.randn(8) * 3)
    x = torch.randn(12, 8) + 3
    pre = torch.relu((x - sae.input_center) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(sae.pre_activations(x), pre)
    before = sae.reconstruct(x)
    sae.fold_input_center()
    assert not sae.input_center.any()
    torch.testing.assert_close(sae.reconstruct(x), before, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="an SAE centres its input with b_dec"):
        make(arch, center_input=True)


def aux_sae(loss="bussmann"):
    """d = 2, width = 4: latents 0, 1 write e0, e1; latents 2, 3 (made dead) write e0, e1 too."""
    sae = build_sae(
        SAEConfig(arch="topk", d_in=2, width=4, k=1, aux_k=2, loss=loss, dead_after_tokens=10)
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    return sae.train()


def test_aux_loss_is_zero_without_dead_latents_and_positive_with_them():
    x = torch.tensor([[2.0, 1.0], [0.5, 3.0]])
    sae = aux_sae()
    out = sae(x)
    assert out.aux_loss.item() == 0 and not sae.dead_mask().any()
    # top-1 keeps (2, 0) and (0, 3): residuals (0, 1) and (0.5, 0)
    sae.tokens_since_fired[2:] = 10
    out = sae(x)
    # dead latents 2, 3 (aux_k 2): aux recon (2, 1) and (0.5, 3) vs residuals (0, 1), (0.5, 0)
    want = (1 / 32) * ((2**2 + 0 + 0 + 3**2) / 4)
    assert out.aux_loss.item() == pytest.approx(want)
    out.aux_loss.backward()
    assert sae.W_dec.grad[:2].abs().sum() == 0, "only dead latents learn from the aux loss"
    assert sae.W_dec.grad[2:].abs().sum() > 0


def test_aux_loss_official_is_normalised_by_residual_variance():
    x = torch.tensor([[2.0, 1.0], [0.5, 3.0]])
    sae = aux_sae("official")
    sae.tokens_since_fired[2:] = 10
    out = sae(x)
    residual = torch.tensor([[0.0, 1.0], [0.5, 0.0]])
    aux = torch.tensor([[2.0, 1.0], [0.5, 3.0]])
    err = (aux - residual).pow(2).sum(1).mean()
    var = (residual - residual.mean(0)).pow(2).sum(1).mean()
    assert out.aux_loss.item() == pytest.approx(float(err / var / 32), rel=1e-6)


def test_dead_counter_counts_tokens_since_firing():
    sae = build_sae(make("topk", d_in=4, width=4, k=1, dead_after_tokens=6))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
    sae.train()
    only_0 = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3)
    only_1 = torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 3)
    sae(only_0)
    assert sae.tokens_since_fired.tolist() == [0, 3, 3, 3]
    sae(only_1)
    assert sae.tokens_since_fired.tolist() == [3, 0, 6, 6]
    assert sae.dead_mask().tolist() == [False, False, True, True]  # >= dead_after_tokens
    sae.eval()
    sae(only_0)  # evaluation does not count
    assert sae.tokens_since_fired.tolist() == [3, 0, 6, 6]


def test_normalize_input_round_trips_the_scale():
    sae = build_sae(make("batchtopk", normalize_input=True)).eval()
    randomize(sae)
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    x = torch.randn(10, 8)
    xn, mean, std = sae._normalize(x)
    torch.testing.assert_close(xn.mean(-1), torch.zeros(10), atol=1e-6, rtol=0)
    torch.testing.assert_close(xn.std(-1), torch.ones(10), atol=1e-4, rtol=0)
    torch.testing.assert_close(xn * (std + 1e-5) + mean, x)
    # Per-token standardisation makes the SAE equivariant to per-token scale and shift.
    scale, shift = torch.rand(10, 1) * 50 + 0.5, torch.randn(10, 1) * 10
    torch.testing.assert_close(
        sae.reconstruct(x * scale + shift), sae.reconstruct(x) * scale + shift, atol=1e-3, rtol=1e-4
    )
    out = sae(x * 100)
    torch.testing.assert_close(out.output, sae.reconstruct(x * 100))
    assert float(out.fvu) == pytest.approx(float(sae(x).fvu), rel=1e-3)  # loss in normalised space


def test_bias_conventions():
    x = torch.randn(16, 8)
    # bussmann SAE: b_enc exists but is unused (and not trained); b_dec is subtracted
    sae = build_sae(make("batchtopk")).eval()
    assert not sae.cfg.encoder_bias and not sae.b_enc.requires_grad
    assert sae.cfg.decoder_bias_on_input
    before = sae.reconstruct(x)
    with torch.no_grad():
        sae.b_enc.fill_(5.0)
    torch.testing.assert_close(sae.reconstruct(x), before)
    with torch.no_grad():
        sae.b_dec.copy_(x[0])
    assert sae.encode(x[:1]).codes.values.numel() == 0  # x - b_dec = 0: nothing fires
    # official SAE: b_enc is added
    official = build_sae(make("batchtopk", loss="official")).eval()
    assert official.cfg.encoder_bias and official.b_enc.requires_grad
    with torch.no_grad():
        official.b_enc.fill_(-100.0)
    assert official.encode(x).codes.values.numel() == 0
    # transcoders: b_enc added, b_dec (in the target space) never subtracted from the input
    tc = build_sae(make("batchtopk", d_out=5, target_hook_name="t")).eval()
    assert tc.cfg.encoder_bias and not tc.cfg.decoder_bias_on_input
    codes = entries(tc.encode(x).codes)
    with torch.no_grad():
        tc.b_dec.fill_(3.0)
    assert entries(tc.encode(x).codes) == codes
    # explicit choices override the variant's defaults
    forced = SAEConfig(
        arch="topk", d_in=8, width=32, use_encoder_bias=True, subtract_decoder_bias=False
    )
    assert forced.encoder_bias and not forced.decoder_bias_on_input


def test_shape_errors_are_clear():
    sae = build_sae(make("topk"))
    with pytest.raises(ValueError, match=r"expected input \[B, 8\]"):
        sae(torch.randn(4, 7))
    with pytest.raises(ValueError, match=r"expected input \[B, 8\]"):
        sae(torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match=r"expected input \[B, 8\]"):
        sae.reconstruct(torch.randn(4, 9))
    with pytest.raises(ValueError, match="target"):
        sae(torch.randn(4, 8), torch.randn(3, 8))
    tc = build_sae(make("topk", d_out=5, target_hook_name="t"))
    with pytest.raises(ValueError, match="transcoder needs the target"):
        tc(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"target \[B, 5\]"):
        tc(torch.randn(4, 8), torch.randn(4, 8))


def test_build_sae_unknown_arch_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown SAE architecture 'gated'") as err:
        build_sae(SAEConfig(arch="gated", d_in=4, width=8, k=2))
    for arch in ALL_ARCHS:
        assert arch in str(err.value)
    assert sorted(ARCHITECTURES) == sorted(ALL_ARCHS)


def test_config_validation():
    with pytest.raises(ValueError, match="k = 9"):
        SAEConfig(arch="topk", d_in=4, width=8, k=9)
    with pytest.raises(ValueError, match="loss 'mse'"):
        SAEConfig(arch="topk", d_in=4, width=8, loss="mse")
    with pytest.raises(ValueError, match="unknown SAE config key"):
        SAEConfig.from_dict({"arch": "topk", "d_in": 4, "width": 8, "dict_size": 8})
    cfg = make("matryoshka", d_out=5, target_hook_name="t", extra={"run": "x"})
    assert SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---------------------------------------------------------------------- transcoders


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "relu"])
def test_transcoder_maps_to_another_width_with_an_untied_decoder(arch):
    cfg = make(arch, d_in=8, d_out=5, target_hook_name="blocks.0.hook_mlp_out")
    sae = build_sae(cfg).train()
    assert cfg.is_transcoder and sae.W_dec.shape == (32, 5) and sae.b_dec.shape == (5,)
    x, y = torch.randn(16, 8), torch.randn(16, 5)
    out = sae(x, y)
    assert out.output.shape == (16, 5)
    out.loss.backward()
    assert sae.W_enc.grad is not None and sae.W_dec.grad is not None
    # same width, but a target hook: still a transcoder, still untied
    same = build_sae(make(arch, target_hook_name="blocks.0.hook_mlp_out"))
    assert same.cfg.is_transcoder
    cos = torch.nn.functional.cosine_similarity(same.W_dec, same.W_enc.T, dim=1)
    assert cos.abs().max() < 0.99
    assert same.W_dec.data_ptr() != same.W_enc.data_ptr()


# ---------------------------------------------------------------------- SAE-Lens round trip


def trained(cfg: SAEConfig, steps: int = 3, seed: int = 0):
    """An SAE after a few real steps: moved weights and biases, a non-zero threshold."""
    sae = build_sae(cfg).train()
    randomize(sae, seed)
    opt = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(64, cfg.d_in, generator=g)
        y = torch.randn(64, cfg.d_out, generator=g) if cfg.is_transcoder else None
        sae(x, y).loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        opt.zero_grad()
        sae.normalize_decoder()
    return sae.eval()


ROUND_TRIP = [
    ("topk", {}),
    ("batchtopk", {}),
    ("matryoshka", {}),
    ("relu", {"loss": "official"}),
    ("jumprelu", {}),
    ("batchtopk", {"loss": "official"}),
    ("matryoshka", {"d_out": 5, "target_hook_name": "blocks.0.hook_mlp_out"}),
    ("relu", {"d_out": 5, "target_hook_name": "blocks.0.hook_mlp_out"}),
]


@pytest.mark.parametrize(("arch", "kw"), ROUND_TRIP)
def test_save_sae_loads_in_sae_lens_and_back(tmp_path, arch, kw):
    sae_lens = pytest.importorskip("sae_lens")
    cfg = make(arch, d_in=8, width=32, k=3, hook_name="blocks.0.hook_resid_pre", **kw)
    sae = trained(cfg)
    if hasattr(sae, "threshold") and sae.threshold.ndim == 0:
        assert float(sae.threshold) > 0
    save_sae(sae, tmp_path)
    x = torch.randn(40, 8) * 2
    ours = sae.reconstruct(x).detach()

    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours, atol=1e-5, rtol=1e-5)

    again = load_sae(tmp_path)
    assert type(again) is type(sae) and not again.training
    assert again.cfg == sae.cfg
    for (name, buf), (name2, buf2) in zip(sae.named_buffers(), again.named_buffers(), strict=True):
        assert name == name2 and torch.equal(buf, buf2), name
    for (name, p), p2 in zip(sae.named_parameters(), again.parameters(), strict=True):
        if name == "b_enc" and not cfg.encoder_bias:
            # unused (bussmann): saved as zeros so that SAE-Lens, which adds it, agrees
            assert not p2.any()
            continue
        assert torch.equal(p, p2), name
    torch.testing.assert_close(again.reconstruct(x), ours, atol=0, rtol=0)


def _foreign(sae_lens, kind: str, rescale: bool = False):
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    common = {"d_in": 8, "d_sae": 32, "dtype": "float32", "device": "cpu"}
    if kind == "standard":
        sae = StandardSAE(StandardSAEConfig(**common))
    elif kind == "topk":
        sae = TopKSAE(TopKSAEConfig(k=4, rescale_acts_by_decoder_norm=rescale, **common))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if name.startswith("b_") else 1))
        if kind == "jumprelu":
            sae.threshold.copy_(torch.rand(32, generator=g))
        if rescale:
            sae.W_dec.mul_(torch.rand(32, 1, generator=g) * 2 + 0.2)  # rows off the sphere
    return sae


@pytest.mark.parametrize(
    ("kind", "rescale"), [("standard", False), ("topk", False), ("topk", True), ("jumprelu", False)]
)
def test_load_sae_reads_a_foreign_sae_lens_sae(tmp_path, kind, rescale):
    sae_lens = pytest.importorskip("sae_lens")
    foreign = _foreign(sae_lens, kind, rescale)
    foreign.save_model(tmp_path)
    ours = load_sae(tmp_path)
    assert ours.cfg.arch == {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}[kind]
    assert ours.cfg.encoder_bias and ours.cfg.decoder_bias_on_input
    x = torch.randn(30, 8) * 2
    with torch.no_grad():
        torch.testing.assert_close(ours.reconstruct(x), foreign(x), atol=1e-5, rtol=1e-5)
        if kind == "topk":
            assert (ours.encode(x).codes.l0() == 4).all()


def test_load_sae_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(SAELoadError, match=r"expected cfg\.json and sae_weights\.safetensors"):
        load_sae(tmp_path)


def test_unsupported_saelens_architecture_is_named(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": 4, "d_sae": 8}))
    (tmp_path / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(SAELoadError, match="'gated' is not supported"):
        load_sae(tmp_path)


def test_jumprelu_sae_threshold_survives_as_per_latent_vector(tmp_path):
    sae = trained(make("batchtopk"))
    save_sae(sae, tmp_path)
    from safetensors.torch import load_file

    threshold = load_file(tmp_path / "sae_weights.safetensors")["threshold"]
    assert threshold.shape == (32,) and math.isclose(float(threshold[0]), float(sae.threshold))


# ---------------------------------------------------------------------- aux loss: dead-set order


def reference_aux_step(sae, x: torch.Tensor, counters: torch.Tensor):
    """The references' step (dictionary_learning's ``MatryoshkaBatchTopKTrainer.loss``,
    bartbussmann's ``sae.py``), by hand in float64 with dense autograd: select, **update the
    dead counters with this batch's firings**, then pick the dead set and compute AuxK.

    Returns (aux loss, {parameter: gradient of the aux loss}, counters after the step).
    """
    cfg = sae.cfg
    W_enc, W_dec, b_enc, b_dec = (
        p.detach().double().clone().requires_grad_()
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec)
    )
    x = x.double()
    pre = (x - b_dec) @ W_enc + (b_enc if cfg.encoder_bias else 0)
    acts = torch.relu(pre)
    n_rows, width = acts.shape
    if cfg.arch == "topk":
        chosen = {(r, int(i)) for r in range(n_rows) for i in acts[r].topk(cfg.k).indices}
    else:  # batchtopk, matryoshka: the k·B largest entries of the batch
        chosen = set(brute_batch_topk(acts.detach(), cfg.k))
    chosen = {(r, i) for r, i in chosen if acts[r, i] > 0}
    mask = torch.zeros(n_rows, width, dtype=torch.float64)
    for r, i in chosen:
        mask[r, i] = 1.0
    output = (acts * mask) @ W_dec + b_dec
    # 1. the counters see this batch ...
    fired = mask.bool().any(0)
    counters = counters.clone() + n_rows
    counters[fired] = 0
    # 2. ... then the dead set is read
    dead = counters >= cfg.dead_after_tokens
    k_aux = min(cfg.aux_k, int(dead.sum()))
    dead_acts = torch.where(dead, acts, torch.full_like(acts, -1.0))
    top = dead_acts.topk(k_aux, dim=-1)
    aux_mask = torch.zeros_like(acts).scatter(1, top.indices, 1.0) * (acts > 0)
    aux_out = (acts * aux_mask) @ W_dec
    residual = x - output.detach()
    if cfg.loss == "bussmann":
        aux = cfg.aux_penalty * (aux_out - residual).pow(2).mean()
    else:
        err = (aux_out - residual).pow(2).sum(-1).mean()
        var = (residual - residual.mean(0)).pow(2).sum(-1).mean()
        aux = cfg.aux_penalty * err / var
    aux.backward()
    grads = {"W_enc": W_enc.grad, "W_dec": W_dec.grad, "b_dec": b_dec.grad}
    if cfg.encoder_bias:
        grads["b_enc"] = b_enc.grad
    return aux, grads, counters, chosen


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("loss", ["bussmann", "official"])
@pytest.mark.parametrize("case", ["dead_latent_fires", "latent_reaches_the_limit"])
def test_aux_loss_reads_the_dead_set_after_this_batch(arch, loss, case):
    """Bug 2 of issue 12: the dead set of the aux loss must include this batch's firings.

    ``dead_latent_fires``: a latent dead before the batch fires in it, so the references leave
    it out of AuxK. ``latent_reaches_the_limit``: a latent that does not fire reaches
    ``dead_after_tokens`` with this batch, so the references put it in.
    """
    n_rows, limit = 24, 100
    sae = build_sae(
        make(arch, d_in=8, width=32, k=3, loss=loss, aux_k=32, dead_after_tokens=limit)
    ).train()
    randomize(sae)
    torch.manual_seed(1)
    x = torch.randn(n_rows, 8)
    _, _, _, chosen = reference_aux_step(sae, x, torch.zeros(32, dtype=torch.long))
    fires = sorted({i for _, i in chosen})
    silent = [i for i in range(32) if i not in fires]
    acts = sae.pre_activations(x).detach()
    # a silent latent with positive pre-activations somewhere, so AuxK can use it
    silent = [i for i in silent if acts[:, i].max() > 0]
    assert len(fires) >= 2 and len(silent) >= 3
    counters = torch.zeros(32, dtype=torch.long)
    counters[silent[0]] = limit  # dead before and after in both orders: AuxK is on
    if case == "dead_latent_fires":
        counters[fires[0]] = limit + 7  # dead before the batch, fires in it
    else:
        counters[silent[1]] = limit - n_rows  # reaches the limit with this batch
    want, grads, counters_after, _ = reference_aux_step(sae, x, counters)
    assert want.item() > 0

    sae.tokens_since_fired.copy_(counters)
    out = sae(x)
    assert sae.tokens_since_fired.tolist() == counters_after.tolist()
    assert out.aux_loss.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(out.loss, out.recon_loss + out.aux_loss + out.sparsity_loss)
    sae.zero_grad()
    out.aux_loss.backward()
    for name, grad in grads.items():
        got = getattr(sae, name).grad
        torch.testing.assert_close(got.double(), grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "relu", "jumprelu"])
def test_streamed_inference_encode_equals_the_dense_one(monkeypatch, arch):
    """Wide SAEs stream blocks of encoder columns at inference; codes, reconstructions and
    evaluate.encode_reconstruct are the same as from the whole [B, width] matrix."""
    from saelab.evaluate import encode_reconstruct
    from saelab.saes import base

    sae = trained(make(arch, width=32, k=3, normalize_input=arch == "relu"), seed=4)
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(9)) * 2
    with torch.no_grad():
        dense = sae.encode(x)
        recon = sae.reconstruct(x)
    assert dense.pre_acts is not None and not sae.streams(20)
    monkeypatch.setattr(base, "STREAM_ELEMENTS", 20 * 5)  # blocks of 5 latents (the last: 2)
    assert sae.streams(20)
    with torch.no_grad():
        streamed = sae.encode(x)
        assert streamed.pre_acts is None
        assert bool((streamed.codes.rows[1:] >= streamed.codes.rows[:-1]).all())
        assert entries(streamed.codes) == pytest.approx(entries(dense.codes), abs=1e-6)
        assert len(entries(dense.codes)) > 0
        torch.testing.assert_close(sae.reconstruct(x), recon, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(encode_reconstruct(sae, x).output, recon, atol=1e-5, rtol=1e-5)
    sae.train()  # training never streams: the aux loss needs the dense pre-activations
    assert not sae.streams(20)


def test_loading_adopts_the_saved_tensors_without_initialising(tmp_path, monkeypatch):
    """A loaded SAE holds its weights once: no random init (a width-1M Gemma Scope SAE would
    otherwise allocate 3 more 15 GB matrices), the loaded tensors become the parameters."""
    from saelab.saes import io

    sae = trained(make("topk"), steps=1)
    save_sae(sae, tmp_path)
    loaded: dict = {}
    real_load_file = io.load_file

    def spy(path):
        loaded[str(path)] = real_load_file(path)
        return loaded[str(path)]

    real_uniform = torch.Tensor.uniform_

    def no_init(self, *args, **kwargs):
        if self.device.type != "meta":  # meta tensors hold no memory
            raise AssertionError("loading drew initial weights")
        return real_uniform(self, *args, **kwargs)

    monkeypatch.setattr(io, "load_file", spy)
    monkeypatch.setattr(torch.Tensor, "uniform_", no_init)
    again = load_sae(tmp_path)
    weights = loaded[str(tmp_path / "sae_weights.safetensors")]
    for name in ("W_enc", "W_dec", "b_dec"):
        assert getattr(again, name).data_ptr() == weights[name].data_ptr(), name
    assert again.W_enc.requires_grad and again.W_enc.device.type == "cpu"
    torch.testing.assert_close(
        again.reconstruct(torch.ones(2, 8)), sae.reconstruct(torch.ones(2, 8))
    )
