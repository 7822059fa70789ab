"""Optional run tracking with Weights & Biases (``tracking: {wandb: {...}}``; off by default).

One W&B run per training group (the group trains as one pass): every ``train_log.jsonl`` record
of every SAE is logged as ``{sae}/{metric}`` at its step (loss and its parts, L0, FVU, dead
fraction, learning rate, BatchTopK threshold), the held-out metrics go to the run summary, and
:func:`log_evaluation` adds each SAE's evaluation JSON as a run of its own in the same W&B group.
``mode: offline`` needs no network and writes under ``dir`` (default ``logs/wandb``);
:func:`read_offline_history` reads such a run's history back without W&B's servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: What each logged training metric means (stored in the run config).
METRIC_DEFINITIONS = {
    "loss": "training loss of the SAE's objective, mean over the log window",
    "recon": "reconstruction part of the loss",
    "aux": "auxiliary (dead-latent) part of the loss",
    "sparsity": "sparsity (L1) part of the loss",
    "fvu": "training-batch FVU: mean squared error / variance of all target elements about one "
    "scalar mean (element-global), mean over the log window",
    "l0": "active latents per token over the window (training-mode codes)",
    "dead": "fraction of latents that have not fired within dead_after_tokens",
    "lr": "learning rate of the window's last step",
    "threshold": "BatchTopK inference threshold",
}


class TrackingError(ValueError):
    """Tracking asked for but not possible, with what to change."""


class _NoTracker:
    def log(self, name: str, record: dict[str, Any]) -> None:
        pass

    def summary(self, name: str, values: dict[str, Any]) -> None:
        pass


class WandbTracker:
    """Logs training records of a group's SAEs to one W&B run."""

    def __init__(self, run):
        self.run = run

    def log(self, name: str, record: dict[str, Any]) -> None:
        values = {f"{name}/{k}": v for k, v in record.items() if k not in ("step",)}
        self.run.log(values, step=int(record["step"]))

    def summary(self, name: str, values: dict[str, Any]) -> None:
        for key, value in _flatten(values).items():
            self.run.summary[f"{name}/{key}"] = value


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{prefix}{key}"] = value
    return out


def _init_run(settings: dict[str, Any], **kwargs):
    try:
        import wandb
    except ImportError as err:  # pragma: no cover - wandb is a dependency
        raise TrackingError(
            "tracking.wandb is set but wandb is not installed; pip install wandb"
        ) from err
    mode = settings.get("mode", "online")
    if mode not in ("online", "offline", "disabled"):
        raise TrackingError(
            f"tracking.wandb.mode {mode!r} is not allowed; use online, offline or disabled"
        )
    if not settings.get("project"):
        raise TrackingError("tracking.wandb.project is required (the W&B project name)")
    out = Path(settings.get("dir") or "logs/wandb")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        project=settings["project"], entity=settings.get("entity"), mode=mode, dir=str(out),
        reinit="create_new", **kwargs,
    )  # fmt: skip


@contextlib.contextmanager
def tracker_for(
    tracking: dict[str, Any] | None, group: str, train_cfg, specs: dict[str, Any]
) -> Iterator[WandbTracker | _NoTracker]:
    """The tracker of one training group: W&B when ``tracking.wandb`` is set, else a no-op."""
    settings = (tracking or {}).get("wandb")
    if not settings:
        yield _NoTracker()
        return
    config = {"train": train_cfg.to_dict(), "saes": specs, "metrics": METRIC_DEFINITIONS}
    run = _init_run(settings, name=f"train-{group}", group=group, job_type="train",
                    config=json.loads(json.dumps(config, default=str)))  # fmt: skip
    try:
        yield WandbTracker(run)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()


def log_evaluation(tracking: dict[str, Any] | None, group: str, sae: str, metrics: dict) -> None:
    """One SAE's evaluation JSON as the summary of a W&B run in its training group's W&B group."""
    settings = (tracking or {}).get("wandb")
    if not settings:
        return
    run = _init_run(settings, name=f"evaluate-{sae}", group=group, job_type="evaluate")
    for key, value in _flatten(metrics).items():
        run.summary[key] = value
    run.finish()


# ------------------------------------------------------------------ reading offline runs
_BLOCK = 32768
_HEADER = 7  # ":W&B", magic 0xBEE1, version 0


def _records(path: Path) -> Iterator[bytes]:
    """Payloads of a ``.wandb`` transaction log (LevelDB-style 32 KiB blocks of chunks:
    crc32c, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise TrackingError(f"{path} is not a W&B run file")
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield payload
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            yield pending + payload


def _read_offline(run_dir: str | os.PathLike, kind: str) -> Iterator[dict[str, Any]]:
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise TrackingError(f"no run-*.wandb file in {run_dir}")
    for payload in _records(files[0]):
        record = pb.Record()  # pyright: ignore[reportAttributeAccessIssue] (generated)
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == kind:
            items = record.history.item if kind == "history" else record.summary.update
            yield {
                item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items
            }


def read_offline_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The logged history rows (``run.log`` calls) of an offline run directory, in order."""
    return list(_read_offline(run_dir, "history"))


def read_offline_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The final summary of an offline run directory (later updates win)."""
    summary: dict[str, Any] = {}
    for update in _read_offline(run_dir, "summary"):
        summary.update(update)
    return summary
