"""saelab.evaluate: sparsity, prefix FVU, CE recovered, seed-001
metrics and first-letter absorption, each on a small example whose answer is known."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from saelab.absorption import first_letter_absorption, single_word_tokens
from saelab.cache import TLActivationSource, build_cache
from saelab.ce import ce_recovered
from saelab.checks import load_config
from saelab.config import REPO_ROOT
from saelab.evaluate import (
    SparseCodes,
    encode_reconstruct,
    evaluate_sae,
    heldout_contexts,
    heldout_reader,
    write_metrics,
)
from saelab.saes import SAEConfig, build_sae
from saelab.saes.io import save_sae
from saelab.seed001 import (
    seed001_absorption_score,
    seed001_hierarchy,
    seed001_monosemanticity,
    seed001_splitting_score,
)
from saelab.sparsity import dead_per_group

DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------ helpers


def set_weights(sae, W_enc, W_dec, b_dec=None):
    with torch.no_grad():
        sae.W_enc.copy_(torch.as_tensor(W_enc, dtype=torch.float32))
        sae.W_dec.copy_(torch.as_tensor(W_dec, dtype=torch.float32))
        if b_dec is not None:
            sae.b_dec.copy_(torch.as_tensor(b_dec, dtype=torch.float32))
    return sae.eval()


def identity_relu_sae(d: int, hook: str):
    """A ReLU SAE with a perfect dictionary: latents +x and −x, so relu(x) − relu(−x) = x."""
    sae = build_sae(SAEConfig(arch="relu", d_in=d, width=2 * d, k=1, hook_name=hook))
    eye = torch.eye(d)
    return set_weights(sae, torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0))


def zero_relu_sae(d: int, hook: str):
    """Reconstructs 0 everywhere (zero decoder and bias)."""
    sae = build_sae(SAEConfig(arch="relu", d_in=d, width=2 * d, k=1, hook_name=hook))
    return set_weights(sae, torch.eye(d).repeat(1, 2), torch.zeros(2 * d, d))


# ------------------------------------------------------------------------------------ sparsity


def matryoshka_exact(d=4, group_sizes=(1, 1, 2)):
    """Matryoshka SAE with identity encoder/decoder: latent i reconstructs coordinate i."""
    cfg = SAEConfig(arch="matryoshka", d_in=d, width=d, k=1, group_sizes=list(group_sizes))
    return set_weights(build_sae(cfg), torch.eye(d), torch.eye(d))


def test_prefix_fvu_falls_with_every_group():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, 4, generator=gen) + 0.1  # positive: every latent fires, exactly
    sae = matryoshka_exact()
    out = evaluate_sae(sae, [x[:20], x[20:]], seed001=False)
    prefix = [p["fvu_dim_centred"] for p in out["matryoshka"]["prefix_fvu"]]
    assert len(prefix) == 3 and prefix[0] > prefix[1] > prefix[2]
    assert prefix[2] == pytest.approx(0.0, abs=1e-10)
    # prefix 1 reconstructs dim 0 only: the error on dims 1..3 is x itself
    sst = (x.double() - x.double().mean(0)).pow(2).sum()
    assert prefix[0] == pytest.approx(float(x[:, 1:].double().pow(2).sum() / sst), rel=1e-5)
    assert [p["n_latents"] for p in out["matryoshka"]["prefix_fvu"]] == [1, 2, 4]
    assert out["fvu_dim_centred"] == pytest.approx(0.0, abs=1e-10) and out["l0"]["mean"] == 4
    assert out["matryoshka"]["dead_per_group"] == [0, 0, 0]


@pytest.mark.parametrize("normalize", [False, True])
def test_encode_reconstruct_is_what_reconstruct_splices(normalize):
    cfg = SAEConfig(arch="matryoshka", d_in=8, width=32, k=4, group_sizes=[8, 8, 16])
    cfg.normalize_input = normalize
    sae = build_sae(cfg).eval()
    x = torch.randn(50, 8)
    rec = encode_reconstruct(sae, x, prefixes=True)
    torch.testing.assert_close(rec.output, sae.reconstruct(x))
    torch.testing.assert_close(rec.prefix_outputs[-1], rec.output, atol=1e-5, rtol=1e-5)


def test_dead_alive_and_l0_counts():
    # latents 0..2 read +x, 3..5 read -x; x2 is always > 0, so latent 5 never fires
    sae = identity_relu_sae(3, "blocks.0.hook_resid_pre")
    x = torch.tensor(
        [[1.0, -1.0, 2.0], [-1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 2.0, 3.0]]
    )  # positives per latent: +x0: 2, +x1: 2, +x2: 4, -x0: 1, -x1: 2, -x2: 0
    out = evaluate_sae(sae, [x], seed001=False)
    assert out["latent_frequencies"] == [0.5, 0.5, 1.0, 0.25, 0.5, 0.0]
    assert out["n_dead"] == 1 and out["dead_fraction"] == pytest.approx(1 / 6)
    assert out["alive_fraction"] == pytest.approx(5 / 6)
    # L0 per token: 3, 3, 3, 2 (x0 = 0 fires neither latent)
    assert out["l0"]["histogram"] == [0, 0, 1, 3] and out["l0"]["mean"] == 2.75
    assert out["fvu_dim_centred"] == pytest.approx(0.0, abs=1e-12)
    assert dead_per_group(torch.tensor([0, 3, 0, 0, 1, 2]), [(0, 2), (2, 6)]) == [1, 2]


def test_n_tokens_limit_and_transcoder_batches():
    cfg = SAEConfig(
        arch="topk", d_in=4, width=8, k=2, d_out=3, hook_name="blocks.0.hook_resid_mid",
        target_hook_name="blocks.0.hook_mlp_out",
    )  # fmt: skip
    sae = build_sae(cfg).eval()
    with torch.no_grad():
        sae.W_enc.abs_()  # positive inputs and encoder: all pre-activations > 0, so L0 = k
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.rand(10, 4, generator=gen) + 0.1, torch.randn(10, 3, generator=gen))] * 3
    out = evaluate_sae(sae, pairs, n_tokens=25, seed001=False)
    assert out["n_tokens"] == 25 and out["l0"]["mean"] == 2
    with pytest.raises(ValueError, match="needs \\(source, target\\)"):
        evaluate_sae(sae, [torch.randn(10, 4)])


# ------------------------------------------------------------------------------------ seed 001


def test_seed001_absorption_counts_near_parallel_rows():
    W = torch.tensor([[1.0, 0, 0], [0.999, 0.045, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0.5, 0.5]])
    # cosines: (0,1) ≈ 0.999; (2,4) = (3,4) ≈ 0.707; (1,2) ≈ 0.045; the rest 0 or below 0.9
    for chunk in (1, 2, 2048):
        result = seed001_absorption_score(W, chunk_size=chunk, top_k=3)
        assert result.n_pairs == 10 and result.n_pairs_above == 1 and result.score == 0.1
        assert (result.top_pairs[0].i, result.top_pairs[0].j) == (0, 1)
        assert result.top_pairs[0].cosine == pytest.approx(0.999 / math.hypot(0.999, 0.045))
        assert {(p.i, p.j) for p in result.top_pairs[1:]} == {(2, 4), (3, 4)}


def codes_from_sets(active: list[set[int]], width: int) -> SparseCodes:
    dense = torch.zeros(len(active), width)
    for row, latents in enumerate(active):
        dense[row, list(latents)] = 1.0
    return SparseCodes.from_dense(dense)


def test_seed001_splitting_by_hand_and_against_dense():
    # latent 0 on tokens {0,1,2}, 1 on all 4, 2 on {0,3}, 3 on {1}: c01 = 3/4 is the only pair
    # above 0.5 (c12 = 2/4 is not strictly above) -> 1 of 6 pairs
    codes = codes_from_sets([{0, 1, 2}, {0, 1, 3}, {0, 1}, {1, 2}], 4)
    result = seed001_splitting_score(codes)
    assert (result.n_pairs_above, result.n_pairs) == (1, 6) and result.score == pytest.approx(1 / 6)
    gen = torch.Generator().manual_seed(0)
    dense = (torch.rand(200, 12, generator=gen) < torch.linspace(0.05, 0.95, 12)).float()
    co = dense.T @ dense / 200
    iu = torch.triu_indices(12, 12, offset=1)
    expected = int((co[iu[0], iu[1]] > 0.5).sum())
    assert expected > 0
    assert seed001_splitting_score(SparseCodes.from_dense(dense)).n_pairs_above == expected


def test_seed001_monosemanticity_matches_numpy_histogram_entropy():
    gen = np.random.default_rng(0)
    n, width = 400, 5
    dense = np.zeros((n, width))
    dense[:, 0] = gen.exponential(1.0, n)  # always active, spread out
    dense[gen.random(n) < 0.3, 1] = 2.5  # constant value on ~30% of tokens
    dense[:8, 2] = gen.random(8) + 0.1  # 8 activations: too few (≤ 10), entropy 0
    dense[:, 3] = np.where(gen.random(n) < 0.5, gen.gamma(2.0, 1.0, n), 0)
    codes = SparseCodes.from_dense(torch.from_numpy(dense))
    result = seed001_monosemanticity(codes)
    expected = []
    for i in range(width):
        values = dense[:, i][dense[:, i] > 0]
        freq = len(values) / n
        h = 0.0
        if len(values) > 10:
            hist, _ = np.histogram(values, bins=50, density=True)
            h = scipy.stats.entropy(hist + 1e-10)
        expected.append(((1 - freq) + 1 / (1 + h)) / 2)
    np.testing.assert_allclose(result.per_latent.numpy(), expected, rtol=1e-5)
    assert result.per_latent[4] == 1.0  # dead: ((1 - 0) + 1/(1 + 0)) / 2
    assert result.per_latent[2] == pytest.approx((1 - 8 / n + 1) / 2)
    assert result.mean == pytest.approx(np.mean(expected), rel=1e-5)


def test_seed001_hierarchy_by_hand():
    c = 1 / math.sqrt(2)
    W = torch.tensor([[1.0, 0, 0], [c, c, 0], [0, 1.0, 0], [0, 0, 1.0]])
    first, second = seed001_hierarchy(W, [(0, 2), (2, 4)], chunk_size=1)
    # group 0: |S - I| has off-diagonal c twice out of 4 entries; to group 1 only (c,c,0)·e1
    assert first.within == pytest.approx(c / 2)
    assert first.between_next == pytest.approx(c / 4)
    assert first.separation_ratio == pytest.approx(0.5)
    assert second.within == pytest.approx(0.0, abs=1e-7) and second.between_next is None


def test_evaluate_sae_reports_seed001_and_all_fvus():
    sae = matryoshka_exact()
    x = torch.rand(30, 4) + 0.1
    out = evaluate_sae(sae, [x])
    assert {"fvu_element_global", "fvu_dim_centred", "fvu_mean_r2"} <= set(out)
    assert "fvu" not in out and "fvu_all" not in out  # every value names its definition
    assert out["seed001"]["splitting_score"] == 1.0  # all 4 latents fire on every token
    assert out["seed001"]["absorption_score"] == 0.0 and out["seed001"]["dead_per_group"] == [0] * 3
    assert len(out["seed001"]["hierarchy"]) == 3


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


def test_ce_kl_formula_matches_log_softmax_and_kl_div():
    """_CleanPass's two-read CE and KL against torch's log_softmax and kl_div (SAE-Lens's _kl)."""
    from saelab.ce import _CleanPass

    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 9, 5000, generator=gen) * 4
    patched = clean + torch.randn(2, 9, 5000, generator=gen) * 0.3
    targets = torch.randint(0, 5000, (2, 8), generator=gen)
    ce, kl = _CleanPass(clean, targets).ce_kl(patched)
    lp = F.log_softmax(patched[:, :-1], dim=-1)
    expected_kl = F.kl_div(lp, F.softmax(clean[:, :-1], dim=-1), reduction="none").sum(-1)
    expected_ce = -lp.gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(ce, expected_ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl, expected_kl, rtol=1e-3, atol=1e-6)
    assert float(kl.min()) > 0


# ------------------------------------------------------------------------------------ absorption


def synthetic_letters(absorbed_types=(3, 4), n_letters=4, types_per_letter=6, per_type=5):
    """Words of ``n_letters`` letters: x = e_letter + 0.5 u_type + noise, and a JumpReLU SAE with one
    latent per letter, one per word type, and for letter 'a''s ``absorbed_types`` a latent
    (decoder ∝ e_a + 0.5 u_t) that fires instead of the 'a' latent on that word."""
    gen = torch.Generator().manual_seed(0)
    n_types = n_letters * types_per_letter
    d = n_letters + n_types
    ids, letters, rows = [], [], []
    for letter in range(n_letters):
        for t in range(types_per_letter):
            type_id = letter * types_per_letter + t
            for _ in range(per_type):
                x = torch.zeros(d)
                x[letter], x[n_letters + type_id] = 1.0, 0.5
                rows.append(x + 0.01 * torch.randn(d, generator=gen))
                ids.append(100 + type_id)
                letters.append(letter)
    acts, ids = torch.stack(rows), torch.tensor(ids)
    words = {100 + i: "abcdefgh"[i // types_per_letter] + "word" for i in range(n_types)}
    absorbed = [*absorbed_types, 0]  # type 0 (train) is absorbed too
    width = n_letters + n_types + len(absorbed)
    W_enc, W_dec = torch.zeros(d, width), torch.zeros(width, d)
    for letter in range(n_letters):
        W_enc[letter, letter] = 1.0
        W_dec[letter, letter] = 1.0
    for t in range(n_types):
        W_enc[n_letters + t, n_letters + t] = 1.0
        W_dec[n_letters + t, n_letters + t] = 1.0
    for j, t in enumerate(absorbed):
        latent = n_letters + n_types + j
        W_enc[n_letters + t, 0] = -4.0  # the 'a' latent goes silent on this word...
        W_enc[n_letters + t, latent] = 2.0  # ...and this one fires (activation ≈ 1)
        W_dec[latent, 0], W_dec[latent, n_letters + t] = 1.0, 0.5
    sae = build_sae(SAEConfig(arch="jumprelu", d_in=d, width=width, k=1, hook_name="h"))
    sae.threshold.fill_(0.2)  # the ±0.01 noise never fires a latent
    set_weights(sae, W_enc, W_dec / W_dec.norm(dim=1, keepdim=True))
    test_mask = torch.tensor([(i - 100) % types_per_letter >= 3 for i in ids.tolist()])
    return sae, acts, ids, words, test_mask


def test_first_letter_absorption_recovers_the_planted_answer():
    sae, acts, ids, words, test_mask = synthetic_letters()
    result = first_letter_absorption(
        sae, acts, ids, words, test_mask=test_mask, max_per_type=None, probe_steps=200
    )
    assert result.reason is None and result.probe_accuracy == 1.0
    a = result.letters["a"]
    # the absorber of train word 0 is "split": it lifts the train F1 of 'a' from 10/12.5 = 0.8
    # to 1.0 (> the 0.03 jump), so it joins the main latents, as SAEBench's F1-jump rule does
    assert a.main_latents == [0, 30] and a.main_f1 == pytest.approx(1.0)
    assert a.n_true_positives == 15
    # test types 3, 4, 5 of 'a': types 3 and 4 are absorbed
    assert a.n_full_absorption == 10 and a.full_absorption_rate == pytest.approx(2 / 3)
    assert a.mean_absorption_fraction == pytest.approx(2 / 3)
    for letter in "bcd":
        assert result.letters[letter].n_full_absorption == 0
        assert result.letters[letter].main_latents == ["abcd".index(letter)]
    assert result.full_absorption_rate == pytest.approx(2 / 3 / 4)
    assert result.pooled_full_absorption_rate == pytest.approx(10 / 60)


def test_first_letter_absorption_none_without_enough_words():
    sae, acts, ids, words, _ = synthetic_letters()
    result = first_letter_absorption(sae, acts, ids, {100: "apple"})
    # one word type cannot be split into train and test: no letter qualifies
    assert result.full_absorption_rate is None and "only 0 letter(s)" in result.reason
    assert "single-word" in first_letter_absorption(sae, acts, ids, {}).reason
    transcoder = build_sae(
        SAEConfig(arch="relu", d_in=4, width=8, k=1, d_out=3, target_hook_name="t")
    )
    assert "transcoder" in first_letter_absorption(transcoder, acts, ids, words).reason


def test_single_word_tokens():
    class Tok:
        all_special_ids = (0,)
        vocab = ("<bos>", " the", "Cat", " x", "ing", " 42", " naïve", "a b", "ok")

        def __len__(self):
            return len(self.vocab)

        def decode(self, ids):
            return "".join(self.vocab[i] for i in ids)

    assert single_word_tokens(Tok()) == {1: "the", 2: "Cat", 4: "ing", 8: "ok"}
    assert single_word_tokens(Tok(), [2, 3, 8]) == {2: "Cat", 8: "ok"}


# ------------------------------------------------------------------------------------ cache + script


@pytest.fixture(scope="module")
def cached(tiny_model, tmp_path_factory):
    hooks = ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"]
    gen = np.random.default_rng(0)
    tokens = gen.integers(1, 60, size=(40, 16)).astype(np.int32)
    tokens[:, 0] = 0
    path = tmp_path_factory.mktemp("cache") / "main.zarr"
    build_cache(
        TLActivationSource(tiny_model, hooks), tokens, tokens == 0, hooks, path,
        dtype="float32", batch_contexts=8, manifest={"model": "toy"}, progress=False,
    )  # fmt: skip
    return path, tokens


def test_cache_backed_evaluation_end_to_end(tiny_model, cached):
    path, tokens = cached
    sae = identity_relu_sae(32, "blocks.1.hook_resid_pre")
    out = evaluate_sae(sae, heldout_reader(sae, path, batch_size=7))
    assert out["n_tokens"] == 2 * 15  # 2 held-out contexts (5% of 40), BOS excluded
    assert out["fvu_dim_centred"] == pytest.approx(0.0, abs=1e-10)
    ctx, special = heldout_contexts(path, sae.cfg.hook_name, n_contexts=8, context_len=10)
    np.testing.assert_array_equal(ctx.numpy(), tokens[38:, :10])
    assert special[:, 0].all() and not special[:, 1:].any()
    ce = ce_recovered(tiny_model, ctx, {"id": sae}, special_mask=special)["id"]
    assert ce.ce_loss_score == pytest.approx(1.0, abs=1e-3)
    cfg = SAEConfig(
        arch="topk", d_in=32, width=64, k=4, hook_name="blocks.1.hook_resid_mid",
        target_hook_name="blocks.1.hook_mlp_out",
    )  # fmt: skip
    transcoder = build_sae(cfg)
    assert evaluate_sae(transcoder, heldout_reader(transcoder, path))["n_tokens"] == 30


def test_write_metrics_is_strict_json(tmp_path):
    path = write_metrics(
        {"a": float("nan"), "b": torch.tensor([1.5]), "c": (1, 2)}, tmp_path / "m.json"
    )
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5], "c": [1, 2]}


def test_script_writes_metrics(tiny_model, cached, tmp_path):
    from saelab.models import train_bpe_tokenizer

    path, _ = cached
    sae_dir = save_sae(identity_relu_sae(32, "blocks.1.hook_resid_pre"), tmp_path / "sae")
    model_dir = tmp_path / "model"
    train_bpe_tokenizer(["the cat sat on the mat"] * 20, 300, model_dir / "tokenizer")
    out = tmp_path / "eval" / "id.json"
    ce_path = tmp_path / "eval" / "ce.json"
    params = SimpleNamespace(
        # the schema's defaults, as the Snakefile passes them
        eval={**load_config(DEFAULT_CONFIG).evaluation, "n_tokens": 100, "ce_contexts": 0},
        model={"name": "tiny", "model_path": None, "precision": "float32", "tiny": {}},
        saes=["id"],
        group="id",
        tracking={},
    )
    # Rule ce_recovered with ce_contexts 0 writes an empty table (and loads no model).
    ce_job = SimpleNamespace(
        input=SimpleNamespace(saes=[str(sae_dir)], cache=str(path), model_dir=str(model_dir)),
        output=SimpleNamespace(scores=str(ce_path)),
        params=params,
        config={"device": "cpu"},  # read at run time, not a rule param
        log=[str(tmp_path / "ce.log")],
        threads=1,
    )
    runpy.run_path(str(REPO / "scripts" / "ce_recovered.py"), init_globals={"snakemake": ce_job})
    assert json.loads(ce_path.read_text())["saes"] == {}
    snakemake = SimpleNamespace(
        input=SimpleNamespace(
            sae=str(sae_dir), cache=str(path), model_dir=str(model_dir), ce=str(ce_path)
        ),
        output=SimpleNamespace(metrics=str(out)),
        params=params,
        config={"device": "cpu"},
        log=[str(tmp_path / "eval.log")],
        threads=1,
        wildcards=SimpleNamespace(sae="id"),
    )
    runpy.run_path(str(REPO / "scripts" / "evaluate_sae.py"), init_globals={"snakemake": snakemake})
    metrics = json.loads(out.read_text())
    assert metrics["sae"] == "id" and metrics["fvu_dim_centred"] == pytest.approx(0.0, abs=1e-10)
    assert metrics["ce_recovered"] is None
    assert metrics["first_letter_absorption"]["reason"]  # random token ids: too few words
