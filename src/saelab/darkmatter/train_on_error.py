"""Train SAEs on the parts of an SAE's error (methods.md §5.8, Fig 8).

For one SAE (x̂ = SAE(x)) and its linear error map W (x W ≈ x − x̂, the core regression), two
training targets per token:

* ``linear``: the linear prediction of the error, x W (the original's x·(−P), P fitted to
  x̂ − x);
* ``nonlinear``: the nonlinear error, x − x̂ − x W.

A TopK SAE is trained on each (the original: EleutherAI's ``sae`` fork, k 32, 16 × d latents,
loss = FVU of the batch, no aux-k, decoder rows unit-norm, b_dec initialised to the geometric
median of the first batch, lr 2e-4 / √(width / 2^14) with warmup then linear decay, gradient
clip 1). The loop here is saelab's one training loop (:mod:`saelab.training.loop`) with these
options, on tokens of the cache's ``train`` split (the original: RedPajama), with saelab's TopK
SAE: loss, backward, remove the decoder gradient's radial part, clip, Adam, renormalise the
decoder rows. Unlike :func:`saelab.train.train_saes` it minimises ``batch_fvu``, checks the loss
every step (raising FloatingPointError) and seeds no global RNG; its SAE's config keeps
``b_dec_init: zeros`` although b_dec starts at the first batch's geometric median.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.schema import section_defaults

#: The two training targets, as the original names its runs.
ERROR_TARGETS = ("linear", "nonlinear")


@torch.no_grad()
def training_targets(
    sae, cache_path, W_vec: Tensor, n_tokens: int, seed: int = 0, batch_size: int = 4096
) -> dict[str, Tensor]:
    """Both targets on ``n_tokens`` shuffled tokens of the cache's train split at the SAE's
    hook (special tokens excluded; fewer if the split is smaller)."""
    from saelab.cache import ActivationReader
    from saelab.darkmatter.regression import ErrorParts

    reader = ActivationReader(
        cache_path, sae.cfg.hook_name, batch_size, split="train", seed=seed, drop_last=False
    )
    sae.eval()
    parts: dict[str, list[Tensor]] = {name: [] for name in ERROR_TARGETS}
    total = 0
    for x in reader.batches():
        x = x[: n_tokens - total].to(sae.device)
        split = ErrorParts.of(x, sae.reconstruct(x), W_vec.to(x.device))
        for name in ERROR_TARGETS:
            parts[name].append(getattr(split, name).cpu())
        total += len(x)
        if total >= n_tokens:
            break
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


#: Defaults of ErrorSAEConfig: the schema's ``darkmatter.train_on_error`` section.
_DEFAULTS = section_defaults("darkmatter", "train_on_error")


class ErrorSAEConfig(NamedTuple):
    width: int
    k: int = _DEFAULTS["k"]
    n_tokens: int = _DEFAULTS["n_tokens"]
    batch_size: int = _DEFAULTS["batch_size"]
    lr: float | None = _DEFAULTS["lr"]
    """``None``: 2e-4 / √(width / 2^14)."""
    seed: int = _DEFAULTS["seed"]
    warmup_fraction: float = 0.1
    """Warmup over this fraction of the steps (the original: 1000 steps), then linear decay."""

    @classmethod
    def from_section(cls, train_on_error: Mapping[str, Any], d_in: int) -> ErrorSAEConfig:
        """From the ``darkmatter.train_on_error`` config section (its keys of the same names;
        ``width`` null = 4 x ``d_in``)."""
        opts = train_on_error
        return cls(
            width=opts["width"] or 4 * d_in, k=opts["k"], n_tokens=opts["n_tokens"],
            batch_size=opts["batch_size"], lr=opts["lr"], seed=opts["seed"],
        )  # fmt: skip


def train_error_sae(targets: Tensor, cfg: ErrorSAEConfig, hook_name: str = "", progress=True):
    """A TopK SAE trained on ``targets`` [N, d] (epochs repeat as needed) by the one training
    loop (:mod:`saelab.training.loop`) with loss ``batch_fvu``, warmup then linear decay, clip
    1, b_dec from the first batch's geometric median; returns (sae in eval mode, list of
    per-step FVUs)."""
    from saelab.saes import SAEConfig, build_sae
    from saelab.training.loop import LoopOptions, SAEStepper, run_steps

    if targets.ndim != 2 or len(targets) < cfg.batch_size:
        raise ValueError(
            f"need at least one batch ({cfg.batch_size}) of [N, d] targets, got {tuple(targets.shape)}"
        )
    d = targets.shape[1]
    sae = build_sae(
        SAEConfig(
            arch="topk", d_in=d, width=cfg.width, k=cfg.k, hook_name=hook_name,
            aux_penalty=0.0, seed=cfg.seed, extra={"trained_on": "error part"},
        )
    )  # fmt: skip
    sae.train()
    steps = max(1, cfg.n_tokens // cfg.batch_size)
    warmup = int(steps * cfg.warmup_fraction)
    opts = LoopOptions(
        steps=steps, lr=cfg.lr, warmup_steps=warmup,
        decay_start=warmup / steps if warmup < steps else None, clip_grad_norm=1.0,
        loss="batch_fvu", b_dec_init="geometric_median",
    )  # fmt: skip
    stepper = SAEStepper(sae, opts)
    fvus: list[float] = []

    def after_step(step: int) -> None:
        loss = stepper.loss.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"training on the error diverged at step {step}")
        fvus.append(loss)

    with tqdm(total=steps, desc="train on error", disable=not progress, mininterval=1.0) as bar:
        run_steps(
            [stepper], _shuffled(targets, cfg.batch_size, cfg.seed), steps,
            bar=bar, after_step=after_step,
        )  # fmt: skip
    return sae.eval(), fvus


def _shuffled(targets: Tensor, batch_size: int, seed: int) -> Iterator[dict[str, Tensor]]:
    """Batches of ``targets`` in a seeded random order, reshuffled when an epoch runs out."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(targets), generator=generator)
    cursor = 0
    while True:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(targets), generator=generator), 0
        yield {"x": targets[order[cursor : cursor + batch_size]]}
        cursor += batch_size


@torch.no_grad()
def dense_activations(sae, x: Tensor, batch_size: int = 4096) -> np.ndarray:
    """Latent activations [N, width] float32 of ``x`` under ``sae`` (0 where inactive)."""
    sae.eval()
    out = np.zeros((len(x), sae.cfg.width), dtype=np.float32)
    for lo in range(0, len(x), batch_size):
        codes = sae.encode(x[lo : lo + batch_size].to(sae.device)).codes
        out[lo : lo + codes.n_rows] = codes.dense().float().cpu().numpy()
    return out
