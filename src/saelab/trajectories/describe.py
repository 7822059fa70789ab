"""One-line descriptions of latents for the interactive graph's hover.

Offline, from the pipeline's own feature summaries (``saelab.features``: firing rate, the tokens
a latent fires hardest on and one context, from the activation cache). Optionally, online only,
from Neuronpedia's public API; off by default, and an API key is read from the environment
(``NEURONPEDIA_API_KEY``), never from the repository.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saelab.features import FeatureSummary

NEURONPEDIA_URL = "https://www.neuronpedia.org/api/feature/{model}/{source}/{index}"


class DescriptionError(RuntimeError):
    """A description source that cannot answer (no summary for a layer, Neuronpedia offline)."""


def describe_from_summaries(
    wanted: Iterable[tuple[int, int]],
    summaries: Mapping[int, FeatureSummary],
    tokenizer,
    n_tokens: int = 5,
) -> dict[tuple[int, int], str]:
    """``describe_latent`` of every (layer, latent) in ``wanted``, from one
    :class:`saelab.features.FeatureSummary` per layer."""
    from saelab.features import describe_latent

    out = {}
    for layer, latent in sorted(set(wanted)):
        if layer not in summaries:
            raise DescriptionError(
                f"no feature summary for layer {layer}; have layers {sorted(summaries)}"
            )
        out[(layer, latent)] = describe_latent(summaries[layer], latent, tokenizer, n=n_tokens)
    return out


def neuronpedia_description(
    model: str, source: str, index: int, api_key: str | None = None, timeout: float = 10.0
) -> str:
    """The first explanation Neuronpedia holds for one latent (``GET /api/feature/...``).

    ``model`` e.g. ``gemma-2-2b``, ``source`` e.g. ``12-gemmascope-res-65k``. Raises
    :class:`DescriptionError` when Neuronpedia cannot be reached or knows no such feature.
    """
    url = NEURONPEDIA_URL.format(model=model, source=source, index=index)
    headers = {"Accept": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as reply:
            payload = json.loads(reply.read().decode())
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        raise DescriptionError(
            f"Neuronpedia lookup {url} failed ({err}); it needs internet. Set "
            "trajectories.neuronpedia.enabled: false to describe latents offline from the cache."
        ) from err
    explanations = payload.get("explanations") or []
    text = explanations[0].get("description", "") if explanations else ""
    pos = payload.get("pos_str") or []
    if pos:
        text = f"{text} · promotes {', '.join(repr(t) for t in pos[:5])}".strip(" ·")
    return text or "(no Neuronpedia explanation)"


def describe_from_neuronpedia(
    wanted: Iterable[tuple[int, int]], model: str, source_template: str, timeout: float = 10.0
) -> dict[tuple[int, int], str]:
    """Neuronpedia descriptions of every (layer, latent); ``source_template`` holds ``{layer}``."""
    api_key = os.environ.get("NEURONPEDIA_API_KEY") or None
    return {
        (layer, latent): neuronpedia_description(
            model, source_template.format(layer=layer), latent, api_key, timeout
        )
        for layer, latent in sorted(set(wanted))
    }


def node_hover_texts(
    traced,
    summaries: Mapping[int, FeatureSummary],
    tokenizer,
    n_tokens: int = 5,
    neuronpedia: Mapping[str, object] | None = None,
) -> dict[tuple[int, int], str]:
    """HTML hover text of every node (t, L) of a traced graph: the newcomers arriving there
    (in the graph of length t + 1), each with its origin token, final rank and description; the
    top latents of the full sum; and the logit lens of that layer at that token."""
    from saelab.trajectories.evolution import steps_at
    from saelab.trajectories.graph import node_newcomers

    evolution = traced.evolution
    tokens = evolution["metadata"]["tokens"]
    arriving = {node: node_newcomers(traced.edges_by_length, node) for node in traced.graph.nodes}
    wanted = {(node[1], latent) for node, items in arriving.items() for latent, _, _ in items}
    offline = {key for key in wanted if key[0] in summaries}
    descriptions = describe_from_summaries(offline, summaries, tokenizer, n_tokens)
    if neuronpedia and neuronpedia.get("enabled"):
        online = describe_from_neuronpedia(
            wanted, str(neuronpedia["model"]), str(neuronpedia["source"])
        )
        for key, text in online.items():
            descriptions[key] = (
                f"{descriptions[key]} · Neuronpedia: {text}" if key in descriptions else text
            )
    out = {}
    for (t, layer), items in arriving.items():
        lines = []
        for latent, origin, rank in items:
            text = descriptions.get(
                (layer, latent), "no description (no feature summary for this SAE)"
            )
            lines.append(f"#{latent} from T{origin} {tokens[origin]!r}, final rank {rank}: {text}")
        if not lines:
            lines.append("no newcomer arrives here")
        length = t + 1
        if str(length) in evolution["data"] and str(layer) in evolution["data"][str(length)]:
            final = steps_at(evolution, length, layer)[-1][:5]
            lines.append(f"top latents after attention: {final}")
            lens = evolution["logit_lens"].get(str(length), {}).get(str(layer))
            if lens is not None:
                lines.append(f"logit lens: {lens['top_tokens']}")
        out[(t, layer)] = "<br>".join(_html_escape(line) for line in lines)
    return out


def _html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=False)
