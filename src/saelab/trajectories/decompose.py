"""Per-source-token decomposition of one layer's attention output (methods §6.2).

For the query at position ``q`` (the last token of the prompt prefix of length ``q + 1``), the
attention output is a sum over source tokens ``s <= q`` of

    c_s = sum_h A_h[q, s] * v_h[s] @ W_O[h]        (+ b_O / (q + 1), see below)

where ``v`` already holds the value bias ``b_V`` (TransformerLens adds it in ``hook_v``), so the
GPT-2 value bias reaches each source token in proportion to its attention weight, and the output
bias ``b_O`` is split equally over the ``q + 1`` source tokens (as the original's GPT-2 code does;
split over keys x heads is the same sum). Grouped-query KV heads are expanded to every query head
(repeat-interleave, as the model does).

The "evolution" of query ``q`` is the list of residual vectors

    step 0:     resid_pre[q]
    step j + 1: resid_pre[q] + Post(S_j),   S_j = c_0 + ... + c_j,   j = 0..q

where ``Post`` is the block's post-attention norm where it has one (Gemma's ``ln1_post`` RMSNorm,
applied to each prefix sum separately, exact only for the full sum) and the identity otherwise.
The last step must equal the model's own ``hook_resid_mid``: :func:`check_reproduces_resid_mid`
fails loudly when it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

#: TransformerLens hooks one layer's decomposition reads.
LAYER_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "attn.hook_v",
    "attn.hook_pattern",
)


class DecompositionError(RuntimeError):
    """The per-token sum does not reproduce ``hook_resid_mid``, or the model cannot be decomposed."""


class LayerActivations(NamedTuple):
    """One prompt's activations at one layer (batch dimension removed)."""

    resid_pre: Tensor
    """[pos, d_model]"""
    resid_mid: Tensor
    """[pos, d_model], the model's own hook: the reference of the self-check."""
    resid_post: Tensor
    """[pos, d_model], for the logit lens."""
    values: Tensor
    """``attn.hook_v`` [pos, n_kv_heads, d_head], value bias included."""
    pattern: Tensor
    """``attn.hook_pattern`` [n_heads, query_pos, key_pos]."""


class LayerWeights(NamedTuple):
    """What the decomposition needs of one block."""

    W_O: Tensor
    """[n_heads, d_head, d_model]"""
    b_O: Tensor
    """[d_model]"""
    post_norm: Callable[[Tensor], Tensor] | None
    """The post-attention norm (Gemma's ``ln1_post``; OLMo-2's post-norm ``ln1``), or None."""


class Evolution(NamedTuple):
    """The SAE inputs of one query position at one layer, and the self-check's error."""

    steps: Tensor
    """[q + 2, d_model]: resid_pre, then resid_pre + Post(S_j) for j = 0..q."""
    relative_error: float
    """||steps[-1] - resid_mid[q]|| / ||resid_mid[q]||."""


def check_decomposable(model: HookedTransformer) -> None:
    """Refuse architectures whose attention output is not added to a ``resid_mid``."""
    cfg = model.cfg
    if cfg.attn_only or cfg.parallel_attn_mlp:
        raise DecompositionError(
            f"{cfg.model_name}: attention and MLP {'run in parallel' if cfg.parallel_attn_mlp else 'are not both there'}"
            ", so there is no hook_resid_mid to decompose; use a sequential model (GPT-2, Gemma, ...)"
        )
    if cfg.positional_embedding_type == "shortformer":
        raise DecompositionError(f"{cfg.model_name}: shortformer attention is not supported")


def layer_weights(model: HookedTransformer, layer: int) -> LayerWeights:
    """W_O, b_O and the post-attention norm of block ``layer``."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    block = model.blocks[layer]
    post_norm = None
    if model.cfg.use_normalization_before_and_after:
        post_norm = block.ln1_post
    elif model.cfg.original_architecture in POST_NORM_ARCHITECTURES:
        post_norm = block.ln1
    return LayerWeights(block.attn.W_O.detach(), block.attn.b_O.detach(), post_norm)


def layer_hook_names(layer: int) -> list[str]:
    return [f"blocks.{layer}.{site}" for site in LAYER_HOOKS]


def layer_activations(cache, layer: int) -> LayerActivations:
    """Pick one layer's activations out of a TransformerLens ``ActivationCache`` (batch of 1)."""
    names = layer_hook_names(layer)
    missing = [name for name in names if name not in cache]
    if missing:
        raise KeyError(f"the activation cache lacks {missing}; run the model with these hooks")
    return LayerActivations(*(cache[name][0].detach() for name in names))


@torch.no_grad()
def source_contributions(acts: LayerActivations, weights: LayerWeights) -> Tensor:
    """c[q, s] for every query q and source s (zero for s > q): [pos, pos, d_model].

    Grouped-query values are repeat-interleaved to every query head; b_O is not included.
    """
    n_heads = acts.pattern.shape[0]
    values = acts.values
    n_kv = values.shape[1]
    if n_heads % n_kv:
        raise DecompositionError(f"{n_heads} query heads cannot share {n_kv} KV heads evenly")
    if n_kv != n_heads:
        values = torch.repeat_interleave(values, n_heads // n_kv, dim=1)
    per_head_out = torch.einsum("shd,hdm->shm", values, weights.W_O)  # [src, head, d_model]
    return torch.einsum("hqs,shm->qsm", acts.pattern, per_head_out)


@torch.no_grad()
def query_evolution(
    acts: LayerActivations, weights: LayerWeights, contributions: Tensor, query: int
) -> Evolution:
    """The SAE inputs of query ``query`` (see the module docstring) and its self-check error."""
    if not 0 <= query < acts.resid_pre.shape[0]:
        raise IndexError(f"query {query} outside the prompt of {acts.resid_pre.shape[0]} tokens")
    n_sources = query + 1
    prefix_sums = contributions[query, :n_sources].cumsum(dim=0)  # S_0 .. S_q
    # b_O split equally over the source tokens: S_j gets (j + 1) / (q + 1) of it.
    share = torch.arange(1, n_sources + 1, dtype=prefix_sums.dtype, device=prefix_sums.device)
    prefix_sums = prefix_sums + (share / n_sources)[:, None] * weights.b_O
    if weights.post_norm is not None:
        prefix_sums = weights.post_norm(prefix_sums)
    resid_pre = acts.resid_pre[query]
    steps = torch.cat([resid_pre[None], resid_pre + prefix_sums], dim=0)
    reference = acts.resid_mid[query]
    error = float((steps[-1] - reference).norm() / reference.norm().clamp_min(1e-12))
    return Evolution(steps, error)


def check_reproduces_resid_mid(
    errors: Sequence[tuple[int, int, float]], tolerance: float, what: str = ""
) -> float:
    """Raise :class:`DecompositionError` if any (layer, length, relative error) exceeds
    ``tolerance``; return the largest error."""
    worst = max(errors, key=lambda item: item[2], default=(None, None, 0.0))
    if worst[2] > tolerance or worst[2] != worst[2]:  # NaN fails too
        layer, length, error = worst
        raise DecompositionError(
            f"{what}the per-token attention decomposition does not reproduce hook_resid_mid: "
            f"relative error {error:.3g} at layer {layer}, prompt length {length} exceeds the "
            f"tolerance {tolerance:g} (trajectories.check_tolerance). The model's attention "
            "differs from what saelab.trajectories.decompose assumes."
        )
    return worst[2]
