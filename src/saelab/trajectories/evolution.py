"""The evolution data (methods §6.2): for every prefix length of a prompt and every layer, the
SAE latents of the last token's residual as the attention output is added source token by
source token, plus a logit lens per layer. Rule ``trajectory_evolution``.

Differences from the original ``sae9.py``, on purpose (README, "trajectories"):

* ranks are kept only for latents that fire (value > 0), sorted by value; the original took the
  top 400 indices, most of them zeros in arbitrary order beyond the SAE's L0;
* results are indexed by prompt length and then layer everywhere (the original's annotations
  indexed the per-length newcomers by layer);
* the last step is the full attention sum, so it equals ``hook_resid_mid`` (checked); the
  original GPT-2 variant stopped one token short.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.models.splice import final_logits
from saelab.trajectories.decompose import (
    check_decomposable,
    check_reproduces_resid_mid,
    layer_activations,
    layer_hook_names,
    layer_weights,
    query_evolution,
    source_contributions,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from saelab.saes import SAE

FORMAT_VERSION = 1

STEP_CONVENTION = (
    "step 0 = resid_pre of the last token; step j+1 = resid_pre + Post(sum of the attention "
    "contributions of source tokens 0..j), Post = the post-attention norm where the model has one; "
    "the last step (j = length-1) equals hook_resid_mid"
)


class FiringLatents(NamedTuple):
    """The latents of one SAE input that fire, by decreasing activation (rank = list position)."""

    indices: list[int]
    values: list[float]


def top_firing(codes: Tensor, top_k: int) -> list[FiringLatents]:
    """For each row of dense codes [n, width], the at most ``top_k`` latents with value > 0,
    largest first (ties by latent index, so the order is deterministic)."""
    codes = codes.detach().float().cpu()
    n_active = (codes > 0).sum(dim=1).clamp(max=top_k).tolist()
    k = max(n_active, default=0)
    if k == 0:
        return [FiringLatents([], []) for _ in n_active]
    # topk, not a full sort of every row: only the candidates at or above each row's k-th value
    # are ordered (stable over ascending indices, so ties go by latent index).
    kth = codes.topk(k, dim=1).values[:, -1:]
    candidates = (codes >= kth) & (codes > 0)
    out = []
    for row, mask, n in zip(codes, candidates, n_active, strict=True):
        index = mask.nonzero().squeeze(1)
        negated, order = torch.sort(-row[index], stable=True)
        values = np.round(-negated[:n].numpy(), 6)
        out.append(FiringLatents(index[order[:n]].tolist(), values.tolist()))
    return out


@torch.no_grad()
def logit_lens(
    model: HookedTransformer, residuals: Tensor, n_top: int = 5, chunk: int = 32
) -> list[dict[str, Any]]:
    """Top next-token predictions from residual vectors [n, d_model] read through the final norm
    and the unembedding: the same as patching the last layer's resid_post with each vector
    (the original's ``analyze_layer_contributions_to_prediction``), at the cost of one
    unembedding per vector instead of a forward pass."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(
            f"the logit lens needs a model with a tokenizer; {model.cfg.model_name} has none"
        )
    results = []
    for start in range(0, len(residuals), chunk):
        # direct: TransformerLens's Unembed makes W_U contiguous on every call, which costs
        # more than the matmul for a 262k vocabulary.
        logits = final_logits(model, residuals[start : start + chunk], direct=True).float()
        probs = torch.softmax(logits, dim=-1)
        top = probs.topk(n_top, dim=-1)
        for ids, values in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            tokens = [tokenizer.decode([i]) for i in ids]
            results.append(
                {
                    "top_tokens": tokens,
                    "top_ids": ids,
                    "top_probs": [round(p, 6) for p in values],
                    "best_token": tokens[0],
                }
            )
    return results


def sae_info(sae: SAE, name: str) -> dict[str, Any]:
    cfg = sae.cfg
    return {
        "name": name,
        "hook_name": cfg.hook_name,
        "arch": cfg.arch,
        "width": cfg.width,
        "k": cfg.k,
        "source": (cfg.extra or {}).get("source", "saelab"),
    }


@torch.no_grad()
def compute_evolution(
    model: HookedTransformer,
    prompt: str,
    saes: Mapping[int, SAE],
    *,
    top_k: int = 400,
    tolerance: float = 1e-4,
    logit_lens_top: int = 5,
    logit_lens_lengths: str = "full",
    sae_names: Mapping[int, str] | None = None,
    prompt_name: str = "prompt",
) -> dict[str, Any]:
    """Evolution data of ``prompt`` (BOS prepended) at every layer of ``saes`` (layer -> SAE).

    Returns the JSON-ready dict ``{metadata, data, logit_lens}``: ``data[length][layer]`` holds
    ``indices`` and ``values`` of the firing latents at every step (length + 1 steps), for prompt
    lengths 2..n (the query is the prefix's last token); ``logit_lens[length][layer]`` the top
    predictions from that layer's resid_post at the same token, for the full prompt only
    (``logit_lens_lengths="full"``; the 262k-token unembedding of gemma-3 makes every length
    cost ~70 GFLOP per prompt) or for every length (``"all"``). Raises
    :class:`~saelab.trajectories.decompose.DecompositionError` if any full sum misses
    ``hook_resid_mid`` by more than ``tolerance`` (relative).
    """
    if logit_lens_lengths not in ("full", "all"):
        raise ValueError(
            f"logit_lens_lengths {logit_lens_lengths!r} is not allowed; use 'full' or 'all'"
        )
    if not saes:
        raise ValueError("no SAEs given: the trajectory analysis needs one SAE per layer")
    check_decomposable(model)
    layers = sorted(saes)
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist; the model has 0..{model.cfg.n_layers - 1}")
    for layer in layers:
        width = saes[layer].cfg.d_in
        if width != model.cfg.d_model:
            raise ValueError(
                f"the SAE of layer {layer} reads {width}-d vectors, the model's residual is "
                f"{model.cfg.d_model}-d"
            )
    tokens = model.to_tokens(prompt, prepend_bos=True)
    n_tokens = tokens.shape[1]
    if n_tokens < 2:
        raise ValueError(f"prompt {prompt_name!r} has no token after BOS")
    names = {name for layer in layers for name in layer_hook_names(layer)}
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda name: name in names, stop_at_layer=max(layers) + 1
    )
    lengths = list(range(2, n_tokens + 1))
    lens_lengths = lengths if logit_lens_lengths == "all" else [n_tokens]
    data: dict[str, dict[str, Any]] = {str(length): {} for length in lengths}
    errors: list[tuple[int, int, float]] = []
    lens_inputs: list[Tensor] = []
    for layer in tqdm(layers, desc=f"evolution {prompt_name}", unit="layer"):
        acts = layer_activations(cache, layer)
        weights = layer_weights(model, layer)
        contributions = source_contributions(acts, weights)
        sae = saes[layer].eval()
        for length in lengths:
            query = length - 1
            evolution = query_evolution(acts, weights, contributions, query)
            errors.append((layer, length, evolution.relative_error))
            codes = sae.encode(evolution.steps.to(sae.W_enc.dtype)).codes.dense()
            firing = top_firing(codes, top_k)
            data[str(length)][str(layer)] = {
                "indices": [f.indices for f in firing],
                "values": [f.values for f in firing],
                "l0": [len(f.indices) for f in firing],
            }
        lens_inputs.append(acts.resid_post[lens_lengths[0] - 1 :])  # the query of each length
    max_error = check_reproduces_resid_mid(errors, tolerance, f"prompt {prompt_name!r}: ")
    # Logit lens of every (layer, length), one unembedding per vector.
    lens = logit_lens(model, torch.cat(lens_inputs), logit_lens_top)
    lens_by_length: dict[str, dict[str, Any]] = {str(length): {} for length in lens_lengths}
    for i, layer in enumerate(layers):
        for j, length in enumerate(lens_lengths):
            lens_by_length[str(length)][str(layer)] = lens[i * len(lens_lengths) + j]
    names_by_layer = dict(sae_names or {})
    metadata = {
        "format_version": FORMAT_VERSION,
        "prompt_name": prompt_name,
        "original_sentence": prompt,
        "tokens": model.to_str_tokens(tokens[0]),
        "token_ids": tokens[0].tolist(),
        "max_prompt_length": n_tokens,
        "lengths": lengths,
        "model": model.cfg.model_name,
        "n_layers": model.cfg.n_layers,
        "layers": layers,
        "saes": {
            str(layer): sae_info(saes[layer], names_by_layer.get(layer, f"layer-{layer}"))
            for layer in layers
        },
        "top_k": top_k,
        "ranks": "only latents with value > 0, by decreasing value",
        "step_convention": STEP_CONVENTION,
        "bias_convention": "b_V through the attention weights; b_O split equally over source tokens",
        # What the decomposition applied (Gemma's ln1_post, or ln1 of post-norm architectures).
        "post_attention_norm": layer_weights(model, layers[0]).post_norm is not None,
        "check_tolerance": tolerance,
        "max_relative_error": max_error,
        "logit_lens": "resid_post of each layer at the last token, through ln_final and W_U",
        "logit_lens_lengths": lens_lengths,
    }
    return {"metadata": metadata, "data": data, "logit_lens": lens_by_length}


def steps_at(evolution: Mapping[str, Any], length: int, layer: int) -> list[list[int]]:
    """The per-step latent index lists of one (length, layer) of an evolution dict."""
    try:
        return evolution["data"][str(length)][str(layer)]["indices"]
    except KeyError:
        raise KeyError(
            f"the evolution data has no length {length} / layer {layer}; lengths "
            f"{evolution['metadata']['lengths']}, layers {evolution['metadata']['layers']}"
        ) from None


def load_evolution(path: str | os.PathLike) -> dict[str, Any]:
    """Read an evolution JSON and check that it is one (format version, required blocks)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no evolution data at {path}; rule trajectory_evolution makes it")
    evolution = json.loads(path.read_text())
    missing = [key for key in ("metadata", "data", "logit_lens") if key not in evolution]
    if missing:
        raise ValueError(f"{path} is not trajectory evolution data: it lacks {missing}")
    version = evolution["metadata"].get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version}, expected {FORMAT_VERSION}")
    return evolution
