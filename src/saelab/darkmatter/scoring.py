"""Interpretability of latents by detection (methods.md §5.8; Fig 8), with two named scorers.

The original ran EleutherAI's ``sae-auto-interp``: an LLM explains each latent from its top
activating examples, then, given the explanation, predicts which of a mix of examples make the
latent fire (``RecallScorer``). Per latent it records, for activating examples drawn from each
activation quantile and for random non-activating examples, how many were predicted active.

Examples here are tokens of a scoring set (the analysis window), split by context into an
*explanation* half and a *detection* half so that no detection example was seen when
explaining. Per latent: the explanation examples are its strongest activations in the first
half; detection uses ``examples_per_quantile`` activating tokens from each of ``n_quantiles``
equal-count activation bins of the second half (Q1 = the strongest) and ``n_negatives`` tokens
where it does not fire.

Scorers, by name (:data:`SCORERS`):

* ``token_set`` (offline, the default): the explanation is the set of the latent's most frequent
  token ids among its top explanation examples; detection predicts "fires" iff the example's
  token is in that set.
* ``llm``: any OpenAI-compatible chat endpoint (e.g. a local vLLM server, as the original).
  It explains from the top examples shown in context (the token marked ``<<like this>>``) and
  detects from numbered examples, answering a JSON list of 0/1. With no endpoint reachable it
  fails at once with :class:`ScorerUnavailableError`.

Accuracy per bin: for Q1..Qn the fraction predicted active; for "Not" the fraction predicted
inactive; error bars 1.96 √(p (1 − p) / n), as ``compare_dictionaries.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from saelab.cache.reader import split_rows

SCORERS = ("token_set", "llm")


class ScorerUnavailableError(RuntimeError):
    """The chosen scorer cannot run here (e.g. no LLM endpoint reachable), with what to do."""


class LatentExamples(NamedTuple):
    latent: int
    explain: np.ndarray
    """Token indices of the strongest activations in the explanation half, strongest first."""
    quantiles: list[np.ndarray]
    """Detection-half activating token indices per quantile bin (Q1 = strongest first)."""
    negatives: np.ndarray
    """Detection-half token indices where the latent does not fire."""


def detection_examples(
    acts: np.ndarray,
    latent: int,
    explain_mask: np.ndarray,
    rng: np.random.Generator,
    n_quantiles: int = 10,
    per_quantile: int = 5,
    n_negatives: int = 50,
    n_explain: int = 20,
) -> LatentExamples:
    """Explanation and detection examples of one latent from activations ``acts`` [N, width]."""
    column = acts[:, latent]
    explain_idx = np.nonzero(explain_mask & (column > 0))[0]
    explain_idx = explain_idx[np.argsort(-column[explain_idx], kind="stable")][:n_explain]
    detect = ~explain_mask
    active = np.nonzero(detect & (column > 0))[0]
    active = active[np.argsort(-column[active], kind="stable")]
    bins = [b for b in np.array_split(active, n_quantiles)]
    quantiles = [
        np.sort(rng.choice(b, size=min(per_quantile, len(b)), replace=False)) if len(b) else b
        for b in bins
    ]
    inactive = np.nonzero(detect & (column == 0))[0]
    negatives = np.sort(rng.choice(inactive, size=min(n_negatives, len(inactive)), replace=False))
    return LatentExamples(latent, explain_idx, quantiles, negatives)


def choose_latents(
    acts: np.ndarray, explain_mask: np.ndarray, n_latents: int, min_activations: int, seed: int
) -> np.ndarray:
    """A seeded random choice of ``n_latents`` latents that fire at least ``min_activations``
    times in each half of the scoring set (fewer if not enough qualify), sorted."""
    fires = acts > 0
    enough = (fires[explain_mask].sum(0) >= min_activations) & (
        fires[~explain_mask].sum(0) >= min_activations
    )
    candidates = np.nonzero(enough)[0]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=min(n_latents, len(candidates)), replace=False)
    return np.sort(chosen)


def explanation_mask(rows: np.ndarray, context_len: int) -> np.ndarray:
    """True for tokens of the first half of the contexts (in order of first appearance): the
    explanation half; the rest is the detection half. Splitting by context keeps a detection
    example from sharing a context with an explanation example."""
    contexts = split_rows(rows, context_len)[0]
    order = list(dict.fromkeys(contexts.tolist()))
    return np.isin(contexts, order[: len(order) // 2])


def score_activations(
    scorer,
    acts: np.ndarray,
    explain_mask: np.ndarray,
    *,
    n_latents: int,
    min_activations: int,
    n_quantiles: int,
    examples_per_quantile: int,
    n_negatives: int,
    seed: int,
) -> dict[str, Any]:
    """:func:`score_latents` of a seeded choice of latents of one activation table [N, width]."""
    latents = choose_latents(acts, explain_mask, n_latents, min_activations, seed)
    rng = np.random.default_rng(seed)
    examples = [
        detection_examples(
            acts, int(latent), explain_mask, rng, n_quantiles, examples_per_quantile, n_negatives
        )
        for latent in latents
    ]
    return score_latents(scorer, examples, n_quantiles)


# ---------------------------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------------------------


class TokenSetScorer:
    """Offline: explanation = the latent's most frequent top tokens; detection = membership."""

    name = "token_set"

    def __init__(self, token_ids: np.ndarray, explanation_tokens: int = 5, **_: Any):
        self.token_ids = np.asarray(token_ids)
        self.explanation_tokens = explanation_tokens

    def explain(self, examples: LatentExamples) -> Any:
        tokens = self.token_ids[examples.explain]
        counts = Counter(tokens.tolist())
        # most frequent first; ties by first appearance (= the stronger activation)
        return [tok for tok, _ in counts.most_common(self.explanation_tokens)]

    def detect(self, explanation: Any, indices: np.ndarray) -> np.ndarray:
        return np.isin(self.token_ids[indices], np.asarray(explanation, dtype=np.int64))

    def describe(self, explanation: Any) -> str:
        return " ".join(str(t) for t in explanation)


class LLMScorer:
    """Explain, then detect, with an OpenAI-compatible ``/chat/completions`` endpoint."""

    name = "llm"

    def __init__(
        self,
        render: Callable[[int], str],
        base_url: str | None,
        model: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60,
        **_: Any,
    ):
        if not base_url:
            raise ScorerUnavailableError(
                "scorer 'llm' needs an OpenAI-compatible endpoint: set "
                "darkmatter.train_on_error.llm.base_url (e.g. http://localhost:8000/v1 of a vLLM "
                "server), or use scorer: token_set (offline)"
            )
        self.render = render
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = os.environ.get(api_key_env, "")
        self.timeout = timeout
        self.check_reachable()

    def _request(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base_url + path, data=data)
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read().decode())

    def check_reachable(self) -> None:
        try:
            self._request("/models")
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise ScorerUnavailableError(
                f"scorer 'llm': no OpenAI-compatible endpoint reachable at {self.base_url} "
                f"({reason}). Start one (e.g. `vllm serve <model>`) and set "
                "darkmatter.train_on_error.llm.base_url, or use scorer: token_set (offline)"
            ) from None

    def _chat(self, prompt: str, max_tokens: int) -> str:
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        reply = self._request("/chat/completions", payload)
        return reply["choices"][0]["message"]["content"]

    def explain(self, examples: LatentExamples) -> Any:
        shown = "\n".join(f"- {self.render(int(i))}" for i in examples.explain)
        prompt = (
            "These text snippets are where one feature of a language model is most active; the "
            f"token where it fires is marked <<like this>>.\n{shown}\n"
            "In one short phrase, what does the feature detect? Answer with the phrase only."
        )
        return self._chat(prompt, 50).strip()

    def detect(self, explanation: Any, indices: np.ndarray) -> np.ndarray:
        shown = "\n".join(f"{n + 1}. {self.render(int(i))}" for n, i in enumerate(indices))
        prompt = (
            f"A language-model feature detects: {explanation}\nFor each numbered snippet, "
            "does the feature fire on the marked <<token>>?\n"
            f"{shown}\nAnswer with a JSON list of {len(indices)} numbers, 1 = fires, 0 = not."
        )
        return parse_binary_list(self._chat(prompt, 8 + 3 * len(indices)), len(indices))

    def describe(self, explanation: Any) -> str:
        return str(explanation)


def parse_binary_list(text: str, n: int) -> np.ndarray:
    """The first ``[..]`` list of 0/1 in an LLM reply, as bools; missing answers count as 0."""
    match = re.search(r"\[([^\]]*)\]", text)
    values = re.findall(r"[01]", match.group(1)) if match else []
    out = np.zeros(n, dtype=bool)
    out[: min(n, len(values))] = [v == "1" for v in values[:n]]
    return out


def make_scorer(
    name: str,
    token_ids: np.ndarray,
    render: Callable[[int], str] | None = None,
    **options: Any,
):
    """The scorer called ``name`` (one of :data:`SCORERS`); ``llm`` needs ``render`` (token
    index -> the snippet shown to the model)."""
    if name == "token_set":
        return TokenSetScorer(token_ids, **options)
    if name == "llm":
        if render is None:
            raise ValueError("scorer 'llm' needs render (token index -> snippet text), got None")
        return LLMScorer(render, **options)
    raise ValueError(f"unknown scorer {name!r}; use one of {SCORERS}")


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def bin_labels(n_quantiles: int) -> list[str]:
    return ["Not", *(f"Q{q + 1}" for q in range(n_quantiles))]


def score_latents(scorer, examples: Sequence[LatentExamples], n_quantiles: int) -> dict[str, Any]:
    """Detection counts per latent and summed per bin ("Not", Q1..Qn)."""
    labels = bin_labels(n_quantiles)
    correct = np.zeros(len(labels), dtype=np.int64)
    total = np.zeros(len(labels), dtype=np.int64)
    per_latent = []
    for ex in examples:
        explanation = scorer.explain(ex)
        groups = [ex.negatives, *ex.quantiles]
        everything = np.concatenate(groups)
        predicted = scorer.detect(explanation, everything) if len(everything) else np.zeros(0)
        counts = []
        offset = 0
        for b, group in enumerate(groups):
            said = np.asarray(predicted[offset : offset + len(group)], dtype=bool)
            offset += len(group)
            right = int((~said).sum()) if b == 0 else int(said.sum())
            correct[b] += right
            total[b] += len(group)
            counts.append([right, len(group)])
        per_latent.append(
            {"latent": ex.latent, "explanation": scorer.describe(explanation), "counts": counts}
        )
    accuracy = [c / t if t else float("nan") for c, t in zip(correct, total, strict=True)]
    return {
        "scorer": scorer.name,
        "bins": labels,
        "correct": correct.tolist(),
        "total": total.tolist(),
        "accuracy": accuracy,
        "ci95": [
            1.96 * math.sqrt(p * (1 - p) / t) if t else float("nan")
            for p, t in zip(accuracy, total, strict=True)
        ],
        "n_latents": len(per_latent),
        "latents": per_latent,
    }
