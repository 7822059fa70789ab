"""Tests of ``saelab.saes.sparse``, moved from tests/test_saes.py.

Notes shared with the other tests moved from tests/test_saes.py: ``tests/saes/__init__.py``."""

from __future__ import annotations

import copy

import pytest
import torch

from saelab.saes import (
    SparseCodes,
    build_sae,
)
from saelab.saes.sparse import gather_decode, sparse_decode
from tests.saes.helpers import entries, make, randomize

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
