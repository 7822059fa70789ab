"""The toy's trainer: an SAE on fresh toy tokens through the one training loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from saelab.saes import SAE, SAEConfig, build_sae
from saelab.toy.hierarchy import HierarchyConfig, ToyHierarchy
from saelab.training.loop import LoopOptions, SAEStepper, run_steps


def default_group_sizes(toy: ToyHierarchy | HierarchyConfig, width: int) -> list[int]:
    """Matryoshka groups for the toy: the first has room for the parents only."""
    n_parents = (toy.cfg if isinstance(toy, ToyHierarchy) else toy).n_parents
    if width <= n_parents:
        raise ValueError(f"width {width} leaves no latents after the {n_parents} parents")
    return [n_parents, width - n_parents]


def train_toy_sae(
    arch: str,
    toy: ToyHierarchy,
    width: int,
    k: int = 2,
    steps: int = 800,
    batch_size: int = 1024,
    lr: float = 3e-3,
    seed: int = 0,
    loss: str = "official",
    group_sizes: Sequence[int] | None = None,
    k_start: int | None = None,
    anneal_fraction: float = 0.4,
    threads: int | None = 1,
    **sae_kwargs: Any,
) -> SAE:
    """Train an SAE of ``arch`` on fresh toy tokens; returns it in eval mode.

    The one training loop (:mod:`saelab.training.loop`) with torch's default (unfused) Adam
    (default betas) at constant ``lr``, no gradient clipping, ``steps`` batches of
    ``batch_size`` new tokens each, drawn from a stream seeded by ``seed`` (which also seeds
    the SAE's initialisation). Each step: backward, drop the decoder-row-parallel gradient,
    Adam step, renormalise the decoder rows.

    k-annealing (as dictionary_learning's trainers offer): ``k`` starts at ``k_start`` and falls
    linearly to ``k`` over the first ``anneal_fraction`` of the steps, then stays there, so the
    BatchTopK threshold has the remaining steps to settle. ``k_start=None`` means
    ``min(width, 6 k)``; ``k_start=k`` turns annealing off. Without it, a Matryoshka SAE's small
    first group often ends with two latents sharing one parent (each with one child folded in)
    and another parent left to absorbing latents in the later group; starting dense lets every
    first-group latent receive gradient and find its parent before the L0 budget tightens.

    ``loss`` defaults to ``official`` (dictionary_learning's, the code the Matryoshka paper
    names): with ``bussmann`` the bias-only term of the Matryoshka loss pulls ``b_dec`` towards
    the data mean (a share of every parent direction), and on some seeds one parent then stays
    absorbed. ``loss`` picks the loss variant only: this loop has no learning-rate warm-up and
    starts ``b_dec`` at zero (``b_dec_init="geometric_median"`` is refused). Matryoshka SAEs
    default to :func:`default_group_sizes`. ``sae_kwargs`` go to
    :class:`~saelab.saes.SAEConfig` (e.g. ``dead_after_tokens``, ``aux_penalty``).

    ``threads``: torch intra-op threads while training (restored afterwards; ``None`` leaves
    the setting alone). The toy's tensors are tiny, so more threads only add synchronisation;
    on a busy 2-core machine 2 threads ran some 30x slower than 1.
    """
    if arch == "matryoshka" and group_sizes is None:
        group_sizes = default_group_sizes(toy, width)
    cfg = SAEConfig(
        arch=arch,
        d_in=toy.cfg.d_model,
        width=width,
        k=k,
        loss=loss,
        group_sizes=list(group_sizes) if group_sizes is not None else None,
        seed=seed,
        **sae_kwargs,
    )
    if cfg.b_dec_init != "zeros":
        raise ValueError("the toy trainer starts b_dec at zero; b_dec_init must be 'zeros'")
    if not 0.0 <= anneal_fraction < 1.0:
        raise ValueError(f"anneal_fraction = {anneal_fraction} must be in [0, 1)")
    k_start = min(width, 6 * k) if k_start is None else min(max(int(k_start), k), width)
    opts = LoopOptions(
        steps=steps, lr=lr, fused_adam=False, clip_grad_norm=None, first_batch_init=False,
        k_anneal_steps=int(anneal_fraction * steps) if k_start > k else 0,
        k_anneal_start=lambda _sae: k_start,
    )  # fmt: skip
    sae = build_sae(cfg)
    sae.train()
    stepper = SAEStepper(sae, opts)
    generator = torch.Generator().manual_seed(10_007 * (seed + 1))
    batches = ({"x": toy.sample(batch_size, generator=generator).x} for _ in range(steps))
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        run_steps([stepper], batches, steps)
    finally:
        sae.k_train = None
        torch.set_num_threads(previous_threads)
    sae.eval()
    return sae
