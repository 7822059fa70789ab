"""What lets a killed training run resume bit-for-bit: the resumable batch stream, each SAE's
checkpoints and train log, and the choice of the step to resume from.

Checkpoints (every ``checkpoint_every`` steps, in a directory beside the output) hold everything
that determines the rest of the run: SAE parameters and buffers (dead counters, threshold,
step counter), Adam state, the torch RNG, and the reader's position. A killed job run again
resumes from the newest step that every SAE of the group has, skips the batches already used
(without running the SAEs on them), and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch

from saelab.cache import ActivationReader
from saelab.saes import SAE
from saelab.training.config import TrainConfig, TrainError, TrainingDivergedError
from saelab.training.group import sae_hooks
from saelab.training.loop import SAEStepper

log = logging.getLogger("saelab.train")

CHECKPOINT_SUFFIX = ".ckpt"
LOG_NAME = "train_log.jsonl"


def default_checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    """``{out_dir}.ckpt``: beside the output, so a failed Snakemake job does not delete it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + CHECKPOINT_SUFFIX)


def cache_fingerprint(manifest: dict[str, Any]) -> str:
    """A short hash of a cache's manifest (it changes whenever the cache is rebuilt)."""
    blob = json.dumps(manifest, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def json_normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, the rest strings)."""
    return json.loads(json.dumps(value, default=str))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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
        batch = next(cast(Iterator, self._it), None)  # _open has set it
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
# One SAE's checkpoints and log
# ---------------------------------------------------------------------------------------------


class Trainee(SAEStepper):
    """An SAE of a trained group: its stepper, its output and checkpoint directories, its log."""

    def __init__(self, name: str, sae: SAE, cfg: TrainConfig, out_dir: Path, ckpt_dir: Path):
        super().__init__(sae, cfg.loop_options(), *sae_hooks(sae))
        self.name, self.cfg = name, cfg
        self.out_dir, self.ckpt_dir = out_dir, ckpt_dir

    def identity(self, fingerprint: str) -> dict[str, Any]:
        return json_normal(
            {
                "sae": self.sae.cfg.to_dict(),
                "train": self.cfg.identity(),
                "cache": fingerprint,
                "compute_dtype": str(self.sae.compute_dtype),  # what "auto" resolved to
            }
        )

    def check_finite(self, step: int, params_too: bool = False) -> None:
        """Raise :class:`TrainingDivergedError` if any loss so far, or (``params_too``) any
        parameter or optimiser state, is not finite."""
        bad = self.first_bad()
        if bad is not None:
            bad_step, parts = bad
            raise TrainingDivergedError(
                f"SAE {self.name!r}: non-finite loss at step {bad_step} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in parts.items())}); training stopped. "
                f"The last good checkpoint in {self.ckpt_dir} is kept; lower lr, raise "
                f"warmup_steps or use clip_grad_norm."
            )
        key = self.non_finite_state() if params_too else None
        if key is not None:
            raise TrainingDivergedError(
                f"SAE {self.name!r}: {key} is not finite after step {step}; training "
                f"stopped. The last good checkpoint in {self.ckpt_dir} is kept."
            )

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
            "written": now(),
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


def find_resume_step(trainees: list[Trainee], fingerprint: str) -> tuple[int, list[dict]]:
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
