"""Helpers moved verbatim from tests/test_trajectories.py, used by
tests/e2e/test_trajectories.py
tests/plots/test_trajectories.py
tests/trajectories/test_decompose.py
tests/trajectories/test_evolution.py
tests/trajectories/test_graph.py
tests/trajectories/test_settings.py."""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.trajectories.decompose import (
    layer_hook_names,
)

REPO = Path(__file__).resolve().parents[2]


PROMPT = "Max, Mark and Smith are in the dark room. Smith left. Mark gave flashlight to"


def _layer_caches(model):
    tokens = model.to_tokens(PROMPT)
    names = {n for layer in range(model.cfg.n_layers) for n in layer_hook_names(layer)}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return tokens, cache


def hand_evolution() -> dict:
    """Tokens <bos> A B C, layers 0-2, lengths 2-4 (see test_edges_and_trace_hand_example)."""
    quiet = {length: [[1, 2]] * (length + 1) for length in (2, 3, 4)}
    steps = {
        (4, 1): [[1, 2], [1, 2], [1, 7, 2], [1, 7, 2], [7, 1, 2]],
        (4, 2): [[1, 2], [1, 2], [11, 1, 2], [9, 11, 1, 2], [11, 9, 1, 8, 2]],
        (3, 1): [[1, 2], [5, 1, 2], [5, 1, 2], [5, 1, 2]],
        (2, 1): [[1, 2], [1, 2], [1, 6, 2]],
    }
    data = {
        str(length): {
            str(layer): {"indices": steps.get((length, layer), quiet[length])} for layer in range(3)
        }
        for length in (2, 3, 4)
    }
    lens = {
        str(length): {str(layer): {"top_tokens": ["x", "y"]} for layer in range(3)}
        for length in (2, 3, 4)
    }
    meta = {"prompt_name": "hand", "tokens": ["<bos>", "A", "B", "C"], "layers": [0, 1, 2],
            "lengths": [2, 3, 4], "max_prompt_length": 4}  # fmt: skip
    return {"metadata": meta, "data": data, "logit_lens": lens}
