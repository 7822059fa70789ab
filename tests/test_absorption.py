"""Tests of ``saelab.absorption``, moved from tests/test_evaluate.py.

Notes shared with the other tests moved from tests/test_evaluate.py: ``tests/test_evaluate.py``."""

from __future__ import annotations

import pytest
import torch

import saelab.letter_probe as letter_probe_module
from saelab.absorption import (
    absorption_from_probe,
    first_letter_absorption,
    first_letter_absorption_from_probe_file,
)
from saelab.cache.words import single_word_tokens
from saelab.letter_probe import (
    CachedProbe,
    load_first_letter_probe,
    save_first_letter_probe,
    train_first_letter_probe,
)
from saelab.saes import SAEConfig, build_sae
from tests.evaluate_helpers import set_weights

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
    with pytest.raises(TypeError, match=r"unknown options \['probe_step'\]"):
        first_letter_absorption(sae, acts, ids, words, probe_step=3)  # a typo of probe_steps


def test_a_shared_probe_gives_each_sae_its_own_absorption():
    """The pipeline trains the probe once per hook (rule first_letter_probe): every SAE of the
    hook must get what the one-call metric gives it, with its own probe."""
    sae, acts, ids, words, test_mask = synthetic_letters()
    options = {"test_mask": test_mask, "max_per_type": None, "probe_steps": 200}
    probe = train_first_letter_probe(acts, ids, words, **options)
    other, *_ = synthetic_letters(absorbed_types=(4,))  # a second SAE of the same hook
    for each in (sae, other):
        assert absorption_from_probe(each, acts, probe) == first_letter_absorption(
            each, acts, ids, words, **options
        )
    assert absorption_from_probe(sae, acts, probe) != absorption_from_probe(other, acts, probe)
    with pytest.raises(ValueError, match="made from 120 activation rows, these are 119"):
        absorption_from_probe(sae, acts[:-1], probe)


def test_probe_file_round_trip_and_reread_check(tmp_path, monkeypatch):
    sae, acts, ids, words, test_mask = synthetic_letters()
    sae.cfg.hook_name = "blocks.0.hook_resid_pre"
    probe = train_first_letter_probe(acts, ids, words, test_mask=test_mask, max_per_type=None)
    reading = {"hook": sae.cfg.hook_name, "split": "all", "max_per_type": None, "max_tokens": 999}
    path = save_first_letter_probe(tmp_path / "probe.npz", CachedProbe(probe, words, reading))
    first_bytes = path.read_bytes()
    loaded = load_first_letter_probe(path)
    assert loaded.words == words and loaded.reading == reading
    for name, value in probe._asdict().items():
        got = getattr(loaded.probe, name)
        assert torch.equal(got, value) if torch.is_tensor(value) else got == value, name
    save_first_letter_probe(path, loaded)
    assert path.read_bytes() == first_bytes  # the same probe, the same bytes

    reads = []

    def cached_word_activations(cache, hook, word_ids, max_per_type, max_tokens, split):
        reads.append((cache, hook, sorted(word_ids), max_per_type, max_tokens, split))
        return acts, ids

    monkeypatch.setattr(letter_probe_module, "cached_word_activations", cached_word_activations)
    expected = first_letter_absorption(
        sae, acts, ids, words, test_mask=test_mask, max_per_type=None
    )
    assert first_letter_absorption_from_probe_file(sae, "c.zarr", path) == expected
    assert reads == [("c.zarr", sae.cfg.hook_name, sorted(words), None, 999, "all")]

    ids_changed = ids.clone()
    ids_changed[probe.rows[0]] += 1
    monkeypatch.setattr(
        letter_probe_module, "cached_word_activations", lambda *args: (acts, ids_changed)
    )
    with pytest.raises(ValueError, match="rebuild the probe"):
        first_letter_absorption_from_probe_file(sae, "c.zarr", path)
    sae.cfg.hook_name = "blocks.1.hook_resid_pre"
    with pytest.raises(ValueError, match=r"is the probe of 'blocks\.0\.hook_resid_pre'"):
        first_letter_absorption_from_probe_file(sae, "c.zarr", path)


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
