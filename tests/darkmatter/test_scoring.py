"""Tests of ``saelab.darkmatter.scoring``, moved from tests/test_darkmatter_interventions.py.

Notes shared with the other tests moved from tests/test_darkmatter_interventions.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from saelab.darkmatter.scoring import (
    LLMScorer,
    ScorerUnavailableError,
    TokenSetScorer,
    choose_latents,
    detection_examples,
    explanation_mask,
    make_scorer,
    parse_binary_list,
    score_activations,
    score_latents,
)
from tests.darkmatter.helpers_interventions import _free_port

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ scoring


def _token_latent_data():
    """Latent 0 fires exactly on token 7 (strength growing with position); latent 1 at random."""
    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, 20, size=4000)
    acts = np.zeros((4000, 2), dtype=np.float32)
    on = token_ids == 7
    acts[on, 0] = np.linspace(1, 2, on.sum())
    random_on = rng.random(4000) < 0.05
    acts[random_on, 1] = rng.random(random_on.sum()) + 0.1
    explain_mask = np.arange(4000) < 2000
    return token_ids, acts, explain_mask


def test_token_set_scorer_detects_a_token_latent_perfectly():
    token_ids, acts, explain_mask = _token_latent_data()
    rng = np.random.default_rng(0)
    examples = [detection_examples(acts, lat, explain_mask, rng, 5, 4, 30) for lat in (0, 1)]
    ex0 = examples[0]
    assert all(explain_mask[ex0.explain]) and not explain_mask[ex0.negatives].any()
    # Q1 holds the strongest activations
    assert acts[ex0.quantiles[0], 0].min() > acts[ex0.quantiles[-1], 0].max()
    scorer = TokenSetScorer(token_ids, explanation_tokens=1)
    assert scorer.explain(ex0) == [7]
    result = score_latents(scorer, examples[:1], 5)
    assert result["bins"] == ["Not", "Q1", "Q2", "Q3", "Q4", "Q5"]
    assert result["accuracy"] == [1.0] * 6
    assert result["total"] == [30, 4, 4, 4, 4, 4]
    noisy = score_latents(TokenSetScorer(token_ids, 1), examples[1:], 5)
    assert np.mean(noisy["accuracy"][1:]) < 0.5  # a random latent is not a token detector


def test_choose_latents_needs_activations_in_both_halves():
    _, acts, explain_mask = _token_latent_data()
    acts[:, 1][~explain_mask] = 0
    assert choose_latents(acts, explain_mask, 5, 10, seed=0).tolist() == [0]


def test_explanation_mask_splits_by_context_in_order_of_appearance():
    rows = np.array([260, 261, 5, 6, 130, 131, 7, 400])  # contexts of 128: 2, 2, 0, 0, 1, 1, 0, 3
    mask = explanation_mask(rows, 128)
    # four contexts in order of appearance 2, 0, 1, 3: the first two explain
    assert mask.tolist() == [True, True, True, True, False, False, True, False]


def test_score_activations_scores_only_latents_active_in_both_halves():
    token_ids, acts, explain_mask = _token_latent_data()
    acts[:, 1][~explain_mask] = 0
    result = score_activations(
        TokenSetScorer(token_ids, 1), acts, explain_mask, n_latents=5, min_activations=10,
        n_quantiles=5, examples_per_quantile=4, n_negatives=30, seed=0,
    )  # fmt: skip
    assert [entry["latent"] for entry in result["latents"]] == [0]
    assert result["accuracy"] == [1.0] * 6


def test_parse_binary_list():
    assert parse_binary_list("Sure: [1, 0, 1]", 3).tolist() == [True, False, True]
    assert parse_binary_list("no list", 2).tolist() == [False, False]
    assert parse_binary_list("[1,1]", 3).tolist() == [True, True, False]


def test_llm_scorer_fails_clearly_without_an_endpoint():
    with pytest.raises(ScorerUnavailableError, match="base_url"):
        make_scorer("llm", np.zeros(3), render=str, base_url=None)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(ScorerUnavailableError, match="no OpenAI-compatible endpoint reachable"):
        make_scorer("llm", np.zeros(3), render=str, base_url=url, timeout=2)
    with pytest.raises(ValueError, match="unknown scorer"):
        make_scorer("oracle", np.zeros(3))


class _FakeOpenAI(BaseHTTPRequestHandler):
    """/v1/models and /v1/chat/completions: explains 'seven', detects tokens rendered as 7."""

    def log_message(self, *args):
        pass

    def _reply(self, payload):
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply({"data": [{"id": "fake"}]})

    def do_POST(self):
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = prompt["messages"][0]["content"]
        if "numbered snippet" in text:
            lines = [ln for ln in text.splitlines() if ln[:1].isdigit() and ". " in ln]
            answer = json.dumps([1 if ln.endswith("<<7>>") else 0 for ln in lines])
        else:
            answer = "the token seven"
        self._reply({"choices": [{"message": {"content": answer}}]})


def test_llm_scorer_explains_and_detects_through_an_openai_compatible_endpoint():
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        token_ids, acts, explain_mask = _token_latent_data()
        scorer = make_scorer(
            "llm", token_ids, render=lambda i: f"ctx <<{token_ids[i]}>>",
            base_url=f"http://127.0.0.1:{server.server_port}/v1", model="fake", timeout=5,
        )  # fmt: skip
        assert isinstance(scorer, LLMScorer)
        rng = np.random.default_rng(0)
        examples = [detection_examples(acts, 0, explain_mask, rng, 5, 4, 30)]
        result = score_latents(scorer, examples, 5)
    finally:
        server.shutdown()
    assert result["scorer"] == "llm"
    assert result["latents"][0]["explanation"] == "the token seven"
    assert result["accuracy"] == [1.0] * 6
