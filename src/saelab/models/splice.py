"""Running a model part-way: the final logits of residual vectors, passes that start at a layer
with a hook's activation replaced, and the next-token CE of such a spliced pass.

One definition each, shared by CE recovered (:mod:`saelab.ce`), the dark-matter downstream CE
(:mod:`saelab.darkmatter.downstream`) and the logit lens (:mod:`saelab.trajectories.evolution`).
Each follows ``HookedTransformer.forward`` op for op, so a pass that starts at layer L gives the
same numbers as the whole forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

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

    ``direct`` multiplies by ``W_U`` and adds ``b_U`` instead of calling ``model.unembed``,
    equal to ``forward``'s logits up to the last bits. For losses over the whole vocabulary use
    :func:`unembed_losses`, which never holds [N, vocab] logits."""
    x = _final_norm(model, resid)
    if direct:
        logits = x @ model.unembed.W_U + model.unembed.b_U
    else:
        logits = model.unembed(x[:, None, :])[:, 0]
    return _soft_capped(logits, _soft_cap(model))


def _final_norm(model, resid: Tensor) -> Tensor:
    """``ln_final`` of [N, d_model] rows (models without a final norm return them unchanged)."""
    if not hasattr(model, "ln_final"):
        return resid
    return model.ln_final(resid[:, None, :])[:, 0]


def _soft_cap(model) -> float | None:
    """The model's output-logit soft cap (gemma-2's 30), or None."""
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    return cap if cap > 0 else None


def _soft_capped(logits: Tensor, cap: float | None) -> Tensor:
    """``cap · tanh(logits / cap)`` as ``forward`` applies it (``logits`` unchanged without a cap)."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


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

    def final(self, fwd_hooks: list) -> Tensor:
        """The last block's output [B, T, d_model] of a pass with ``fwd_hooks`` (TransformerLens
        (name, fn) pairs, on hooks inside the blocks); :func:`unembed_losses` of its rows gives
        the pass's next-token losses."""
        n_layers = self.model.cfg.n_layers
        if self.resid is None:
            return self.model.run_with_hooks(
                self.tokens, stop_at_layer=n_layers, fwd_hooks=fwd_hooks
            )
        return self.model.run_with_hooks(
            self.resid,
            start_at_layer=self.start,
            stop_at_layer=n_layers,
            shortformer_pos_embed=self.shortformer,
            attention_mask=self.attention_mask,
            fwd_hooks=fwd_hooks,
        )


#: Logits held at a time by :func:`vocab_losses`: [block, N] pieces of about 2^20 values (4 MiB
#: in float32) stay in cache while their logsumexp, target logit and KL term are taken, instead
#: of [N, vocab] logits written to memory and read back (gemma-3's 262k vocabulary on 2 CPU
#: cores: 1.9x the whole-logits path, ``benchmarks/vocab_losses.py``).
VOCAB_BLOCK_VALUES = 1 << 20


class VocabLosses(NamedTuple):
    """Next-token losses of N predictions over the whole vocabulary (float32)."""

    ce: Tensor
    """[N] logsumexp of the logits − the target's logit."""
    lse: Tensor
    """[N] logsumexp of the logits."""
    kl: Tensor | None
    """[N] KL(reference ‖ these logits' distribution), when a reference was given."""


class ReferenceDistribution(NamedTuple):
    """The next-token distributions of a clean pass, vocabulary-major, for the KL of others."""

    logits: Tensor
    """[vocab, N] float32."""
    probs: Tensor
    """[vocab, N] float32 softmax of ``logits`` over the vocabulary."""
    lse: Tensor
    """[N] logsumexp of ``logits``."""


def vocab_major_unembedding(model) -> Tensor:
    """``W_U`` as a contiguous [vocab, d_model] matrix (its transpose, no copy).

    The first call re-lays the parameter out in place, same values: ``W_U`` becomes the
    transposed view of a vocabulary-major matrix. Then every vocabulary block of
    :func:`vocab_losses` is a contiguous slice, and ``model.unembed``'s
    ``F.linear(x, W_U.T.contiguous())`` stops copying 671 MB (gemma-3) on every call."""
    W_U = model.unembed.W_U
    if not W_U.t().is_contiguous():
        # a normal tensor even when called under inference_mode: the model outlives the call
        with torch.inference_mode(False), torch.no_grad():
            W_U.data = W_U.data.t().contiguous().t()
    return W_U.t()


@torch.no_grad()
def unembed_losses(
    model,
    final_resid: Tensor,
    targets: Tensor,
    *,
    reference: ReferenceDistribution | None = None,
    keep_reference: bool = False,
) -> tuple[VocabLosses, ReferenceDistribution | None]:
    """Next-token losses of rows ``final_resid`` [N, d_model] of the last block's output, with
    targets [N]: the final norm, unembedding, bias and soft cap as ``forward``, reduced by
    :func:`vocab_losses`. The one CE of every CE number: CE recovered, downstream CE, token
    loss."""
    bias = model.unembed.b_U
    return vocab_losses(
        _final_norm(model, final_resid),
        vocab_major_unembedding(model),
        targets,
        bias=bias if bool(bias.any()) else None,
        soft_cap=_soft_cap(model),
        reference=reference,
        keep_reference=keep_reference,
    )


@torch.no_grad()
def vocab_losses(
    x: Tensor,
    W_vocab: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    soft_cap: float | None = None,
    reference: ReferenceDistribution | None = None,
    keep_reference: bool = False,
) -> tuple[VocabLosses, ReferenceDistribution | None]:
    """CE, logsumexp and (with ``reference``) KL(reference ‖ p) of the logits
    ``W_vocab x + bias`` (soft-capped), for ``x`` [N, d] and ``W_vocab`` [vocab, d], made
    :data:`VOCAB_BLOCK_VALUES` at a time and reduced in float32 as they are made (an online
    logsumexp); with ``keep_reference`` also the float32 logits and softmax, vocabulary-major,
    for later passes' KL.

    KL(c ‖ l) per prediction is Σ_v p_v (c_v − l_v) − lse(c) + lse(l), p = softmax(c), summed
    block by block in differences of logits, so that nearly equal distributions do not lose
    their KL to rounding."""
    n, vocab = x.shape[0], W_vocab.shape[0]
    block = max(1, min(vocab, VOCAB_BLOCK_VALUES // max(1, n)))
    made = x.new_empty((block, n))  # the matmul's output, in the model's dtype
    work = torch.empty((block, n), dtype=torch.float32, device=x.device)
    running_max = torch.full((n,), -math.inf, device=x.device)
    sum_exp = torch.zeros(n, device=x.device)
    target_logit = torch.zeros(n, device=x.device)
    kl_sum = torch.zeros(n, device=x.device) if reference is not None else None
    kept = torch.empty((vocab, n), device=x.device) if keep_reference else None
    columns = torch.arange(n, device=x.device)
    x_t = x.t()
    for lo in range(0, vocab, block):
        hi = min(lo + block, vocab)
        logits = made[: hi - lo]
        torch.mm(W_vocab[lo:hi], x_t, out=logits)
        logits = logits.float()
        if bias is not None:
            logits = logits + bias[lo:hi, None].float()
        logits = _soft_capped(logits, soft_cap)
        scratch = work[: hi - lo]
        new_max = torch.maximum(running_max, logits.amax(0))
        sum_exp.mul_(torch.exp(running_max - new_max))
        sum_exp.add_(torch.sub(logits, new_max, out=scratch).exp_().sum(0))
        running_max = new_max
        hit = (targets >= lo) & (targets < hi)
        target_logit[hit] = logits[targets[hit] - lo, columns[hit]]
        if reference is not None and kl_sum is not None:
            torch.sub(reference.logits[lo:hi], logits, out=scratch)
            kl_sum.add_(scratch.mul_(reference.probs[lo:hi]).sum(0))
        if kept is not None:
            kept[lo:hi] = logits
    lse = running_max + sum_exp.log()
    kl = None
    if reference is not None and kl_sum is not None:
        kl = kl_sum - reference.lse + lse
    kept_reference = None
    if kept is not None:
        kept_reference = ReferenceDistribution(kept, torch.exp(kept - lse), lse)
    return VocabLosses(lse - target_logit, lse, kl), kept_reference


def masked_ce_sums(
    model, final_resid: Tensor, tokens: Tensor, loss_mask: Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Per-context summed next-token CE over ``loss_mask`` [B, T − 1] (prediction p → token
    p + 1) from the last block's output [B, T, d_model], and the number of predictions of each
    context (float64 [B] both), by :func:`unembed_losses` at the masked positions only."""
    b, p = torch.nonzero(loss_mask, as_tuple=True)
    totals = torch.zeros(loss_mask.shape[0], dtype=torch.float64)
    losses = unembed_losses(model, final_resid[b, p], tokens[b, p + 1])[0].ce
    totals.index_add_(0, b.cpu(), losses.double().cpu())
    return totals.numpy(), loss_mask.sum(dim=1).double().cpu().numpy()


def token_losses(model, tokens, batch_size: int = 4) -> np.ndarray:
    """Next-token loss of the clean model at each position [n_contexts, ctx] of ``tokens``
    (position p predicts token p + 1, as the dark-matter original's ``model_losses``); the last
    position has none (NaN)."""
    out = np.full(tuple(tokens.shape), np.nan, dtype=np.float32)
    with torch.inference_mode():
        for b in tqdm(range(0, len(tokens), batch_size), desc="token loss", mininterval=1.0):
            batch = tokens[b : b + batch_size]
            final = FromLayer(model, batch, 0).final([])[:, :-1]
            rows = unembed_losses(model, flat(final), batch[:, 1:].reshape(-1))[0].ce
            loss = rows.view(final.shape[:2])
            out[b : b + len(batch), :-1] = loss.cpu().numpy()
    return out
