"""How a group of SAEs is trained by :func:`saelab.train.train_saes` (:class:`TrainConfig`),
what it returns, and its errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, cast

from saelab.precision import PrecisionError, check_precision
from saelab.runtime import dataclass_from_dict
from saelab.saes import SAE
from saelab.schema import section_defaults
from saelab.training.loop import LoopOptions, annealed_k


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
        self.betas = cast(tuple[float, float], tuple(float(b) for b in self.betas))
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

    @property
    def k_anneal_steps(self) -> int:
        """Updates over which k is annealed (at least one with annealing; 0 without)."""
        if self.k_anneal_fraction is None:
            return 0
        return max(1, int(self.k_anneal_fraction * self.steps))

    def k_start(self, k: int, width: int) -> float:
        """Start of the k-annealing for an SAE of this ``k`` and ``width``."""
        return min(width, self.k_anneal_start * k)

    def annealed_k(self, index: int, k: int, width: int) -> int | None:
        """Training-mode k of the update with 0-based ``index`` for an SAE of this ``k`` and
        ``width``: linear from ``k_anneal_start`` x k down to k over the annealing steps;
        ``None`` (k itself) after them or without annealing."""
        return annealed_k(index, k, self.k_start(k, width), self.k_anneal_steps)

    def loop_options(self) -> LoopOptions:
        """The options of the one training loop (:class:`~saelab.training.loop.SAEStepper`)."""
        return LoopOptions(
            steps=self.steps, lr=self.lr, betas=self.betas, warmup_steps=self.warmup_steps,
            decay_start=self.decay_start, clip_grad_norm=self.clip_grad_norm,
            k_anneal_steps=self.k_anneal_steps, k_anneal_start=self._sae_k_start,
        )  # fmt: skip

    def _sae_k_start(self, sae: SAE) -> float:
        return self.k_start(sae.cfg.k, sae.cfg.width)

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
