"""Tests of ``saelab.training.outputs``, moved from tests/test_train.py.

Notes shared with the other tests moved from tests/test_train.py: ``tests/test_train.py``."""

from __future__ import annotations

import json

import pytest
import torch

from saelab.cache import ActivationReader
from saelab.saes.io import load_sae
from saelab.train import (
    default_checkpoint_dir,
)
from tests.training.helpers import BATCH, D_SRC, GROUP_STEPS, SRC


def test_outputs_are_complete_and_metrics_recompute_from_the_saved_sae(trained):
    sae_lens = pytest.importorskip("sae_lens")
    name = "topk"
    out = trained.out_dirs[name]
    for file in ("cfg.json", "sae_weights.safetensors", "saelab_state.safetensors",
                 "config.json", "metrics.json", "train_log.jsonl"):  # fmt: skip
        assert (out / file).is_file(), file
    assert not default_checkpoint_dir(out).exists(), "checkpoints are removed after success"
    assert not out.with_name(out.name + ".tmp").exists()

    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == GROUP_STEPS and config["tokens"] == GROUP_STEPS * BATCH
    assert config["train"]["lr"] == 1e-2 and config["train"]["n_tokens"] == GROUP_STEPS * BATCH
    assert config["sae"]["arch"] == "topk" and config["sae"]["d_in"] == D_SRC
    assert config["cache"] == str(trained.cache) and len(config["cache_fingerprint"]) == 16
    assert config["completed"][:4].isdigit() and config["resumed_from_step"] == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(trained.results[name].metrics))
    assert 0 <= metrics["dead_fraction"] <= 1 and 0 < metrics["heldout"]["alive_fraction"] <= 1
    result = trained.results[name]
    assert result.steps == GROUP_STEPS and result.tokens_per_s > 0

    # The held-out numbers recompute from what was saved, with the definitions stated.
    sae = load_sae(out)
    heldout = ActivationReader(trained.cache, SRC, BATCH, split="heldout").read_all()
    with torch.no_grad():
        recon = sae(heldout).output.double()
    x = heldout.double()
    sse = (recon - x).pow(2).sum()
    fvu = (sse / x.numel()) / x.var()  # seed 001's compute_fvu: MSE / unbiased variance
    fvu_centered = sse / (x - x.mean(dim=0)).pow(2).sum()
    assert metrics["heldout"]["tokens"] == x.shape[0]
    assert metrics["heldout"]["fvu_element_global"] == pytest.approx(fvu.item(), rel=1e-5)
    assert metrics["heldout"]["fvu_dim_centred"] == pytest.approx(fvu_centered.item(), rel=1e-5)
    assert fvu_centered > fvu  # per-dimension means explain more: the denominator is smaller

    # SAE-Lens loads it and computes the same map.
    theirs = sae_lens.SAE.load_from_disk(out)
    with torch.no_grad():
        torch.testing.assert_close(theirs(heldout), sae.reconstruct(heldout), atol=1e-5, rtol=1e-5)
    # Decoder rows are normalised after every step, so the saved ones are unit norm.
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5, rtol=0)


def test_centred_transcoder_is_saved_folded(trained):
    """The input centre (the source's geometric median) trains the encoder on centred inputs
    and is folded into b_enc at the end: the saved transcoder has c = 0 and the same map."""
    out = trained.out_dirs["transcoder_centred"]
    sae = load_sae(out)
    assert sae.cfg.center_input and not sae.input_center.any()
    x = ActivationReader(trained.cache, SRC, BATCH, split="heldout").read_all()
    with torch.no_grad():
        torch.testing.assert_close(
            sae.reconstruct(x), trained.saes["transcoder_centred"].eval().reconstruct(x)
        )
