"""Helpers moved verbatim from tests/test_pretrained.py, used by
tests/e2e/test_pretrained.py
tests/saes/test_pretrained.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "tests" / "config" / "micro.yaml"


# ------------------------------------------------------------------ local releases


def _fill(sae, seed: int, kind: str) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name.startswith("b_") else 1))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=g) * 2)
        if kind == "topk_rescale":
            sae.W_dec.mul_(torch.rand(sae.W_dec.shape[0], 1, generator=g) * 2 + 0.2)


def saelens_sae(kind: str, d_in: int = 8, d_sae: int = 32, hook: str = "blocks.1.hook_resid_pre",
                hook_out: str = "blocks.1.hook_mlp_out", model: str = "tiny", seed: int = 0):  # fmt: skip
    """A sae_lens SAE of one kind, random weights, with its metadata."""
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
        Transcoder,
        TranscoderConfig,
    )  # fmt: skip
    from sae_lens.saes.sae import SAEMetadata

    common = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu"}
    meta = SAEMetadata(model_name=model, hook_name=hook)
    if kind == "standard":  # res-jb: b_dec subtracted from the input, no normalisation
        sae = StandardSAE(StandardSAEConfig(apply_b_dec_to_input=True, **common))
    elif kind == "standard_layer_norm":
        sae = StandardSAE(StandardSAEConfig(
            apply_b_dec_to_input=False, normalize_activations="layer_norm", **common))  # fmt: skip
    elif kind == "topk":  # OpenAI v5: TopK, layer-normed inputs
        sae = TopKSAE(TopKSAEConfig(k=4, normalize_activations="layer_norm", **common))
    elif kind == "topk_rescale":
        sae = TopKSAE(TopKSAEConfig(k=4, rescale_acts_by_decoder_norm=True, **common))
    elif kind == "jumprelu":  # Gemma Scope
        sae = JumpReLUSAE(JumpReLUSAEConfig(apply_b_dec_to_input=False, **common))
    elif kind == "transcoder":
        sae = Transcoder(TranscoderConfig(d_out=d_in + 3, apply_b_dec_to_input=False, **common))
        meta.hook_name_out = hook_out
    elif kind == "jumprelu_transcoder":  # Gemma Scope transcoders
        sae = JumpReLUTranscoder(JumpReLUTranscoderConfig(
            d_out=d_in, apply_b_dec_to_input=False, **common))  # fmt: skip
        meta.hook_name_out = hook_out
    else:  # pragma: no cover
        raise ValueError(kind)
    sae.cfg.metadata = meta
    _fill(sae, seed, kind)
    return sae.eval()


def add_release(store: Path, repo: str, sae_id: str, sae) -> Path:
    """Save ``sae`` (sae_lens's save_model) where ``hf download`` puts a release folder."""
    folder = store / repo / sae_id
    sae.save_model(folder)
    return folder
