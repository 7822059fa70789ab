"""The one SAE training loop: every saelab trainer runs its SAEs through :class:`SAEStepper`.

One update of one SAE (:meth:`SAEStepper.step`), in dictionary_learning's order (the
Matryoshka paper's official code):

1. the learning rate ``base_lr * lr_factor(index)`` (linear warmup, optional linear decay);
2. the training-mode k (k-annealing: :func:`annealed_k`, when the options ask for it);
3. forward and loss: ``recon``, the SAE's own loss (``out.loss``), or ``batch_fvu``, the
   EleutherAI ``sae`` trainer's Σ‖y − ŷ‖² / Σ‖y − mean_batch(y)‖²; then ``backward``;
4. ``sae.remove_parallel_decoder_grad()``: the decoder rows' gradients lose their radial part;
5. gradient clipping at ``clip_grad_norm`` over the SAE's parameters (``None``: no clipping);
6. Adam step, gradients cleared;
7. ``sae.normalize_decoder()``: rows back to unit norm **after** the step (Bart normalises
   before it, so his saved rows are slightly off the sphere).

Before the first update, :meth:`SAEStepper.init_from_first_batch` sets b_dec to the geometric
median of the first batch's targets (when asked) and the input centre of ``center_input`` SAEs.
Each stepper also keeps the log window (means of the loss parts, L0, the AuxK dead fraction)
and a device-side record of the first non-finite loss, so no update waits for the device.

The callers hand :func:`run_steps` their own batches: :func:`saelab.train.train_saes` the
cache or stream (with checkpoints and resume around it),
:func:`saelab.darkmatter.train_on_error.train_error_sae` shuffled error targets, and
:func:`saelab.toy.train_toy_sae` fresh toy tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saelab.metrics import fvu_dim_centred
from saelab.saes import SAE

#: Loss parts in the order they are accumulated and reported.
LOSS_PARTS = ("loss", "recon", "aux", "sparsity", "fvu")
#: The losses :class:`SAEStepper` can minimise.
LOSSES = ("recon", "batch_fvu")


def default_lr(width: int) -> float:
    """dictionary_learning's default: 2e-4 / sqrt(width / 2**14) (1/sqrt scaling in width)."""
    return 2e-4 / math.sqrt(width / 2**14)


def lr_factor(index: int, total_steps: int, warmup_steps: int, decay_start: float | None) -> float:
    """Multiplier of the base lr for the update with 0-based ``index``.

    Linear warmup ``index / warmup_steps`` (so update 0 has lr 0, as with LambdaLR), then 1,
    then from ``int(decay_start * total_steps)`` a linear decay ``(total - index) / (total -
    decay_step)`` that reaches 0 after the last update.
    """
    if index < warmup_steps:
        return index / warmup_steps
    if decay_start is not None:
        decay_step = int(decay_start * total_steps)
        if index >= decay_step:
            return (total_steps - index) / (total_steps - decay_step)
    return 1.0


def annealed_k(index: int, k: int, start: float, anneal_steps: int) -> int | None:
    """Training-mode k of the update with 0-based ``index``: linear from ``start`` (at most
    the width) down to ``k`` over the first ``anneal_steps`` updates, never below ``k``;
    ``None`` (k itself) after them."""
    if index >= anneal_steps:
        return None
    return max(k, round(start + (k - start) * index / anneal_steps))


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """The point minimising the summed Euclidean distance to ``points`` [n, d] (Weiszfeld).

    Starts at the mean; each iteration re-weights the points by 1 / distance. Stops after
    ``max_iter`` iterations or when the estimate moves less than ``tol``. Distances are
    clamped away from 0, so an estimate that lands on a data point stays finite.
    """
    points = points.double()
    guess = points.mean(dim=0)
    for _ in range(max_iter):
        weights = 1.0 / (points - guess).norm(dim=1).clamp_min(1e-12)
        new = (weights[:, None] * points).sum(dim=0) / weights.sum()
        moved = (new - guess).norm()
        guess = new
        if moved < tol:
            break
    return guess


def make_adam(
    params: list[torch.nn.Parameter], lr: float, betas, fused: bool = True
) -> torch.optim.Adam:
    """Adam, fused where torch has the kernel (float params on CPU or CUDA): one pass over
    each tensor instead of a dozen, 4x faster than the default loop on CPU. ``fused=False``:
    torch's default implementation (the toy trainer's)."""
    fused = fused and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=fused or None)


def batch_fvu(target: Tensor, output: Tensor) -> Tensor:
    """The EleutherAI trainer's loss: Σ‖target − output‖² / Σ‖target − mean_batch(target)‖², the
    dim-centred FVU of the batch (denominator floored at 1e-12)."""
    return fvu_dim_centred(target, output, floor=1e-12)


@dataclass(frozen=True)
class LoopOptions:
    """How :class:`SAEStepper` updates an SAE (one set for every trainer; each option once)."""

    steps: int
    """Updates in the run (the lr schedule's length)."""
    lr: float | None = None
    """Base Adam learning rate; ``None``: :func:`default_lr` of each SAE's width."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    fused_adam: bool = True
    """Adam's fused kernel where torch has it (:func:`make_adam`); ``False``: the default."""
    warmup_steps: int = 0
    """Linear warmup from lr 0 over this many updates (:func:`lr_factor`)."""
    decay_start: float | None = None
    """Fraction of the updates after which the lr decays linearly to 0; ``None``: no decay."""
    clip_grad_norm: float | None = 1.0
    """Maximum global gradient norm per SAE; ``None``: no clipping."""
    loss: str = "recon"
    """``recon``: the SAE's own loss; ``batch_fvu``: :func:`batch_fvu` of its output."""
    k_anneal_steps: int = 0
    """k-annealing: the training-mode k falls from :attr:`k_anneal_start` to k over this many
    first updates (0: none)."""
    k_anneal_start: Callable[[SAE], float] | None = None
    """The annealing's start k for an SAE (at most its width)."""
    b_dec_init: str | None = None
    """``geometric_median``: b_dec from the first batch's targets; ``zeros``: left alone;
    ``None``: as each SAE's ``b_dec_init`` says."""
    first_batch_init: bool = True
    """Initialise from the first batch at all (b_dec as above, ``center_input``'s centre);
    ``False``: parameters stay as the SAE was built."""

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} is not allowed; use one of {LOSSES}")
        if self.b_dec_init not in (None, "zeros", "geometric_median"):
            raise ValueError(
                f"b_dec_init {self.b_dec_init!r} is not allowed; use zeros, geometric_median "
                f"or None (each SAE's own)"
            )
        if self.k_anneal_steps and self.k_anneal_start is None:
            raise ValueError("k_anneal_steps > 0 needs k_anneal_start")


class SAEStepper:
    """One SAE with its optimiser, its options, its log window and its divergence record.

    ``source`` and ``target`` name the SAE's input and target in the batches handed to
    :meth:`step` (mappings of name to tensor); equal names train an SAE, different ones a
    transcoder.
    """

    def __init__(self, sae: SAE, opts: LoopOptions, source: str = "x", target: str | None = None):
        self.sae, self.opts = sae, opts
        self.source, self.target = source, target or source
        self.base_lr = opts.lr if opts.lr is not None else default_lr(sae.cfg.width)
        self.params = [p for p in sae.parameters() if p.requires_grad]
        self.optimizer = make_adam(self.params, self.base_lr, opts.betas, fused=opts.fused_adam)
        self.factor = 0.0
        """lr factor of the last update."""
        self.loss = torch.tensor(float("nan"))
        """The minimised loss of the last update (on the device; NaN before the first)."""
        self.reset_window()
        device = sae.device
        self.bad_step = torch.tensor(-1, dtype=torch.long, device=device)
        self.bad_parts = torch.zeros(len(LOSS_PARTS), device=device)

    def reset_window(self) -> None:
        self.window_sum: torch.Tensor | None = None
        self.window_nnz = 0
        self.window_tokens = 0
        self.window_steps = 0

    @torch.no_grad()
    def init_from_first_batch(self, acts: Mapping[str, Tensor]) -> None:
        """b_dec <- geometric median of the first batch's targets (normalised if configured),
        when :attr:`LoopOptions.b_dec_init` (or the SAE's) asks for it; the input centre <- that
        of its sources, with ``center_input``."""
        sae = self.sae
        if (self.opts.b_dec_init or sae.cfg.b_dec_init) == "geometric_median":
            target = acts[self.target].to(sae.W_enc.dtype)
            if sae.cfg.normalize_input:
                target = sae._normalize(target)[0]
            sae.b_dec.copy_(geometric_median(target).to(sae.b_dec.dtype))
        if sae.cfg.center_input:
            sae.input_center.copy_(geometric_median(acts[self.source].to(sae.W_enc.dtype)))

    def step(self, acts: Mapping[str, Tensor], step: int) -> None:
        """Update ``step`` (1-based) on the batch ``acts`` (see the module docstring)."""
        sae, opts = self.sae, self.opts
        self.factor = lr_factor(step - 1, opts.steps, opts.warmup_steps, opts.decay_start)
        for group in self.optimizer.param_groups:
            group["lr"] = self.factor * self.base_lr
        if opts.k_anneal_steps and opts.k_anneal_start is not None:
            start = opts.k_anneal_start(sae)
            sae.k_train = annealed_k(step - 1, sae.cfg.k, start, opts.k_anneal_steps)
        dtype = sae.W_enc.dtype
        x, target = acts[self.source].to(dtype), acts[self.target].to(dtype)
        out = sae(x, target if self.target != self.source else None)
        loss = out.loss if opts.loss == "recon" else batch_fvu(target, out.output)
        loss.backward()
        sae.remove_parallel_decoder_grad()
        if opts.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, opts.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder()
        self.loss = loss.detach()

        parts = torch.stack(
            [out.loss, out.recon_loss, out.aux_loss, out.sparsity_loss, out.fvu]
        ).detach()
        newly_bad = ~torch.isfinite(parts[:4]).all() & (self.bad_step < 0)
        self.bad_step = torch.where(newly_bad, step, self.bad_step)
        self.bad_parts = torch.where(newly_bad, parts, self.bad_parts)
        self.window_sum = parts if self.window_sum is None else self.window_sum + parts
        self.window_nnz += out.codes.values.shape[0]
        self.window_tokens += out.codes.n_rows
        self.window_steps += 1

    def finish(self) -> None:
        """After the last update: k back to the SAE's own."""
        self.sae.k_train = None

    def first_bad(self) -> tuple[int, dict[str, float]] | None:
        """(step, loss parts) of the first update with a non-finite loss, or ``None``."""
        bad_step = int(self.bad_step)
        if bad_step < 0:
            return None
        return bad_step, dict(zip(LOSS_PARTS, self.bad_parts.tolist(), strict=True))

    def non_finite_state(self) -> str | None:
        """The name of a parameter or Adam state tensor that is not finite, or ``None``."""
        tensors = dict(self.sae.state_dict())
        for i, state in enumerate(self.optimizer.state.values()):
            tensors.update({f"adam[{i}].{k}": v for k, v in state.items() if torch.is_tensor(v)})
        for key, value in tensors.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return key
        return None

    def window_record(self, step: int, batch_size: int) -> dict[str, Any]:
        """The log line of the window that ended at ``step`` (resets the window)."""
        if self.window_sum is None:
            raise RuntimeError(f"window_record at step {step}: no step was taken since the last")
        means = (self.window_sum / max(self.window_steps, 1)).tolist()
        record: dict[str, Any] = {"step": step, "tokens": step * batch_size}
        record["lr"] = self.factor * self.base_lr
        record.update(zip(LOSS_PARTS, means, strict=True))
        record["l0"] = self.window_nnz / max(self.window_tokens, 1)
        record["dead"] = float(self.sae.dead_mask().float().mean())
        threshold = getattr(self.sae, "threshold", None)
        if threshold is not None and threshold.ndim == 0:
            record["threshold"] = float(threshold)
        self.reset_window()
        return record

    def window_state(self) -> dict[str, Any]:
        """The log window in progress (so a resumed run writes the same log lines)."""
        return {
            "sum": None if self.window_sum is None else self.window_sum.cpu(),
            "nnz": self.window_nnz,
            "tokens": self.window_tokens,
            "steps": self.window_steps,
        }

    def restore(self, payload: dict[str, Any]) -> None:
        """SAE, Adam state and log window from a checkpoint payload."""
        self.sae.load_state_dict(payload["sae"])
        self.optimizer.load_state_dict(payload["optimizer"])
        window = payload["window"]
        self.window_sum = None if window["sum"] is None else window["sum"].to(self.sae.device)
        self.window_nnz, self.window_tokens = window["nnz"], window["tokens"]
        self.window_steps = window["steps"]


def run_steps(
    steppers: list[SAEStepper],
    batches: Iterator[Mapping[str, Tensor]],
    total: int,
    start: int = 0,
    *,
    bar=None,
    after_step: Callable[[int], None] | None = None,
) -> None:
    """Updates ``start + 1 .. total`` of every stepper, each on the same batch from
    ``batches`` (one per update); the first batch of a fresh run (``start == 0``) initialises
    b_dec first. ``bar`` (tqdm) advances per update; ``after_step(step)`` follows each."""
    for step in range(start + 1, total + 1):
        acts = next(batches)
        if step == 1:
            for stepper in steppers:
                if stepper.opts.first_batch_init:
                    stepper.init_from_first_batch(acts)
        for stepper in steppers:
            stepper.step(acts, step)
        if bar is not None:
            bar.update(1)
        if after_step is not None:
            after_step(step)
    for stepper in steppers:
        stepper.finish()
