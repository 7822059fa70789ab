"""End-to-end tests (they run Snakemake) moved from tests/test_trajectories.py.

Notes shared with the other tests moved from tests/test_trajectories.py:
``tests/trajectories/__init__.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saelab.checks import load_config
from saelab.trajectories import (
    load_evolution,
)
from tests.trajectories.helpers import REPO

# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_micro_run_trajectories(micro_run):
    cfg = load_config(REPO / "tests" / "config" / "micro.yaml")
    prompts = [p["name"] for p in cfg.trajectories["prompts"]]
    assert prompts
    for prompt in prompts:
        evolution = load_evolution(
            micro_run / f"data/analysis/trajectories/tiny/{prompt}/evolution.json"
        )
        meta = evolution["metadata"]
        assert meta["max_relative_error"] < 1e-4
        assert meta["layers"] == [0, 1]
        n = meta["max_prompt_length"]
        assert len(meta["tokens"]) == n
        l0s = [
            l0
            for length in evolution["data"].values()
            for entry in length.values()
            for l0 in entry["l0"]
        ]
        assert 0 < np.mean(l0s) < 64  # trained BatchTopK SAEs (k = 8, width 128) fire sparsely
        for T in cfg.trajectories["T"]:
            for suffix in ("png", "html"):
                figure = micro_run / f"plots/trajectories/{prompt}/graph_T{T}.{suffix}"
                assert figure.stat().st_size > 5000
            graph = json.loads(
                (
                    micro_run / f"data/analysis/trajectories/tiny/{prompt}/graph_T{T}.json"
                ).read_text()
            )
            for edge in graph["edges"]:
                assert (
                    edge["to"][1] == edge["from"][1] + 1
                    and 0 < edge["from"][0] <= edge["to"][0] < n
                )
                assert all(t["final_position"] <= T for t in edge["trajectories"])
        assert (micro_run / f"plots/trajectories/{prompt}/evolution_L1.png").stat().st_size > 5000
