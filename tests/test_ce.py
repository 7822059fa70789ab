"""Tests of ``saelab.ce``, moved from tests/test_evaluate.py.

Notes shared with the other tests moved from tests/test_evaluate.py: ``tests/test_evaluate.py``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from saelab.ce import ce_recovered
from saelab.saes import SAEConfig, build_sae
from tests.evaluate_helpers import identity_relu_sae, set_weights


def zero_relu_sae(d: int, hook: str):
    """Reconstructs 0 everywhere (zero decoder and bias)."""
    sae = build_sae(SAEConfig(arch="relu", d_in=d, width=2 * d, k=1, hook_name=hook))
    return set_weights(sae, torch.eye(d).repeat(1, 2), torch.zeros(2 * d, d))


# ------------------------------------------------------------------------------------ CE


@pytest.fixture(scope="module")
def contexts():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(1, 60, (6, 16), generator=gen)


def test_ce_identity_recovers_everything_and_zero_recovers_nothing(tiny_model, contexts):
    hook = "blocks.1.hook_resid_pre"
    saes = {"identity": identity_relu_sae(32, hook), "zero": zero_relu_sae(32, hook)}
    out = ce_recovered(tiny_model, contexts, saes, batch_size=4)
    ident, zero = out["identity"], out["zero"]
    with torch.no_grad():
        expected = tiny_model(contexts, return_type="loss", loss_per_token=True).mean()
    assert ident.ce_clean == pytest.approx(float(expected), rel=1e-5)
    assert ident.n_tokens == 6 * 15
    assert ident.ce_sae == pytest.approx(ident.ce_clean, abs=1e-5)
    assert ident.ce_loss_score == pytest.approx(1.0, abs=1e-3)
    assert ident.ce_loss_score_mean == pytest.approx(1.0, abs=1e-3)
    assert abs(ident.kl_sae) < 1e-5 and ident.kl_div_score == pytest.approx(1.0, abs=1e-4)
    assert zero.ce_sae == pytest.approx(zero.ce_zero_ablation, abs=1e-5)
    assert zero.ce_loss_score == pytest.approx(0.0, abs=1e-4)
    assert zero.kl_sae == pytest.approx(zero.kl_zero_ablation, rel=1e-4)
    # random weights: zero-ablation moves the loss (either way) and the KL is positive
    assert abs(zero.ce_zero_ablation - ident.ce_clean) > 1e-3 and ident.kl_mean_ablation > 0


def test_ce_transcoder_and_hook_z_splices(tiny_model, contexts):
    block = tiny_model.blocks[1]

    class ExactMLP:  # a "transcoder" computing the block's true MLP output from resid_mid
        cfg = SimpleNamespace(
            hook_name="blocks.1.hook_resid_mid", target_hook_name="blocks.1.hook_mlp_out",
            is_transcoder=True,
        )  # fmt: skip

        def reconstruct(self, x):
            return block.mlp(block.ln2(x[None]))[0]

    saes = {"mlp": ExactMLP(), "z": identity_relu_sae(32, "blocks.0.attn.hook_z")}
    out = ce_recovered(tiny_model, contexts, saes)
    for result in out.values():
        assert result.ce_loss_score == pytest.approx(1.0, abs=1e-3)
        assert abs(result.kl_sae) < 1e-5
    assert out["mlp"].hook_name == "blocks.1.hook_mlp_out"


def half_identity_sae(d: int, hook: str):
    """Reconstructs x/2: CE and KL land between clean and zero-ablation."""
    sae = identity_relu_sae(d, hook)
    with torch.no_grad():
        sae.W_dec.mul_(0.5)
    return sae


def _per_context_loss(model, contexts, hooks, keep):
    """Hand reference: TransformerLens's own per-token loss of each context under ``hooks``,
    summed over the kept predictions."""
    loss = model.run_with_hooks(contexts, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
    return (loss * keep).sum(dim=1).double().detach().numpy()


def test_ce_special_positions_and_both_bos_conventions(tiny_model, contexts):
    special = torch.zeros_like(contexts, dtype=torch.bool)
    special[:, 0] = True  # BOS
    hook = "blocks.0.hook_resid_post"
    sae = {"half": half_identity_sae(32, hook)}
    kept = ce_recovered(tiny_model, contexts, sae, special_mask=special, splice_special=False)
    spliced = ce_recovered(tiny_model, contexts, sae, special_mask=special)
    k, s = kept["half"], spliced["half"]
    assert k.n_tokens == 6 * 14  # predictions from the BOS position are skipped
    assert (k.bos_convention, s.bos_convention) == ("clean", "splice")
    # BOS kept clean changes the spliced run only: clean loss and ablations are shared
    assert k.ce_clean == s.ce_clean and k.ce_zero_ablation == s.ce_zero_ablation
    assert k.ce_sae != s.ce_sae
    # each run reports the other convention too, with the same numbers
    for key in ("ce_sae", "kl_sae", "ce_loss_score", "ce_loss_score_mean", "kl_div_score"):
        assert s.other_convention[key] == pytest.approx(getattr(k, key), rel=1e-9)
        assert k.other_convention[key] == pytest.approx(getattr(s, key), rel=1e-9)
    assert s.other_convention["intervals"]["ce_loss_score"] == pytest.approx(
        k.intervals["ce_loss_score"], rel=1e-9
    )
    # against TransformerLens's own loss with BOS kept clean (SAE-Lens's get_recons_loss order)
    keep = (~special[:, :-1] & ~special[:, 1:]).float()

    def half_but_bos(act, hook):
        return torch.where(special[..., None], act, act * 0.5)

    by_hand = _per_context_loss(tiny_model, contexts, [(hook, half_but_bos)], keep)
    assert k.ce_sae == pytest.approx(by_hand.sum() / keep.sum().item(), rel=1e-5)
    none = ce_recovered(tiny_model, contexts, sae, special_mask=special, both_conventions=False)
    assert none["half"].other_convention is None


def test_ce_intervals_are_scipy_paired_percentile_bootstrap_over_contexts(tiny_model, contexts):
    """The reference: per-context CE of the clean, zero-ablated and spliced runs from
    TransformerLens's own loss, and scipy.stats.bootstrap (paired, percentile) of the CE loss
    score on them with the same seed."""
    from scipy import stats

    hook = "blocks.1.hook_resid_pre"
    out = ce_recovered(
        tiny_model, contexts, {"half": half_identity_sae(32, hook)}, n_resamples=500, seed=7
    )["half"]
    keep = torch.ones(contexts.shape[0], contexts.shape[1] - 1)
    clean = _per_context_loss(tiny_model, contexts, [], keep)
    zero = _per_context_loss(tiny_model, contexts, [(hook, lambda a, hook: a * 0)], keep)
    half = _per_context_loss(tiny_model, contexts, [(hook, lambda a, hook: a * 0.5)], keep)
    n = keep.sum(dim=1).double().numpy()
    assert out.ce_sae == pytest.approx(half.sum() / n.sum(), rel=1e-5)
    assert out.n_contexts == 6 and out.intervals["_method"]["n_resamples"] == 500

    def score(c, z, h, axis=-1):
        c, z, h = c.sum(axis), z.sum(axis), h.sum(axis)
        return (z - h) / (z - c)

    reference = stats.bootstrap(
        (clean, zero, half), score, paired=True, vectorized=True, method="percentile",
        n_resamples=500, rng=np.random.default_rng(7),
    ).confidence_interval  # fmt: skip
    # float32 logits (ours) against TL's float32 loss: the same resamples, rounding apart
    assert out.intervals["ce_loss_score"] == pytest.approx(list(reference), rel=2e-3)
    assert out.intervals["ce_loss_score"][0] < out.ce_loss_score < out.intervals["ce_loss_score"][1]
    for metric in ("ce_sae", "kl_sae", "ce_loss_score_mean", "kl_div_score"):
        low, high = out.intervals[metric]
        assert low <= getattr(out, metric) <= high and low < high, metric
