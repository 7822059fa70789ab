"""Fixtures shared by the tests of this folder (moved verbatim from tests/test_trajectories.py)."""

from __future__ import annotations

import pytest
import torch

from saelab.models import load_model, prepare_model, resolve_model
from tests.hf_models import HF_CASES, perturb_norms, save_hf

# ------------------------------------------------------------------ the decomposition


@pytest.fixture(scope="module", params=["gpt2", "gemma2", "gemma3"])
def hf_case(request, small_tokenizer_dir, tmp_path_factory):
    """A tiny random HF model loaded as a HookedTransformer through saelab.models."""
    case = request.param
    build, config_name = HF_CASES[case]
    torch.manual_seed(0)
    hf_model = build(400).eval()
    perturb_norms(hf_model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-zero biases, so GPT-2's b_V and b_O must be accounted for
        for name, param in hf_model.named_parameters():
            if name.endswith("bias") and "ln" not in name:
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    tmp = tmp_path_factory.mktemp(f"traj-{case}")
    hf_dir = save_hf(hf_model, small_tokenizer_dir, tmp / "hf")
    info = resolve_model(config_name, model_path=str(hf_dir))
    model_dir = tmp / "models" / info.model_id
    prepare_model(info, model_dir)
    return case, load_model(info, model_dir)
