"""Tests of ``saelab.cache.sources``, moved from tests/test_cache.py.

Notes shared with the other tests moved from tests/test_cache.py: ``tests/cache/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.cache import (
    TLActivationSource,
)
from tests.hf_models import HF_CASES, perturb_norms, save_hf


def test_tl_source_stops_after_the_deepest_hook(model):
    ran = []
    handle = model.blocks[2].register_forward_hook(lambda *_: ran.append(True))
    try:
        TLActivationSource(model, ["blocks.1.hook_resid_post"])(torch.zeros(1, 4, dtype=torch.long))
        assert not ran, "block 2 ran although the deepest hook is in block 1"
        TLActivationSource(model, ["blocks.2.hook_resid_post"])(torch.zeros(1, 4, dtype=torch.long))
        assert ran
    finally:
        handle.remove()


# ------------------------------------------------------------------ the two backends agree

ALL_SITES = [
    "blocks.1.hook_resid_pre",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_resid_post",
    "blocks.1.attn.hook_z",
]


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_transformers_backend_matches_transformer_lens(
    case, small_tokenizer_dir, tmp_path, monkeypatch
):
    """The fast backend's hooks equal TransformerLens's on the same unprocessed weights."""
    from saelab.cache import HFActivationSource, activation_source
    from saelab.models import prepare_model, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build, name = HF_CASES[case]
    torch.manual_seed(0)
    hf_model = build(400).eval()
    perturb_norms(hf_model)
    info = resolve_model(
        name, model_path=str(save_hf(hf_model, small_tokenizer_dir, tmp_path / "hf"))
    )
    model_dir = tmp_path / "model"
    prepare_model(info, model_dir)

    fast = activation_source(info, model_dir, ALL_SITES, "cpu")
    slow = activation_source(info, model_dir, ALL_SITES, "cpu", backend="transformer_lens")
    assert isinstance(fast, HFActivationSource) and isinstance(slow, TLActivationSource)
    tokens = torch.randint(3, 400, (2, 24), generator=torch.Generator().manual_seed(1))
    got, want = fast(tokens), slow(tokens)
    for hook in ALL_SITES:
        assert want[hook].abs().max() > 1e-2, hook  # a real signal to compare
        torch.testing.assert_close(got[hook], want[hook], atol=1e-4, rtol=1e-4, msg=hook)


def test_transformers_backend_stops_after_the_deepest_hook(tmp_path):
    from saelab.cache import HFActivationSource

    hf_model = HF_CASES["gemma3"][0](400).eval()
    ran = []
    for index in (1, 2):  # attention ran = the block's computation started
        hf_model.model.layers[index].self_attn.register_forward_hook(
            lambda *_, index=index: ran.append(index)
        )
    tokens = torch.randint(3, 400, (1, 8))
    HFActivationSource(hf_model, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"])(tokens)
    assert ran == [], "block 1 must not run when only its input is needed"
    HFActivationSource(hf_model, ["blocks.1.hook_mlp_out"])(tokens)
    assert ran == [1]
