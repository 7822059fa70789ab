"""The streaming training loop: several SAEs (or transcoders) from one pass over one cache.

:func:`train_saes` reads the union of the SAEs' hooks with one :class:`ActivationReader`, so
every SAE of a group sees exactly the same batches (as dictionary_learning's ``trainSAE`` and
Bart's ``train_sae_group``). One step, for each SAE in turn:

1. ``loss = sae(x, target).loss`` and ``loss.backward()``;
2. ``sae.remove_parallel_decoder_grad()``: the decoder rows' gradients lose their radial part;
3. gradient clipping at ``clip_grad_norm`` (over all of the SAE's parameters);
4. Adam step at ``lr * lr_factor(step)`` (linear warmup, optional linear decay to 0);
5. ``sae.normalize_decoder()``: rows back to unit norm **after** the step.

This is dictionary_learning's order (the paper's official code). Bart normalises *before* the
step, so his saved rows are slightly off the sphere; after the step every saved decoder row
has unit norm, which is what SAE-Lens and the analyses assume.

Checkpoints (every ``checkpoint_every`` steps, in a directory beside the output) hold everything
that determines the rest of the run: SAE parameters and buffers (dead counters, threshold,
step counter), Adam state, the torch RNG, and the reader's position. A killed job run again
resumes from the newest step that every SAE of the group has, skips the batches already used
(without running the SAEs on them), and ends with the same weights as an uninterrupted run.

Step numbers count updates: "step n" is the state after n optimiser steps (1-based), and the
log line of step n describes the window of updates that ended there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from saelab.cache import ActivationReader, cache_manifest
from saelab.config import section_defaults
from saelab.metrics import FVUAccumulator
from saelab.precision import Precision, PrecisionError, check_precision, resolve_precision
from saelab.runtime import atomic_dir, dataclass_from_dict
from saelab.saes import SAE, SAEConfig, build_sae
from saelab.saes.io import SAELoadError, saelens_cfg, save_sae
from saelab.stream import ActivationStream

log = logging.getLogger("saelab.train")

CHECKPOINT_SUFFIX = ".ckpt"
LOG_NAME = "train_log.jsonl"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"
#: Loss parts in the order they are accumulated and reported.
LOSS_PARTS = ("loss", "recon", "aux", "sparsity", "fvu")
#: What ``dead_fraction`` means in ``metrics.json`` (the definition of saelab.evaluate too:
#: latents that never fired on the tokens evaluated), written beside it.
DEAD_DEFINITION = (
    "fraction of latents that fired on none of {dead_tokens} tokens encoded in eval mode, "
    "special tokens excluded ({dead_tokens_heldout} held-out tokens, the rest the first "
    "tokens of the training split)"
)
#: What ``train_dead_fraction`` (and ``dead`` in train_log.jsonl) means.
TRAIN_DEAD_DEFINITION = (
    "fraction of latents that did not fire (training mode) in the last {window} training "
    "tokens: the AuxK dead set at the last step"
)


class TrainingDivergedError(RuntimeError):
    """A non-finite loss or parameter: training stopped, the last good checkpoint is kept."""


class TrainError(ValueError):
    """SAEs, cache and config that do not fit together, with what to change."""


#: Defaults of TrainConfig: the ``training`` section of config/schema.yaml, their one place.
_DEFAULTS = section_defaults("training")


@dataclass
class TrainConfig:
    """How a group of SAEs is trained (the SAEs' own hyper-parameters live in SAEConfig).

    Defaults are the schema's ``training`` section, so ``TrainConfig(n_tokens=...)`` trains as
    the DAG's default config does (``lr=None`` is the width-scaled rate, on request)."""

    n_tokens: int
    """Training tokens per SAE; steps = n_tokens // batch_size (epochs repeat as needed)."""
    batch_size: int = _DEFAULTS["batch_size"]
    """Tokens per optimiser step (Bart and the official code: 4096 / 2048)."""
    lr: float | None = _DEFAULTS["lr"]
    """Adam learning rate; ``None``: dictionary_learning's 2e-4 / sqrt(width / 2**14), per SAE."""
    betas: tuple[float, float] = tuple(_DEFAULTS["betas"])
    """Adam betas: (0.9, 0.999) official; Bart used (0.9, 0.99)."""
    warmup_steps: int = _DEFAULTS["warmup_steps"]
    """Linear warmup from 0 (as dictionary_learning: the first step has lr 0); Bart 0,
    official 1000."""
    decay_start: float | None = _DEFAULTS["decay_start"]
    """Fraction of training after which lr decays linearly to 0 at the last step; ``None``:
    no decay (Bart). The official code takes a step number; this is steps * decay_start."""
    clip_grad_norm: float = _DEFAULTS["clip_grad_norm"]
    """Maximum global gradient norm per SAE (official 1.0; Bart 1e5, i.e. none)."""
    checkpoint_every: int = _DEFAULTS["checkpoint_every"]
    """Steps between checkpoints (0: only the final one, written before evaluation)."""
    log_every: int = _DEFAULTS["log_every"]
    """Steps between lines of ``train_log.jsonl`` (means over the window) and bar updates;
    also how often a non-finite loss is looked for (no per-step device sync)."""
    seed: int = _DEFAULTS["seed"]
    """Seed of the reader's shuffle and of torch's RNG (SAE init uses SAEConfig.seed)."""
    heldout_fraction: float = _DEFAULTS["heldout_fraction"]
    """Last fraction of the cache's contexts, never trained on, used for the final evaluation."""
    exclude_special: bool = _DEFAULTS["exclude_special"]
    """Leave BOS/EOS/PAD tokens out of training and evaluation."""
    buffer_chunks: int = _DEFAULTS["buffer_chunks"]
    """Cache chunks shuffled together (memory: buffer_chunks x chunk rows x hook widths)."""
    eval_tokens: int | None = _DEFAULTS["eval_tokens"]
    """Cap on held-out tokens evaluated at the end (``None``: the whole held-out split)."""
    dead_window_fraction: float | None = _DEFAULTS["dead_window_fraction"]
    """The dead window follows the run: an SAE's ``dead_after_tokens`` is lowered to this
    fraction of the run's tokens when that is shorter (at least one batch), so AuxK engages in
    short runs too. ``None``: every SAE keeps its own ``dead_after_tokens``."""
    k_anneal_fraction: float | None = _DEFAULTS["k_anneal_fraction"]
    """k-annealing: over this first fraction of the steps the training-mode k of TopK-style
    SAEs falls linearly from ``k_anneal_start`` x k to k, so more latents fire (and learn)
    early. ``None``: k from the first step."""
    k_anneal_start: float = _DEFAULTS["k_anneal_start"]
    """Start of the k-annealing, as a multiple of each SAE's k (capped at its width)."""
    dead_tokens: int = _DEFAULTS["dead_tokens"]
    """Tokens on which ``dead_fraction`` (never fired, eval mode) is measured after training:
    the held-out split first, topped up from the training split when it is smaller, so a rare
    latent is not counted dead for want of tokens."""
    precision: str = "auto"
    """dtype of the encoder GEMM: ``auto`` | ``float32`` | ``bfloat16`` (saelab.precision;
    weights and Adam state stay float32). Recorded, resolved, in config.json and metrics.json."""
    source: str = _DEFAULTS["source"]
    """``cache``: batches from the zarr cache; ``stream``: straight from the model's forward
    (:mod:`saelab.stream`), no cache written."""
    shuffle_contexts: int = _DEFAULTS["shuffle_contexts"]
    """``source: stream`` only: contexts in the shuffle buffer that mixes tokens across contexts
    (memory: shuffle_contexts x context_len x hook widths x 4 bytes, up to twice that)."""

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        if self.source not in ("cache", "stream"):
            raise TrainError(f"source {self.source!r} is not allowed; use 'cache' or 'stream'")
        if self.shuffle_contexts < 1:
            raise TrainError(f"shuffle_contexts {self.shuffle_contexts} must be >= 1")
        if self.n_tokens < self.batch_size:
            raise TrainError(
                f"n_tokens ({self.n_tokens}) must be at least one batch ({self.batch_size})"
            )
        if self.decay_start is not None and not 0 <= self.decay_start < 1:
            raise TrainError(f"decay_start {self.decay_start} must be a fraction in [0, 1)")
        if self.decay_start is not None and self.decay_start * self.steps < self.warmup_steps:
            raise TrainError(
                f"decay_start ({self.decay_start} x {self.steps} steps) falls inside the "
                f"warmup ({self.warmup_steps} steps)"
            )
        if self.log_every < 1 or self.checkpoint_every < 0:
            raise TrainError("log_every must be >= 1 and checkpoint_every >= 0")
        if self.dead_window_fraction is not None and not 0 < self.dead_window_fraction <= 1:
            raise TrainError(
                f"dead_window_fraction {self.dead_window_fraction} must be a fraction in (0, 1] "
                f"of the run's tokens, or null to keep each SAE's dead_after_tokens"
            )
        if self.k_anneal_fraction is not None and not 0 < self.k_anneal_fraction <= 1:
            raise TrainError(
                f"k_anneal_fraction {self.k_anneal_fraction} must be a fraction in (0, 1] of "
                f"the steps, or null for no k-annealing"
            )
        if self.k_anneal_start < 1:
            raise TrainError(f"k_anneal_start {self.k_anneal_start} must be >= 1 (a multiple of k)")
        if self.dead_tokens < 1:
            raise TrainError(f"dead_tokens {self.dead_tokens} must be >= 1")
        try:
            check_precision(self.precision)
        except PrecisionError as err:
            raise TrainError(str(err)) from None

    @property
    def steps(self) -> int:
        return self.n_tokens // self.batch_size

    def annealed_k(self, index: int, k: int, width: int) -> int | None:
        """Training-mode k of the update with 0-based ``index`` for an SAE of this ``k`` and
        ``width``: linear from ``k_anneal_start`` x k down to k over the annealing steps;
        ``None`` (k itself) after them or without annealing."""
        if self.k_anneal_fraction is None:
            return None
        n = max(1, int(self.k_anneal_fraction * self.steps))
        if index >= n:
            return None
        start = min(width, self.k_anneal_start * k)
        return max(k, min(width, round(start + (k - start) * index / n)))

    def dead_window(self, dead_after_tokens: int) -> int:
        """The dead window of an SAE configured with ``dead_after_tokens`` in this run: the
        smaller of it and ``dead_window_fraction`` of the run's tokens (at least one batch)."""
        if self.dead_window_fraction is None:
            return dead_after_tokens
        run_tokens = self.steps * self.batch_size
        window = max(self.batch_size, int(self.dead_window_fraction * run_tokens))
        return min(dead_after_tokens, window)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, data, "train config", TrainError)

    def identity(self) -> dict[str, Any]:
        """The fields that change the trained weights (a checkpoint resumes only if equal)."""
        out = self.to_dict()
        for name in ("checkpoint_every", "log_every", "eval_tokens", "dead_tokens"):
            out.pop(name)
        if self.source == "cache":
            out.pop("shuffle_contexts")
        else:
            out.pop("buffer_chunks")
        return out


class TrainResult(NamedTuple):
    """What :func:`train_saes` did for one SAE."""

    steps: int
    tokens: int
    metrics: dict[str, Any]
    """Everything in ``metrics.json``: final training window and held-out evaluation."""
    seconds: float
    """Wall time of this process's training loop (the shared pass, not this SAE's share)."""
    tokens_per_s: float
    """Tokens trained in this process per second (each SAE saw them all)."""


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------


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


def make_adam(params: list[torch.nn.Parameter], lr: float, betas) -> torch.optim.Adam:
    """Adam, fused where torch has the kernel (float params on CPU or CUDA): one pass over
    each tensor instead of a dozen, 4x faster than the default loop on CPU."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=fused or None)


def cache_fingerprint(manifest: dict[str, Any]) -> str:
    """A short hash of a cache's manifest (it changes whenever the cache is rebuilt)."""
    blob = json.dumps(manifest, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sae_hooks(sae: SAE) -> tuple[str, str]:
    """(input hook, target hook) of an SAE or transcoder."""
    if not sae.cfg.hook_name:
        raise TrainError(f"SAE {sae.cfg.arch}: hook_name is empty; name the hook it reads")
    return sae.cfg.hook_name, sae.cfg.target_hook_name or sae.cfg.hook_name


def hooks_of(saes: dict[str, SAE]) -> list[str]:
    """The union of the SAEs' input and target hooks, in first-seen order."""
    return _union(sae_hooks(sae) for sae in saes.values())


def spec_hooks(specs: dict[str, dict[str, Any]]) -> list[str]:
    """:func:`hooks_of` for SAE config dicts (before the SAEs exist, e.g. to start a stream)."""
    return _union((s.get("hook_name"), s.get("target_hook_name")) for s in specs.values())


def _union(pairs) -> list[str]:
    hooks: list[str] = []
    for pair in pairs:
        for hook in pair:
            if hook and hook not in hooks:
                hooks.append(hook)
    return hooks


def check_widths(saes: dict[str, SAE], widths: dict[str, int]) -> None:
    """Every SAE's d_in / d_out equals its hooks' widths in the cache."""
    for name, sae in saes.items():
        source, target = sae_hooks(sae)
        for hook, dim, what in ((source, sae.cfg.d_in, "d_in"), (target, sae.cfg.d_out, "d_out")):
            if hook not in widths:
                raise TrainError(
                    f"SAE {name!r}: hook {hook!r} is not in the cache; it holds {sorted(widths)}"
                )
            if int(widths[hook]) != int(dim):
                raise TrainError(
                    f"SAE {name!r}: {what} = {dim} but hook {hook!r} is {widths[hook]} wide in "
                    f"the cache; build the SAE from the cache's widths"
                )


def build_saes(specs: dict[str, dict[str, Any]], widths: dict[str, int]) -> dict[str, SAE]:
    """SAEs from config dicts (SAEConfig fields without d_in/d_out) and the cache's widths."""
    saes = {}
    for name, spec in specs.items():
        spec = dict(spec)
        for key in ("d_in", "d_out"):
            if spec.get(key) is not None:
                raise TrainError(f"SAE {name!r}: {key} comes from the cache; remove it")
            spec.pop(key, None)
        hook, target = spec.get("hook_name"), spec.get("target_hook_name")
        for h in (hook, target):
            if h is not None and h not in widths:
                raise TrainError(
                    f"SAE {name!r}: hook {h!r} is not in the cache; it holds {sorted(widths)}"
                )
        if not hook:
            raise TrainError(f"SAE {name!r}: hook_name is required")
        spec["extra"] = {**(spec.get("extra") or {}), "name": name}
        cfg = SAEConfig(
            **spec, d_in=int(widths[hook]), d_out=int(widths[target]) if target else None
        )
        saes[name] = build_sae(cfg)
    return saes


def default_checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    """``{out_dir}.ckpt``: beside the output, so a failed Snakemake job does not delete it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + CHECKPOINT_SUFFIX)


def _json_normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---------------------------------------------------------------------------------------------
# The batch stream: a reader position that can be saved and restored
# ---------------------------------------------------------------------------------------------


class BatchStream:
    """Endless batches from an :class:`ActivationReader` with a resumable position.

    The position is (epoch, batches consumed in it). The reader's order is a deterministic
    function of its seed and epoch, so :meth:`seek` re-creates an epoch's iterator and
    discards the batches already used (they are read, never trained on).
    """

    def __init__(self, reader: ActivationReader, epoch: int = 0, consumed: int = 0):
        self.reader = reader
        self.epoch = epoch
        self.consumed = consumed
        self._it: Iterator | None = None

    def _open(self) -> None:
        self.reader.epoch = self.epoch
        it = self.reader.batches()
        for skipped in range(self.consumed):
            if next(it, None) is None:
                raise TrainError(
                    f"cannot resume: epoch {self.epoch} has {skipped} batches, the checkpoint "
                    f"had used {self.consumed} (was the cache or the batch size changed?)"
                )
        self._it = it

    def seek(self, epoch: int, consumed: int) -> None:
        self.epoch, self.consumed, self._it = epoch, consumed, None

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self):
        if self._it is None:
            self._open()
        batch = next(self._it, None)
        if batch is None:
            if self.consumed == 0:
                raise TrainError(
                    "the training split yields no full batch: lower batch_size or use a larger "
                    "cache"
                )
            self.seek(self.epoch + 1, 0)
            return next(self)
        self.consumed += 1
        return batch


# ---------------------------------------------------------------------------------------------
# One SAE's training state
# ---------------------------------------------------------------------------------------------


class _Trainee:
    """An SAE with its optimiser, window statistics and divergence tracker."""

    def __init__(self, name: str, sae: SAE, cfg: TrainConfig, out_dir: Path, ckpt_dir: Path):
        self.name, self.sae, self.cfg = name, sae, cfg
        self.out_dir, self.ckpt_dir = out_dir, ckpt_dir
        self.source, self.target = sae_hooks(sae)
        self.base_lr = cfg.lr if cfg.lr is not None else default_lr(sae.cfg.width)
        self.params = [p for p in sae.parameters() if p.requires_grad]
        self.optimizer = make_adam(self.params, self.base_lr, cfg.betas)
        self.reset_window()
        device = sae.device
        self.bad_step = torch.tensor(-1, dtype=torch.long, device=device)
        self.bad_parts = torch.zeros(len(LOSS_PARTS), device=device)

    def reset_window(self) -> None:
        self.window_sum: torch.Tensor | None = None
        self.window_nnz = 0
        self.window_tokens = 0
        self.window_steps = 0

    def identity(self, fingerprint: str) -> dict[str, Any]:
        return _json_normal(
            {
                "sae": self.sae.cfg.to_dict(),
                "train": self.cfg.identity(),
                "cache": fingerprint,
                "compute_dtype": str(self.sae.compute_dtype),  # what "auto" resolved to
            }
        )

    def step(self, x: torch.Tensor, target: torch.Tensor, lr: float, step: int) -> None:
        """One update; ``step`` is the 1-based number of this update (for the NaN record)."""
        sae = self.sae
        for group in self.optimizer.param_groups:
            group["lr"] = lr * self.base_lr
        out = sae(x, target if self.target != self.source else None)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder()

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

    def check_finite(self, step: int, params_too: bool = False) -> None:
        """Raise :class:`TrainingDivergedError` if any loss so far, or (``params_too``) any
        parameter or optimiser state, is not finite."""
        bad_step = int(self.bad_step)
        if bad_step >= 0:
            parts = dict(zip(LOSS_PARTS, self.bad_parts.tolist(), strict=True))
            raise TrainingDivergedError(
                f"SAE {self.name!r}: non-finite loss at step {bad_step} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in parts.items())}); training stopped. "
                f"The last good checkpoint in {self.ckpt_dir} is kept; lower lr, raise "
                f"warmup_steps or use clip_grad_norm."
            )
        if params_too:
            tensors = dict(self.sae.state_dict())
            for i, state in enumerate(self.optimizer.state.values()):
                tensors.update(
                    {f"adam[{i}].{k}": v for k, v in state.items() if torch.is_tensor(v)}
                )
            for key, value in tensors.items():
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise TrainingDivergedError(
                        f"SAE {self.name!r}: {key} is not finite after step {step}; training "
                        f"stopped. The last good checkpoint in {self.ckpt_dir} is kept."
                    )

    def window_record(self, step: int, lr: float) -> dict[str, Any]:
        """The log line of the window that ended at ``step`` (resets the window)."""
        means = (self.window_sum / max(self.window_steps, 1)).tolist()
        record: dict[str, Any] = {"step": step, "tokens": step * self.cfg.batch_size}
        record["lr"] = lr * self.base_lr
        record.update(zip(LOSS_PARTS, means, strict=True))
        record["l0"] = self.window_nnz / max(self.window_tokens, 1)
        record["dead"] = float(self.sae.dead_mask().float().mean())
        threshold = getattr(self.sae, "threshold", None)
        if threshold is not None and threshold.ndim == 0:
            record["threshold"] = float(threshold)
        self.reset_window()
        return record

    # -------------------------------------------------------------- checkpoints
    def checkpoint_path(self, step: int) -> Path:
        return self.ckpt_dir / f"step_{step:010d}.pt"

    def checkpoint_steps(self) -> list[int]:
        if not self.ckpt_dir.is_dir():
            return []
        steps = []
        for path in self.ckpt_dir.glob("step_*.pt"):
            try:
                steps.append(int(path.stem.split("_", 1)[1]))
            except ValueError:
                continue
        return sorted(steps)

    def save_checkpoint(self, step: int, position: dict[str, int], fingerprint: str) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "step": step,
            "identity": self.identity(fingerprint),
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "reader": dict(position),
            "window": self.window_state(),
            "written": _now(),
        }
        final = self.checkpoint_path(step)
        tmp = final.with_suffix(".pt.tmp")
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)

    def load_checkpoint(self, step: int) -> dict[str, Any]:
        return torch.load(self.checkpoint_path(step), map_location="cpu", weights_only=False)

    def restore(self, payload: dict[str, Any]) -> None:
        self.sae.load_state_dict(payload["sae"])
        self.optimizer.load_state_dict(payload["optimizer"])
        window = payload["window"]
        device = self.sae.device
        self.window_sum = None if window["sum"] is None else window["sum"].to(device)
        self.window_nnz, self.window_tokens = window["nnz"], window["tokens"]
        self.window_steps = window["steps"]

    def window_state(self) -> dict[str, Any]:
        """The log window in progress (so a resumed run writes the same log lines)."""
        return {
            "sum": None if self.window_sum is None else self.window_sum.cpu(),
            "nnz": self.window_nnz,
            "tokens": self.window_tokens,
            "steps": self.window_steps,
        }

    def clear_checkpoints(self) -> None:
        """Remove this trainer's files (checkpoints, partial writes, the log) and then the
        directory if nothing else is in it; never anything it did not write."""
        if not self.ckpt_dir.is_dir():
            return
        for pattern in ("step_*.pt", "step_*.pt.tmp", LOG_NAME):
            for path in self.ckpt_dir.glob(pattern):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.ckpt_dir.rmdir()

    def prune_checkpoints(self, keep: int) -> None:
        for step in self.checkpoint_steps():
            if step != keep:
                self.checkpoint_path(step).unlink(missing_ok=True)

    # -------------------------------------------------------------- log file
    @property
    def log_path(self) -> Path:
        return self.ckpt_dir / LOG_NAME

    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop log lines written after ``step`` by a run that was then killed."""
        if not self.log_path.exists():
            return
        keep = []
        for line in self.log_path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError):
                break  # a line cut by the kill: nothing after it is kept
        self.log_path.write_text("".join(line + "\n" for line in keep))


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------


def _find_resume_step(trainees: list[_Trainee], fingerprint: str) -> tuple[int, list[dict]]:
    """The newest step with a matching checkpoint for every SAE, and those checkpoints.

    Returns (0, []) when there is none; stale checkpoints are then cleared.
    """
    common = set.intersection(*(set(t.checkpoint_steps()) for t in trainees))
    for step in sorted(common, reverse=True):
        payloads = []
        for t in trainees:
            try:
                payload = t.load_checkpoint(step)
            except Exception as err:  # a damaged file: try an older step
                log.warning("%s: unreadable checkpoint at step %d (%s)", t.name, step, err)
                break
            if payload.get("identity") != t.identity(fingerprint):
                log.warning(
                    "%s: the checkpoint at step %d was written for another config or cache; "
                    "starting over",
                    t.name,
                    step,
                )
                break
            payloads.append(payload)
        else:
            positions = {json.dumps(p["reader"], sort_keys=True) for p in payloads}
            if len(positions) == 1:
                return step, payloads
    for t in trainees:
        t.clear_checkpoints()
    return 0, []


# ---------------------------------------------------------------------------------------------
# Held-out evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_heldout(
    cache_path: str | os.PathLike,
    saes: dict[str, SAE],
    cfg: TrainConfig,
) -> dict[str, dict[str, float]]:
    """Held-out metrics of every SAE (in eval mode: BatchTopK uses its threshold).

    ``fvu_element_global``, ``fvu_dim_centred``, ``fvu_mean_r2``: the three FVU definitions of
    :mod:`saelab.metrics`, streamed by its :class:`~saelab.metrics.FVUAccumulator`; ``mse`` per
    element; ``l0`` active latents per token; ``alive_fraction`` latents that fired at least
    once on these held-out tokens. Reconstructions are the SAE's forward output (the training
    objective's map).

    ``dead_fraction`` (:data:`DEAD_DEFINITION`): latents that fired on none of ``dead_tokens``
    tokens encoded in eval mode, special tokens excluded: the held-out tokens above, then, if
    they are fewer than ``cfg.dead_tokens``, the first training-split tokens in cache order
    (``dead_tokens_heldout`` of them held out).
    """
    hooks = hooks_of(saes)
    reader = ActivationReader(
        cache_path, hooks, cfg.batch_size, split="heldout", shuffle=False, drop_last=False,
        heldout_fraction=cfg.heldout_fraction, exclude_special=cfg.exclude_special,
        buffer_chunks=cfg.buffer_chunks,
    )  # fmt: skip
    return heldout_metrics(
        reader.batches(), hooks, saes, cfg.eval_tokens, cfg.dead_tokens,
        top_up=lambda fired, n: _count_firing(cache_path, saes, cfg, fired, n),
    )  # fmt: skip


@torch.no_grad()
def heldout_metrics(
    batches: Iterator[tuple[torch.Tensor, ...]],
    hooks: list[str],
    saes: dict[str, SAE],
    eval_tokens: int | None = None,
    dead_tokens: int = 0,
    top_up: Callable[[dict[str, torch.Tensor], int], int] | None = None,
) -> dict[str, dict[str, float]]:
    """The metrics of :func:`evaluate_heldout` over ``batches`` (tuples aligned with ``hooks``),
    up to ``eval_tokens`` tokens: the cache's held-out split or a stream's held-out slice.

    ``top_up(fired, n)``, when the held-out tokens are fewer than ``dead_tokens``, marks the
    latents that fire on ``n`` more (training-split) tokens and returns how many it read."""
    device = next(iter(saes.values())).device
    stats: dict[str, dict[str, Any]] = {}
    modes = {name: sae.training for name, sae in saes.items()}
    for sae in saes.values():
        sae.eval()
    n_tokens = 0
    try:
        for batch in batches:
            acts = {h: t.to(device) for h, t in zip(hooks, batch, strict=True)}
            if eval_tokens is not None:
                room = eval_tokens - n_tokens
                if room <= 0:
                    break
                acts = {h: t[:room] for h, t in acts.items()}
            n = next(iter(acts.values())).shape[0]
            n_tokens += n
            for name, sae in saes.items():
                source, target = sae_hooks(sae)
                x = acts[source].to(sae.W_enc.dtype)
                y = acts[target].to(sae.W_enc.dtype)
                out = sae(x, y if target != source else None)
                s = stats.setdefault(
                    name,
                    {
                        "fvu": FVUAccumulator(), "nnz": 0, "n": 0,
                        "fired": torch.zeros(sae.cfg.width, dtype=torch.bool, device=device),
                    },
                )  # fmt: skip
                s["fvu"].update(y, out.output)
                s["nnz"] += out.codes.values.shape[0]
                s["n"] += n
                s["fired"][out.codes.latents] = True
    finally:
        for name, sae in saes.items():
            sae.train(modes[name])
    if not stats:
        raise TrainError("the held-out split is empty: raise heldout_fraction or the cache size")
    fired = {name: s["fired"] for name, s in stats.items()}
    n_extra = top_up(fired, dead_tokens - n_tokens) if top_up is not None else 0
    results = {}
    for name, s in stats.items():
        n = s["n"]
        results[name] = {
            "tokens": n,
            **s["fvu"].results(),
            "mse": s["fvu"].mse(),
            "l0": s["nnz"] / n,
            "alive_fraction": float(s["fired"].float().mean()),
            "dead_fraction": float((~fired[name]).float().mean()),
            "dead_tokens": n + n_extra,
            "dead_tokens_heldout": n,
        }
    return results


@torch.no_grad()
def _count_firing(
    cache_path: str | os.PathLike,
    saes: dict[str, SAE],
    cfg: TrainConfig,
    fired: dict[str, torch.Tensor],
    n_tokens: int,
) -> int:
    """Mark in ``fired`` the latents that fire (eval mode) on the first ``n_tokens`` tokens of
    the training split, in cache order; returns the tokens read (0 when ``n_tokens`` <= 0)."""
    if n_tokens <= 0:
        return 0
    sources = list(dict.fromkeys(sae_hooks(sae)[0] for sae in saes.values()))
    reader = ActivationReader(
        cache_path, sources, cfg.batch_size, split="train", shuffle=False, drop_last=False,
        heldout_fraction=cfg.heldout_fraction, exclude_special=cfg.exclude_special,
        buffer_chunks=cfg.buffer_chunks,
    )  # fmt: skip
    modes = {name: sae.training for name, sae in saes.items()}
    seen = 0
    try:
        for sae in saes.values():
            sae.eval()
        for batch in reader.batches():
            batch = batch if isinstance(batch, (tuple, list)) else (batch,)
            acts = dict(zip(sources, batch, strict=True))
            for name, sae in saes.items():
                x = acts[sae_hooks(sae)[0]][: n_tokens - seen].to(sae.device, sae.W_enc.dtype)
                fired[name][sae.encode(x).codes.latents] = True
            seen += min(n_tokens - seen, next(iter(acts.values())).shape[0])
            if seen >= n_tokens:
                break
    finally:
        for name, sae in saes.items():
            sae.train(modes[name])
    return seen


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _init_from_first_batch(trainee: _Trainee, acts: dict[str, torch.Tensor]) -> None:
    """b_dec <- geometric median of the first batch's targets (normalised if configured), when
    ``b_dec_init`` asks for it; the input centre <- that of its sources, with ``center_input``."""
    sae = trainee.sae
    with torch.no_grad():
        if sae.cfg.b_dec_init == "geometric_median":
            target = acts[trainee.target].to(sae.W_enc.dtype)
            if sae.cfg.normalize_input:
                target = sae._normalize(target)[0]
            sae.b_dec.copy_(geometric_median(target).to(sae.b_dec.dtype))
        if sae.cfg.center_input:
            sae.input_center.copy_(geometric_median(acts[trainee.source].to(sae.W_enc.dtype)))


def _write_outputs(
    trainee: _Trainee,
    *,
    cache_path: Path,
    fingerprint: str,
    manifest: dict[str, Any],
    steps: int,
    final_train: dict[str, Any] | None,
    heldout: dict[str, float],
    seconds: float,
    tokens_per_s: float,
    resumed_from: int,
    precision: Precision,
) -> dict[str, Any]:
    cfg = trainee.cfg
    sae = trainee.sae
    metrics = {
        "steps": steps,
        "tokens": steps * cfg.batch_size,
        "dead_fraction": heldout["dead_fraction"],
        "dead_definition": DEAD_DEFINITION.format(**heldout),
        "dead_tokens": heldout["dead_tokens"],
        "dead_tokens_heldout": heldout["dead_tokens_heldout"],
        "train_dead_fraction": float(sae.dead_mask().float().mean()),
        "train_dead_definition": TRAIN_DEAD_DEFINITION.format(window=sae.cfg.dead_after_tokens),
        "train": final_train,
        "heldout": heldout,
        "seconds": seconds,
        "tokens_per_s": tokens_per_s,
        "precision": precision.record(),
    }
    config = {
        "sae": sae.cfg.to_dict(),
        "train": {**cfg.to_dict(), "lr": trainee.base_lr, "lr_given": cfg.lr},
        "cache": None if isinstance(cache_path, ActivationStream) else str(cache_path),
        "cache_fingerprint": fingerprint,
        "model": manifest.get("model"),
        "stream": manifest if isinstance(cache_path, ActivationStream) else None,
        "hooks": {"input": trainee.source, "target": trainee.target},
        "steps": steps,
        "tokens": steps * cfg.batch_size,
        "resumed_from_step": resumed_from,
        "precision": precision.record(),
        "completed": _now(),
    }
    with atomic_dir(trainee.out_dir) as tmp:
        save_sae(sae, tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(_json_normal(config), indent=2) + "\n")
        (tmp / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
        if trainee.log_path.exists():
            shutil.copyfile(trainee.log_path, tmp / LOG_NAME)
        else:
            (tmp / LOG_NAME).write_text("")
    return metrics


def train_saes(
    cache_path: str | os.PathLike | ActivationStream,
    saes: dict[str, SAE],
    cfg: TrainConfig,
    out_dirs: dict[str, str | os.PathLike],
    checkpoint_dirs: dict[str, str | os.PathLike] | None = None,
    progress: bool = True,
    *,
    on_checkpoint: Callable[[int], None] | None = None,
    on_log: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, TrainResult]:
    """Train every SAE in ``saes`` on the same batches of one cache; write each to its out_dir.

    ``cache_path`` may instead be an :class:`~saelab.stream.ActivationStream` (``source:
    stream``): batches then come straight from the model, the stream's position is checkpointed
    with the SAEs, and the held-out metrics come from the stream's held-out slice.

    ``saes`` must be built from the cache's widths (:func:`build_saes`); a mismatch is an
    error naming the hook and both widths. Each output directory gets ``cfg.json`` +
    ``sae_weights.safetensors`` + ``saelab_state.safetensors`` (SAE-Lens format),
    ``config.json``, ``metrics.json`` and ``train_log.jsonl``, written atomically. Checkpoints
    go to ``checkpoint_dirs`` (default ``{out_dir}.ckpt``) and are removed after success;
    ``train_log.jsonl`` grows there during training (so it survives a kill with them) and is
    copied into the output at the end.
    Bitwise-equal resume needs the same torch thread count and device as the killed run.
    ``on_checkpoint(step)`` is called after each group checkpoint (tests kill runs there);
    ``on_log(sae name, record)`` with every ``train_log.jsonl`` record (run tracking).
    """
    if not saes:
        raise TrainError("no SAEs to train")
    if set(out_dirs) != set(saes):
        raise TrainError(f"out_dirs names {sorted(out_dirs)} differ from the SAEs {sorted(saes)}")
    if isinstance(cache_path, ActivationStream):
        stream = cache_path
        if stream.batch_size != cfg.batch_size or stream.seed != cfg.seed:
            raise TrainError(
                f"the stream was built for batch_size {stream.batch_size} and seed "
                f"{stream.seed}; the train config has {cfg.batch_size} and {cfg.seed}"
            )
        manifest, fingerprint, hooks = stream.identity, stream.fingerprint, stream.hooks
        check_widths(saes, stream.probe_widths())
    else:
        cache_path = Path(cache_path)
        manifest = cache_manifest(cache_path)
        fingerprint = cache_fingerprint(manifest)
        hooks = hooks_of(saes)
        reader = ActivationReader(
            cache_path, hooks, cfg.batch_size, split="train", seed=cfg.seed,
            heldout_fraction=cfg.heldout_fraction, exclude_special=cfg.exclude_special,
            buffer_chunks=cfg.buffer_chunks,
        )  # fmt: skip
        check_widths(saes, reader.widths)
        stream = BatchStream(reader)
    devices = {str(sae.device) for sae in saes.values()}
    if len(devices) != 1:
        raise TrainError(f"all SAEs of a group must be on one device, got {sorted(devices)}")
    device = next(iter(saes.values())).device
    precision = resolve_precision(cfg.precision, device.type)
    precision.log(log)

    trainees = []
    for name, sae in saes.items():
        out_dir = Path(out_dirs[name])
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise TrainError(f"{out_dir} already exists; delete it to retrain SAE {name!r}")
        try:  # fail now, not after training, if the output format cannot hold this SAE
            saelens_cfg(sae)
        except SAELoadError as err:
            raise TrainError(f"SAE {name!r}: {err}") from err
        ckpt = checkpoint_dirs.get(name) if checkpoint_dirs else None
        ckpt_dir = Path(ckpt) if ckpt is not None else default_checkpoint_dir(out_dir)
        sae.train()
        sae.compute_dtype = precision.dtype
        trainees.append(_Trainee(name, sae, cfg, out_dir, ckpt_dir))

    for name, sae in saes.items():
        window = cfg.dead_window(sae.cfg.dead_after_tokens)
        if window != sae.cfg.dead_after_tokens:
            log.info(
                "%s: dead window %d tokens (%s of the run's %d; configured %d)", name, window,
                cfg.dead_window_fraction, cfg.steps * cfg.batch_size, sae.cfg.dead_after_tokens,
            )  # fmt: skip
            sae.cfg.dead_after_tokens = window
    ckpt_dirs = [t.ckpt_dir.resolve() for t in trainees]
    if len(set(ckpt_dirs)) != len(ckpt_dirs):
        raise TrainError(f"two SAEs share a checkpoint directory: {sorted(map(str, ckpt_dirs))}")
    total = cfg.steps
    if isinstance(stream, ActivationStream):
        stream.set_total(total)
    start, payloads = _find_resume_step(trainees, fingerprint)
    if start:
        for trainee, payload in zip(trainees, payloads, strict=True):
            trainee.restore(payload)
            trainee.truncate_log(start)
        torch.set_rng_state(payloads[0]["rng"])
        stream.seek(**payloads[0]["reader"])
        log.info("resuming %s from step %d of %d", sorted(saes), start, total)
    else:
        torch.manual_seed(cfg.seed)
        for trainee in trainees:
            trainee.ckpt_dir.mkdir(parents=True, exist_ok=True)

    bar = tqdm(
        total=total, initial=start, unit="step", desc=_bar_description(trainees),
        disable=not progress, mininterval=1.0, dynamic_ncols=True,
    )  # fmt: skip
    last_records: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    step = start
    for step in range(start + 1, total + 1):
        batch = next(stream)
        acts = {h: t.to(device, non_blocking=True) for h, t in zip(hooks, batch, strict=True)}
        if step == 1:
            for trainee in trainees:
                _init_from_first_batch(trainee, acts)
        factor = lr_factor(step - 1, total, cfg.warmup_steps, cfg.decay_start)
        for trainee in trainees:
            sae_cfg = trainee.sae.cfg
            trainee.sae.k_train = cfg.annealed_k(step - 1, sae_cfg.k, sae_cfg.width)
            dtype = trainee.sae.W_enc.dtype
            trainee.step(
                acts[trainee.source].to(dtype), acts[trainee.target].to(dtype), factor, step
            )
        bar.update(1)

        if step % cfg.log_every == 0 or step == total:
            for trainee in trainees:
                trainee.check_finite(step)
                record = trainee.window_record(step, factor)
                trainee.append_log(record)
                last_records[trainee.name] = record
                if on_log is not None:
                    on_log(trainee.name, record)
            first = last_records[trainees[0].name]
            bar.set_postfix(
                {  # the first SAE's window means (every SAE's are in its train_log.jsonl)
                    "Loss": f"{first['loss']:.4g}",
                    "L0": f"{first['l0']:.1f}",
                    "FVU": f"{first['fvu']:.3f}",
                    "Dead": f"{first['dead']:.3f}",
                },
                refresh=False,
            )  # fmt: skip
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total:
            for trainee in trainees:
                trainee.check_finite(step, params_too=True)
            position = stream.position()
            for trainee in trainees:
                trainee.save_checkpoint(step, position, fingerprint)
            for trainee in trainees:  # only once the whole group has the new step
                trainee.prune_checkpoints(keep=step)
            if on_checkpoint is not None:
                on_checkpoint(step)
    bar.close()
    for trainee in trainees:
        trainee.sae.k_train = None
        trainee.sae.fold_input_center()  # the saved map needs no input centre
    seconds = time.perf_counter() - t0
    trained_tokens = (total - start) * cfg.batch_size
    tokens_per_s = trained_tokens / max(seconds, 1e-9)
    log.info(
        "trained %d SAE(s) for %d steps (%d from step %d) in %.1f s: %.0f tokens/s",
        len(saes), total, total - start, start, seconds, tokens_per_s,
    )  # fmt: skip

    if isinstance(stream, ActivationStream):
        # The stream's held-out slice only: its training tokens are not read back for a top-up.
        heldout = heldout_metrics(stream.heldout_batches(), hooks, saes, cfg.eval_tokens)
    else:
        heldout = evaluate_heldout(cache_path, saes, cfg)
    results = {}
    for trainee in trainees:
        if trainee.name not in last_records:  # resumed at the very end: read the log
            last_records[trainee.name] = _last_log_record(trainee.log_path)
        metrics = _write_outputs(
            trainee, cache_path=cache_path, fingerprint=fingerprint, manifest=manifest,
            steps=total, final_train=last_records[trainee.name], heldout=heldout[trainee.name],
            seconds=seconds, tokens_per_s=tokens_per_s, resumed_from=start, precision=precision,
        )  # fmt: skip
        results[trainee.name] = TrainResult(
            total, total * cfg.batch_size, metrics, seconds, tokens_per_s
        )
    for trainee in trainees:
        trainee.clear_checkpoints()
    return results


def _bar_description(trainees: list[_Trainee]) -> str:
    more = f" (+{len(trainees) - 1} more)" if len(trainees) > 1 else ""
    return f"train {trainees[0].name}{more}"


def _last_log_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else None
