"""Tests of ``saelab.saes.io``, moved from tests/test_saes.py.

Notes shared with the other tests moved from tests/test_saes.py: ``tests/saes/__init__.py``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from saelab.saes.io import SAELoadError, load_sae, save_sae
from tests.saes.helpers import make, trained

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
