"""Tests of ``saelab.trajectories.evolution``, moved from tests/test_trajectories.py.

Notes shared with the other tests moved from tests/test_trajectories.py:
``tests/trajectories/__init__.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelab.runtime import write_json_atomic
from saelab.saes import SAEConfig, build_sae
from saelab.trajectories import (
    DecompositionError,
    compute_evolution,
    load_evolution,
)
from saelab.trajectories.evolution import top_firing
from tests.trajectories.helpers import PROMPT, _layer_caches


def _random_saes(model, width=48, k=6):
    saes = {}
    for layer in range(model.cfg.n_layers):
        torch.manual_seed(layer)
        cfg = SAEConfig(arch="topk", d_in=model.cfg.d_model, width=width, k=k,
                        hook_name=f"blocks.{layer}.hook_resid_mid")  # fmt: skip
        saes[layer] = build_sae(cfg).eval()
    return saes


def test_compute_evolution_structure_and_logit_lens(hf_case, tmp_path):
    case, model = hf_case
    saes = _random_saes(model)
    evolution = compute_evolution(
        model, PROMPT, saes, top_k=5, prompt_name="p", logit_lens_lengths="all"
    )
    meta = evolution["metadata"]
    assert meta["post_attention_norm"] == (case != "gpt2")  # Gemma's ln1_post
    n = meta["max_prompt_length"]
    assert meta["lengths"] == list(range(2, n + 1))
    assert meta["max_relative_error"] < 1e-5
    tokens, cache = _layer_caches(model)
    for length in (2, n):
        for layer in range(model.cfg.n_layers):
            entry = evolution["data"][str(length)][str(layer)]
            assert len(entry["indices"]) == length + 1
            for indices, values in zip(entry["indices"], entry["values"], strict=True):
                assert len(indices) <= 5 and all(v > 0 for v in values)
                assert values == sorted(values, reverse=True)
            # the last step encodes the model's own resid_mid; step 0 its resid_pre
            for step, hook in ((-1, "hook_resid_mid"), (0, "hook_resid_pre")):
                x = cache[f"blocks.{layer}.{hook}"][0, length - 1][None]
                expected = top_firing(saes[layer].encode(x).codes.dense(), 5)[0]
                assert entry["indices"][step] == expected.indices
    # logit lens of the last layer at the last token = the model's own next-token prediction
    with torch.no_grad():
        probs = torch.softmax(model(tokens)[0], dim=-1)
    for length in (2, n):
        lens = evolution["logit_lens"][str(length)][str(model.cfg.n_layers - 1)]
        top = probs[length - 1].topk(5)
        assert lens["top_ids"] == top.indices.tolist()
        np.testing.assert_allclose(lens["top_probs"], top.values.numpy(), atol=1e-5)
    assert sorted(evolution["logit_lens"], key=int) == [str(length) for length in meta["lengths"]]
    # JSON round trip with its format check
    path = write_json_atomic(evolution, tmp_path / "evolution.json")
    assert load_evolution(path)["data"] == json.loads(json.dumps(evolution["data"]))
    assert not list(tmp_path.glob(".*tmp*"))


def test_compute_evolution_fails_loudly_beyond_tolerance(hf_case):
    _, model = hf_case
    with pytest.raises(DecompositionError, match="does not reproduce hook_resid_mid"):
        compute_evolution(model, PROMPT, _random_saes(model), tolerance=1e-12)


def test_top_firing_ranks_only_active_latents():
    codes = torch.tensor([[0.0, 2.0, 0.5, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    first, second = top_firing(codes, top_k=400)
    assert first.indices == [1, 4, 2] and first.values == [2.0, 2.0, 0.5]
    assert second.indices == []
    assert top_firing(codes, top_k=2)[0].indices == [1, 4]


def test_top_firing_equals_a_full_stable_sort_with_ties():
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 4, (50, 300), generator=generator).float() * torch.relu(
        torch.randn(50, 300, generator=generator).sign()
    )  # few distinct values: many ties at the k-th place
    for top_k in (1, 7, 40, 400):
        got = top_firing(codes, top_k)
        negated, order = torch.sort(-codes, dim=1, stable=True)
        for row, firing in enumerate(got):
            n = min(top_k, int((codes[row] > 0).sum()))
            assert firing.indices == order[row, :n].tolist()
            assert firing.values == (-negated[row, :n]).tolist()
