"""Tests of ``saelab.models.splice``, moved from tests/test_splice.py.

saelab.models.splice against TransformerLens's own forward: the final logits of residual
vectors, passes that start at a layer with a hook replaced, and their next-token CE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saelab.models.splice import (
    FromLayer,
    final_logits,
    final_resid_with,
    masked_ce_sums,
    replace_hook,
    resume_layer,
    row_logsumexp,
    token_losses,
)


def _model(normalization_type="LN", soft_cap=-1.0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=60,
        act_fn="gelu", normalization_type=normalization_type, seed=0,
        output_logits_soft_cap=soft_cap,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():  # a non-zero unembedding bias, so that a missing b_U would show
        model.unembed.b_U.normal_(generator=torch.Generator().manual_seed(1))
    return model


def _tokens(n=3, ctx=12, vocab=60, seed=0):
    return torch.randint(0, vocab, (n, ctx), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("norm", "cap"), [("LN", -1.0), ("RMS", 4.0), (None, 4.0)], ids=["ln", "rms-capped", "no-norm"]
)
@pytest.mark.parametrize("direct", [False, True])
def test_final_logits_equal_the_forward(norm, cap, direct):
    """The last block's output through final_logits gives TransformerLens's forward logits,
    with and without a final norm and with the output soft-cap (checked to be active)."""
    model = _model(norm, cap)
    tokens = _tokens()
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        resid = cache["blocks.1.hook_resid_post"].reshape(-1, 32)
        ours = final_logits(model, resid, direct=direct).reshape(logits.shape)
    assert hasattr(model, "ln_final") == (norm is not None)
    if cap > 0:
        assert logits.abs().max() < cap and logits.abs().max() > 0.5 * cap  # the cap bites
    torch.testing.assert_close(ours, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "hook", ["blocks.1.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post",
             "blocks.0.hook_mlp_out", "blocks.1.attn.hook_z"],
)  # fmt: skip
def test_final_resid_with_equals_a_hooked_forward(hook):
    """The last block's output with a hook's activation replaced equals TransformerLens's whole
    forward with a hook that returns the replacement (residual hooks start part-way)."""
    model = _model()
    tokens = _tokens()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        act = cache[hook] + 0.5 * torch.randn(cache[hook].shape, generator=torch.Generator())
        expected = model.run_with_hooks(
            tokens, stop_at_layer=2, fwd_hooks=[(hook, lambda value, hook: act)]
        )
        ours = final_resid_with(model, tokens, hook, act)
    assert resume_layer(model, hook) == {
        "blocks.1.hook_resid_pre": 1, "blocks.0.hook_resid_post": 1, "blocks.1.hook_resid_post": 2
    }.get(hook)  # fmt: skip
    assert not torch.allclose(ours, cache["blocks.1.hook_resid_post"], atol=1e-3)  # it changed
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("start", [0, 1])
def test_from_layer_logits_equal_the_whole_forward(start):
    """Passes from a shared prefix (FromLayer) give the whole hooked forward's logits, with a
    masked replacement at a hook in block 1."""
    model = _model()
    tokens = _tokens()
    mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(3)) < 0.5
    hook = "blocks.1.hook_resid_mid"
    fwd = [(hook, replace_hook(lambda act: torch.zeros_like(act), mask))]
    with torch.no_grad():
        expected = model.run_with_hooks(tokens, fwd_hooks=fwd)
        ours = FromLayer(model, tokens, start).logits(fwd)
        clean = model(tokens)
    # The replacement is at the masked positions only.
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    assert not torch.allclose(expected, clean)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    patched = {}
    model.run_with_hooks(tokens, fwd_hooks=[*fwd, (hook, lambda a, hook: patched.update(x=a))])
    assert torch.equal(patched["x"][~mask], cache[hook][~mask])
    assert torch.all(patched["x"][mask] == 0)


def test_masked_ce_sums_and_token_losses_equal_cross_entropy_of_the_forward():
    """Per-context CE sums over a mask, and per-token losses, against F.cross_entropy of
    TransformerLens's logits (and its own loss_per_token)."""
    model = _model(soft_cap=4.0)
    tokens = _tokens(n=4)
    loss_mask = torch.rand(4, 11, generator=torch.Generator().manual_seed(5)) < 0.6
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
        totals, counts = masked_ce_sums(
            model, cache["blocks.1.hook_resid_post"], tokens, loss_mask, 5
        )
        expected = (per_token * loss_mask).double().sum(dim=1).numpy()
    np.testing.assert_allclose(totals, expected, rtol=1e-5)
    np.testing.assert_array_equal(counts, loss_mask.sum(dim=1).numpy())
    losses = token_losses(model, tokens, batch_size=3)
    assert np.isnan(losses[:, -1]).all()
    np.testing.assert_allclose(losses[:, :-1], per_token.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_logsumexp_and_next_token_ce_equal_torch_over_whole_rows(dtype):
    """Chunked logsumexp (more rows than one chunk, a non-contiguous [B, T-1, V] view, bf16
    logits) equals torch.logsumexp of the float32 logits; next_token_ce equals F.cross_entropy."""
    from saelab.models.splice import PREDICTIONS_PER_CHUNK, next_token_ce

    g = torch.Generator().manual_seed(7)
    logits = (5 * torch.randn(3, 2 * PREDICTIONS_PER_CHUNK + 5, 300, generator=g)).to(dtype)
    view = logits[:, :-1]
    assert not view.is_contiguous()
    expected = torch.logsumexp(view.float(), dim=-1)
    torch.testing.assert_close(row_logsumexp(view), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(row_logsumexp(view[0]), expected[0], rtol=0, atol=1e-5)
    targets = torch.randint(0, 300, view.shape[:2], generator=g)
    ce = next_token_ce(view, targets)
    reference = F.cross_entropy(view.float().transpose(1, 2), targets, reduction="none")
    assert ce.dtype == torch.float32
    torch.testing.assert_close(ce, reference, rtol=1e-6, atol=1e-5)
