"""What a trained SAE's output directory holds besides the weights: ``config.json`` (how it
was trained, from which cache) and ``metrics.json`` (final training window, held-out metrics)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from saelab.precision import Precision
from saelab.runtime import atomic_dir
from saelab.saes.io import save_sae
from saelab.stream import ActivationStream
from saelab.training.checkpoint import LOG_NAME, Trainee, json_normal, now

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"
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


def write_outputs(
    trainee: Trainee,
    *,
    cache_path: Path | ActivationStream,
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
        "completed": now(),
    }
    with atomic_dir(trainee.out_dir) as tmp:
        save_sae(sae, tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(json_normal(config), indent=2) + "\n")
        (tmp / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
        if trainee.log_path.exists():
            shutil.copyfile(trainee.log_path, tmp / LOG_NAME)
        else:
            (tmp / LOG_NAME).write_text("")
    return metrics
