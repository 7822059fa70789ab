"""Running a model part-way: the final logits of residual vectors, passes that start at a layer
with a hook's activation replaced, and the next-token CE of such a spliced pass.

One definition each, shared by CE recovered (:mod:`saelab.ce`), the dark-matter downstream CE
(:mod:`saelab.darkmatter.downstream`) and the logit lens (:mod:`saelab.trajectories.evolution`).
Each follows ``HookedTransformer.forward`` op for op, so a pass that starts at layer L gives the
same numbers as the whole forward.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.hooks import HookError, parse_hook


def hook_layer(name: str) -> int | None:
    """The block of a hook name, or ``None`` for hooks outside the blocks (embeddings, ...)."""
    try:
        return parse_hook(name).layer
    except HookError:
        return None


def flat(act: Tensor) -> Tensor:
    """[B, T, ...] -> [B·T, width] (hook_z's heads flattened as in the cache)."""
    return act.reshape(act.shape[0] * act.shape[1], -1)


def replace_hook(new_flat: Callable[[Tensor], Tensor], mask: Tensor | None = None):
    """A TransformerLens hook that replaces the activation with ``new_flat(act)`` (reshaped to
    the activation's shape and dtype) at the ``mask``ed positions [B, T], or everywhere."""

    def replace(act, hook):
        new = new_flat(act).reshape(act.shape).to(act.dtype)
        if mask is None:
            return new
        return torch.where(mask.view(*mask.shape, *([1] * (act.ndim - 2))), new, act)

    return replace


def final_logits(model, resid: Tensor, *, direct: bool = False) -> Tensor:
    """Logits [N, vocab] of residual vectors ``resid`` [N, d_model] taken as the last block's
    output, as ``forward``: the final norm (if the model has one), the unembedding and (if the
    model has one) the output soft-cap, in the model's dtype.

    ``direct`` multiplies by ``W_U`` and adds ``b_U`` instead of calling ``model.unembed``, whose
    ``F.linear`` copies ``W_U`` to a contiguous transpose on every call: cheaper for a 262k
    vocabulary over many calls, equal to ``forward``'s logits up to the last bits."""
    x = resid[:, None, :]
    if hasattr(model, "ln_final"):  # models without a final norm have none
        x = model.ln_final(x)
    if direct:
        logits = x[:, 0, :] @ model.unembed.W_U + model.unembed.b_U
    else:
        logits = model.unembed(x)[:, 0]
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def resume_layer(model, hook: str) -> int | None:
    """The block to start at when ``hook``'s activation is given: L for ``blocks.L.hook_resid_pre``,
    L + 1 for ``blocks.L.hook_resid_post`` (``n_layers`` after the last block); ``None`` for any
    other hook, whose pass must run from the tokens with the activation replaced."""
    site = parse_hook(hook, model.cfg.n_layers)
    if site.site == "hook_resid_pre":
        return site.layer
    if site.site == "hook_resid_post":
        return site.layer + 1
    return None


def final_resid_with(model, tokens: Tensor, hook: str, act: Tensor) -> Tensor:
    """The last block's output [B, T, d_model] with ``hook``'s activation replaced by ``act``
    [B, T, ...] at every position: from ``act`` itself through the later blocks when ``hook`` is a
    residual stream (:func:`resume_layer`), else from ``tokens`` with the hook replaced."""
    n_layers = model.cfg.n_layers
    start = resume_layer(model, hook)
    if start is None:
        return model.run_with_hooks(
            tokens, stop_at_layer=n_layers, fwd_hooks=[(hook, replace_hook(lambda _: act))]
        )
    if start >= n_layers:
        return act
    return model(act, start_at_layer=start, stop_at_layer=n_layers)


class FromLayer:
    """Forward passes of one batch of ``tokens`` that share the blocks before ``start_layer``.

    With ``start_layer`` L > 0 the residual stream before block L is computed once and every pass
    starts there (``start_at_layer``), with the attention mask and shortformer embedding that
    ``input_to_embed`` made for the whole forward: identical numbers, fewer FLOPs. Every hook
    a pass replaces must then lie in blocks ≥ L.
    """

    def __init__(self, model, tokens: Tensor, start_layer: int):
        self.model, self.tokens, self.start = model, tokens, start_layer
        self.resid = None
        if start_layer > 0:
            embed, _, self.shortformer, self.attention_mask = model.input_to_embed(tokens)
            self.resid = model(
                embed,
                start_at_layer=0,
                stop_at_layer=start_layer,
                shortformer_pos_embed=self.shortformer,
                attention_mask=self.attention_mask,
            )

    def logits(self, fwd_hooks: list) -> Tensor:
        """Logits [B, T, vocab] of a pass with ``fwd_hooks`` (TransformerLens (name, fn) pairs,
        on hooks inside the blocks), unembedded by :func:`final_logits` (``direct``)."""
        n_layers = self.model.cfg.n_layers
        if self.resid is None:
            final = self.model.run_with_hooks(
                self.tokens, stop_at_layer=n_layers, fwd_hooks=fwd_hooks
            )
        else:
            final = self.model.run_with_hooks(
                self.resid,
                start_at_layer=self.start,
                stop_at_layer=n_layers,
                shortformer_pos_embed=self.shortformer,
                attention_mask=self.attention_mask,
                fwd_hooks=fwd_hooks,
            )
        return final_logits(self.model, flat(final), direct=True).reshape(*final.shape[:2], -1)


#: Predictions reduced at a time over the vocabulary: on gemma-3's 262k tokens [16, vocab]
#: temporaries stay in cache, and logsumexp ran 2x faster than over [127, vocab] (CPU, fp32).
PREDICTIONS_PER_CHUNK = 16


def row_logsumexp(logits: Tensor) -> Tensor:
    """logsumexp over the last dimension in float32 ([..., V] -> [...]), computed
    :data:`PREDICTIONS_PER_CHUNK` rows at a time (no copy of a non-contiguous ``logits``)."""
    if logits.dim() > 2:
        return torch.stack([row_logsumexp(part) for part in logits])
    out = logits.new_empty(logits.shape[:-1], dtype=torch.float32)
    for lo in range(0, logits.shape[0], PREDICTIONS_PER_CHUNK):
        out[lo : lo + PREDICTIONS_PER_CHUNK] = torch.logsumexp(
            logits[lo : lo + PREDICTIONS_PER_CHUNK].float(), dim=-1
        )
    return out


@torch.no_grad()
def next_token_ce(logits: Tensor, targets: Tensor, lse: Tensor | None = None) -> Tensor:
    """Cross-entropy of each prediction, logsumexp(logits) − the target's logit, in float32
    (``logits`` [..., V], ``targets`` [...]; ``lse``: the logits' logsumexp when the caller
    already has it). The one CE of every CE number: CE recovered, downstream CE, token loss."""
    if lse is None:
        lse = row_logsumexp(logits)
    return lse - logits.gather(-1, targets[..., None]).squeeze(-1).float()


def masked_ce_sums(
    model, final_resid: Tensor, tokens: Tensor, loss_mask: Tensor, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Per-context summed next-token CE over ``loss_mask`` [B, T − 1] (prediction p → token
    p + 1) from the last block's output [B, T, d_model], and the number of predictions of each
    context (float64 [B] both). Logits (:func:`final_logits`, ``direct``) are made only at the
    masked positions, ``chunk`` at a time: on a 262k vocabulary, 512 rows multiplied by ``W_U``
    itself ran at 87-99 GFLOP/s on 2 CPU cores (128 rows through ``model.unembed``, which copies
    ``W_U`` on every call: 40), with 0.5 GB of fp32 logits."""
    b, p = torch.nonzero(loss_mask, as_tuple=True)
    totals = torch.zeros(loss_mask.shape[0], dtype=torch.float64)
    for lo in range(0, len(b), chunk):
        bb, pp = b[lo : lo + chunk], p[lo : lo + chunk]
        logits = final_logits(model, final_resid[bb, pp], direct=True)  # CE in float32
        losses = next_token_ce(logits, tokens[bb, pp + 1]).double()
        totals.index_add_(0, bb.cpu(), losses.cpu())
    return totals.numpy(), loss_mask.sum(dim=1).double().cpu().numpy()


def token_losses(model, tokens, batch_size: int = 4) -> np.ndarray:
    """Next-token loss of the clean model at each position [n_contexts, ctx] of ``tokens``
    (position p predicts token p + 1, as the dark-matter original's ``model_losses``); the last
    position has none (NaN)."""
    out = np.full(tuple(tokens.shape), np.nan, dtype=np.float32)
    with torch.inference_mode():
        for b in tqdm(range(0, len(tokens), batch_size), desc="token loss", mininterval=1.0):
            batch = tokens[b : b + batch_size]
            logits = FromLayer(model, batch, 0).logits([])[:, :-1]  # CE in float32 (bf16 too)
            loss = next_token_ce(logits, batch[:, 1:])
            out[b : b + len(batch), :-1] = loss.cpu().numpy()
    return out
