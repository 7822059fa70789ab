"""The tiny model: a small GPT-2-style LM trained by the pipeline on the corpus."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.models.layout import (
    TINY_CFG_NAME,
    TINY_METRICS_NAME,
    TINY_WEIGHTS_NAME,
    _quiet_tl,
    _staging_dir,
)
from saelab.models.resolve import ModelError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from saelab.config import TinyConfig


#: HookedTransformerConfig fields saved in ``tiny/cfg.json``: enough to rebuild the model.
_TINY_CFG_FIELDS = (
    "model_name",
    "d_model",
    "d_head",
    "n_heads",
    "n_layers",
    "d_mlp",
    "n_ctx",
    "d_vocab",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
    "original_architecture",
    "default_prepend_bos",
)
# Not ``seed``: TL reseeds every RNG when a config has one, a surprise on mere loading.


def tiny_model_config(tiny: TinyConfig, vocab_size: int) -> HookedTransformerConfig:
    """GPT-2-style config of the tiny model: LayerNorm, gelu_new, learned positions."""
    from transformer_lens import HookedTransformerConfig

    if tiny.d_model % tiny.n_heads:
        raise ModelError(
            f"tiny.d_model ({tiny.d_model}) must be divisible by tiny.n_heads ({tiny.n_heads})"
        )
    return HookedTransformerConfig(
        model_name="saelab-tiny",
        d_model=tiny.d_model,
        d_head=tiny.d_model // tiny.n_heads,
        n_heads=tiny.n_heads,
        n_layers=tiny.n_layers,
        d_mlp=tiny.d_mlp,
        n_ctx=tiny.n_ctx,
        d_vocab=vocab_size,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="saelab-tiny",
        default_prepend_bos=True,
        # GPT-2's init scale (TL's default, 0.8/sqrt(d_model), is large for small widths):
        # near-zero initial logits, so the untrained loss starts at ln(vocab).
        initializer_range=0.02,
        seed=tiny.seed,
    )


class TinyLMResult(NamedTuple):
    """What :func:`train_tiny_lm` reports (also saved in ``metrics.json``)."""

    final_val_loss: float
    """Mean next-token cross-entropy (nats) on held-out contexts, over non-special targets."""
    unigram_entropy: float
    """Entropy (nats) of the training split's token frequencies, over non-special tokens:
    the loss of the best model that ignores context. A trained model must beat it."""
    steps: int
    tokens_seen: int
    tokens_per_s: float


def unigram_entropy(tokens: np.ndarray, vocab_size: int, special_mask: np.ndarray | None) -> float:
    """Entropy in nats of the empirical distribution of ``tokens``, special tokens excluded."""
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=vocab_size).astype(np.float64)
    if special_mask is not None:
        counts[special_mask] = 0.0
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


def _special_vocab_mask(special_mask, vocab_size: int) -> np.ndarray | None:
    """Accept a bool mask over the vocabulary, or a list of special token ids."""
    if special_mask is None:
        return None
    mask = np.asarray(special_mask)
    if mask.dtype == bool:
        if mask.shape != (vocab_size,):
            raise ValueError(f"special_mask must have shape ({vocab_size},), got {mask.shape}")
        return mask
    ids_mask = np.zeros(vocab_size, dtype=bool)
    ids_mask[mask.astype(np.int64).ravel()] = True
    return ids_mask


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only; biases and LayerNorm gains are not regularised."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def evaluate_loss(
    model: HookedTransformer,
    tokens: torch.Tensor,
    special_vocab: torch.Tensor | None = None,
    batch_size: int = 32,
) -> float:
    """Mean next-token cross-entropy (nats) on ``tokens`` [n, ctx], skipping special targets."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        per_token = model(batch, return_type="loss", loss_per_token=True)  # [b, ctx-1]
        keep = torch.ones_like(per_token, dtype=torch.bool)
        if special_vocab is not None:
            keep = ~special_vocab[batch[:, 1:]]
        total += float(per_token[keep].sum())
        count += int(keep.sum())
    model.train(was_training)
    return total / max(1, count)


def _save_tiny(model: HookedTransformer, out_dir: Path, metrics: dict[str, Any]) -> None:
    """Write cfg.json, weights and metrics into a staging dir, then rename it to ``out_dir``."""
    from safetensors.torch import save_file

    cfg_dict = {name: getattr(model.cfg, name) for name in _TINY_CFG_FIELDS}
    # Parameters only: TL's buffers (causal mask, IGNORE) are rebuilt by the constructor.
    weights = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()}
    with _staging_dir(out_dir) as staging:
        (staging / TINY_CFG_NAME).write_text(json.dumps(cfg_dict, indent=2) + "\n")
        save_file(weights, str(staging / TINY_WEIGHTS_NAME))
        (staging / TINY_METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)


def _deterministic(steps: Iterable[int]) -> Iterator[int]:
    """``steps``, with torch's deterministic kernels while they run: with two or more threads
    the CPU backward pass otherwise sums in a varying order (two runs drifted by ~1e-6)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield from steps
    finally:
        torch.use_deterministic_algorithms(previous)


def train_tiny_lm(
    tokens: np.ndarray,
    tiny: TinyConfig,
    out_dir: str | Path,
    vocab_size: int,
    special_mask: np.ndarray | None = None,
    device: str = "cpu",
) -> TinyLMResult:
    """Train the tiny GPT-2-style LM on ``tokens`` [n_contexts, ctx] and save it to ``out_dir``.

    AdamW, short linear warmup then cosine decay, gradient clipping at 1.0, the last
    ``tiny.val_fraction`` of contexts held out. Deterministic for ``tiny.seed`` on CPU.
    ``special_mask`` marks special tokens (bool mask over the vocabulary, or their ids); they
    are left out of the unigram entropy and of the validation loss.
    ``out_dir`` (normally ``model_dir/tiny``) receives cfg.json, model.safetensors and
    metrics.json, all at once.
    """
    from transformer_lens import HookedTransformer

    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [n_contexts, ctx >= 2], got shape {tokens.shape}")
    n_contexts, ctx = tokens.shape
    if ctx > tiny.n_ctx:
        raise ValueError(f"contexts of {ctx} tokens exceed tiny.n_ctx = {tiny.n_ctx}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}), got {tokens.min()}..{tokens.max()}"
        )
    n_val = max(1, round(n_contexts * tiny.val_fraction))
    if n_contexts - n_val < 1:
        raise ValueError(f"{n_contexts} contexts are too few to hold out {n_val} for validation")
    vocab_mask = _special_vocab_mask(special_mask, vocab_size)

    all_tokens = torch.from_numpy(tokens.astype(np.int64)).to(device)
    train_tokens, val_tokens = all_tokens[:-n_val], all_tokens[-n_val:]
    entropy = unigram_entropy(train_tokens.cpu().numpy(), vocab_size, vocab_mask)
    special_vocab = None if vocab_mask is None else torch.from_numpy(vocab_mask).to(device)

    torch.manual_seed(tiny.seed)
    with _quiet_tl():
        model = HookedTransformer(tiny_model_config(tiny, vocab_size), move_to_device=False)
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        _param_groups(model, weight_decay=0.1), lr=tiny.lr, betas=(0.9, 0.95)
    )
    tokens_per_step = tiny.batch_size * ctx
    total_steps = max(1, math.ceil(tiny.train_tokens / tokens_per_step))
    warmup = max(1, min(100, total_steps // 10))
    eval_every = max(1, total_steps // 10)
    generator = torch.Generator().manual_seed(tiny.seed)  # batch order, independent of torch RNG

    def batches() -> Iterator[torch.Tensor]:
        while True:  # epochs over the training contexts, reshuffled each time
            order = torch.randperm(len(train_tokens), generator=generator).to(device)
            for start in range(0, len(order) - tiny.batch_size + 1, tiny.batch_size):
                yield train_tokens[order[start : start + tiny.batch_size]]
            if len(order) < tiny.batch_size:  # fewer contexts than a batch: use them all
                yield train_tokens[order]

    initial_val = evaluate_loss(model, val_tokens, special_vocab)
    val_curve = [{"step": 0, "tokens_seen": 0, "val_loss": initial_val}]
    train_curve: list[dict[str, float]] = []
    tokens_seen, smoothed = 0, None
    started = time.perf_counter()
    bar = tqdm(range(total_steps), desc="train tiny LM", unit="step")
    batch_iter = batches()
    for step in _deterministic(bar):
        batch = next(batch_iter)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, total_steps, warmup, tiny.lr)
        loss = model(batch, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens_seen += batch.numel()
        loss_value = loss.item()
        smoothed = loss_value if smoothed is None else 0.95 * smoothed + 0.05 * loss_value
        bar.set_postfix(loss=f"{smoothed:.3f}", refresh=False)
        if (step + 1) % eval_every == 0 or step + 1 == total_steps:
            train_curve.append({"step": step + 1, "train_loss": smoothed})
            val_curve.append(
                {
                    "step": step + 1,
                    "tokens_seen": tokens_seen,
                    "val_loss": evaluate_loss(model, val_tokens, special_vocab),
                }
            )
    bar.close()
    elapsed = time.perf_counter() - started
    result = TinyLMResult(
        final_val_loss=val_curve[-1]["val_loss"],
        unigram_entropy=entropy,
        steps=total_steps,
        tokens_seen=tokens_seen,
        tokens_per_s=tokens_seen / max(elapsed, 1e-9),
    )
    metrics = {
        **result._asdict(),
        "initial_val_loss": initial_val,
        "log_vocab_size": math.log(vocab_size),
        "val_curve": val_curve,
        "train_curve": train_curve,
        "n_train_contexts": len(train_tokens),
        "n_val_contexts": n_val,
        "context_len": ctx,
        "vocab_size": vocab_size,
        "warmup_steps": warmup,
        "tiny": asdict(tiny),
    }
    _save_tiny(model, Path(out_dir), metrics)
    return result
