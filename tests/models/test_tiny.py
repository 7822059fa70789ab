"""Tests of ``saelab.models.tiny``, moved from tests/test_models.py.

Notes shared with the other tests moved from tests/test_models.py: ``tests/models/__init__.py``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from saelab.config import TinyConfig
from saelab.models import (
    tiny_model_config,
    train_tiny_lm,
)
from tests.models.helpers import TINY, TINY_VOCAB


def test_tiny_lm_learns(trained_tiny):
    model_dir, tokens, _, result = trained_tiny
    metrics = json.loads((model_dir / "tiny" / "metrics.json").read_text())
    # Untrained: near-uniform predictions, loss close to ln(vocab).
    assert abs(metrics["initial_val_loss"] - math.log(TINY_VOCAB)) < 0.15
    # A context-free model reaches the unigram entropy; the trained one must do clearly better.
    assert 3.0 < result.unigram_entropy < math.log(TINY_VOCAB)
    assert result.final_val_loss < result.unigram_entropy - 0.5
    assert result.steps == math.ceil(TINY.train_tokens / (TINY.batch_size * 64))
    assert result.tokens_seen == result.steps * TINY.batch_size * 64
    assert result.tokens_per_s > 0
    assert metrics["final_val_loss"] == pytest.approx(result.final_val_loss)
    assert metrics["val_curve"][-1]["val_loss"] == pytest.approx(result.final_val_loss)
    assert len(metrics["val_curve"]) >= 3
    assert metrics["n_val_contexts"] == round(len(tokens) * TINY.val_fraction)


def test_tiny_training_is_deterministic(tmp_path):
    """Two runs give the same bytes with two threads too (without deterministic kernels the
    multi-threaded backward drifted by ~1e-6 within 30 steps)."""
    from safetensors.torch import load_file

    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 1024, size=(400, 64))
    quick = TinyConfig(
        vocab_size=1024, d_model=64, n_layers=2, n_heads=4, d_mlp=256, n_ctx=64,
        train_tokens=32 * 64 * 30, batch_size=32, seed=3,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = train_tiny_lm(tokens, quick, tmp_path / "a", 1024)
        second = train_tiny_lm(tokens, quick, tmp_path / "b", 1024)
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training
    assert first.final_val_loss == second.final_val_loss
    weights_a = load_file(str(tmp_path / "a" / "model.safetensors"))
    weights_b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    # Nothing half-written is left beside the outputs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    assert tiny_model_config(quick, 1024).d_head == 16
