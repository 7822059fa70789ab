"""Tests of ``saelab.saes.base``, moved from tests/test_saes.py.

Notes shared with the other tests moved from tests/test_saes.py: ``tests/saes/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.saes import (
    ARCHITECTURES,
    SAEConfig,
    build_sae,
)
from tests.saes.helpers import brute_batch_topk, entries, make, randomize, trained

ALL_ARCHS = ["topk", "batchtopk", "matryoshka", "relu", "jumprelu"]


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
    codes.encode_reconstruct are the same as from the whole [B, width] matrix."""
    from saelab.codes import encode_reconstruct
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
