"""The cache- or stream-backed trainer: several SAEs (or transcoders) from one pass, with
checkpoints, resume and a held-out evaluation.

:func:`train_saes` reads the union of the SAEs' hooks with one :class:`ActivationReader`, so
every SAE of a group sees exactly the same batches (as dictionary_learning's ``trainSAE`` and
Bart's ``train_sae_group``), and hands them to the one training loop
(:func:`saelab.training.loop.run_steps`; its docstring has the order of one update). Around it:
checkpoints and resume (:mod:`saelab.training.checkpoint`), the train log, and the outputs
(:mod:`saelab.training.outputs`).

Step numbers count updates: "step n" is the state after n optimiser steps (1-based), and the
log line of step n describes the window of updates that ended there.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saelab.cache import ActivationReader, cache_manifest
from saelab.codes import encode_sparse
from saelab.metrics import FVUAccumulator
from saelab.precision import resolve_precision
from saelab.saes import SAE
from saelab.saes.io import SAELoadError, saelens_cfg
from saelab.stream import ActivationStream
from saelab.training.checkpoint import (
    BatchStream,
    Trainee,
    cache_fingerprint,
    default_checkpoint_dir,
    find_resume_step,
)
from saelab.training.config import TrainConfig, TrainError, TrainingDivergedError, TrainResult
from saelab.training.group import build_saes, check_widths, hooks_of, sae_hooks, spec_hooks
from saelab.training.loop import run_steps
from saelab.training.outputs import write_outputs

__all__ = [  # the trainer's API, importable from here as before the split
    "TrainConfig", "TrainError", "TrainResult", "TrainingDivergedError", "build_saes",
    "default_checkpoint_dir", "evaluate_heldout", "heldout_metrics", "spec_hooks", "train_saes",
]  # fmt: skip

log = logging.getLogger("saelab.train")


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
                fired[name][encode_sparse(sae, x).latents] = True
            seen += min(n_tokens - seen, next(iter(acts.values())).shape[0])
            if seen >= n_tokens:
                break
    finally:
        for name, sae in saes.items():
            sae.train(modes[name])
    return seen


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
        trainees.append(Trainee(name, sae, cfg, out_dir, ckpt_dir))

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
    start, payloads = find_resume_step(trainees, fingerprint)
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

    def after_step(step: int) -> None:
        if step % cfg.log_every == 0 or step == total:
            for trainee in trainees:
                trainee.check_finite(step)
                record = trainee.window_record(step, cfg.batch_size)
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

    t0 = time.perf_counter()
    run_steps(
        trainees, _on_device(stream, hooks, device), total, start, bar=bar, after_step=after_step
    )
    bar.close()
    for trainee in trainees:
        trainee.sae.fold_input_center()  # the saved map needs no input centre
    seconds = time.perf_counter() - t0
    trained_tokens = (total - start) * cfg.batch_size
    tokens_per_s = trained_tokens / max(seconds, 1e-9)
    log.info(
        "trained %d SAE(s) for %d steps (%d from step %d) in %.1f s: %.0f tokens/s",
        len(saes), total, total - start, start, seconds, tokens_per_s,
    )  # fmt: skip

    if isinstance(cache_path, ActivationStream):  # then it is ``stream``
        # The stream's held-out slice only: its training tokens are not read back for a top-up.
        heldout = heldout_metrics(cache_path.heldout_batches(), hooks, saes, cfg.eval_tokens)
    else:
        heldout = evaluate_heldout(cache_path, saes, cfg)
    results = {}
    for trainee in trainees:
        final_train: dict[str, Any] | None
        if trainee.name in last_records:
            final_train = last_records[trainee.name]
        else:  # resumed at the very end: read the log
            final_train = _last_log_record(trainee.log_path)
        metrics = write_outputs(
            trainee, cache_path=cache_path, fingerprint=fingerprint, manifest=manifest,
            steps=total, final_train=final_train, heldout=heldout[trainee.name],
            seconds=seconds, tokens_per_s=tokens_per_s, resumed_from=start, precision=precision,
        )  # fmt: skip
        results[trainee.name] = TrainResult(
            total, total * cfg.batch_size, metrics, seconds, tokens_per_s
        )
    for trainee in trainees:
        trainee.clear_checkpoints()
    return results


def _on_device(stream, hooks: list[str], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """The stream's batches as hook -> tensor on ``device`` (one read per update)."""
    while True:
        batch = next(stream)
        yield {h: t.to(device, non_blocking=True) for h, t in zip(hooks, batch, strict=True)}


def _bar_description(trainees: list[Trainee]) -> str:
    more = f" (+{len(trainees) - 1} more)" if len(trainees) > 1 else ""
    return f"train {trainees[0].name}{more}"


def _last_log_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else None
