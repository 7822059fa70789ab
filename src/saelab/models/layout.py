"""The on-disk layout of a prepared model directory, its manifest and the staging helpers.

A prepared model directory (``data/models/{model}/``)::

    tokenizer/       HF tokenizer (AutoTokenizer.from_pretrained)
    hf/              HF weights: dequantized gguf, or a hub download
    tiny/            cfg.json + model.safetensors + metrics.json (tiny model only)
    manifest.json    written last and atomically: its existence means "prepared"
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saelab.models.resolve import ModelError, ModelInfo
from saelab.runtime import write_json_atomic

MANIFEST_NAME = "manifest.json"
TOKENIZER_SUBDIR = "tokenizer"
HF_SUBDIR = "hf"
TINY_SUBDIR = "tiny"
TINY_CFG_NAME = "cfg.json"
TINY_WEIGHTS_NAME = "model.safetensors"
TINY_METRICS_NAME = "metrics.json"


def saelab_version() -> str:
    """Installed saelab version, recorded in manifests."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("saelab")
    except PackageNotFoundError:  # running from a source tree without install
        return "unknown"


def read_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a prepared model directory, or ``None`` if it is not prepared."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_manifest(info: ModelInfo, model_dir: str | Path, **extra: Any) -> Path:
    """Mark ``model_dir`` as prepared. Call it last, after every other file is in place."""
    manifest = {
        "model_id": info.model_id,
        "source": info.source,
        "tl_name": info.tl_name,
        "model_path": None,
        "saelab_version": saelab_version(),
        **extra,
    }
    path = Path(model_dir) / MANIFEST_NAME
    write_json_atomic(manifest, path, sort_keys=True)
    return path


@contextmanager
def _staging_dir(final_dir: Path) -> Iterator[Path]:
    """A temp sibling of ``final_dir`` that is removed on failure.

    A sibling (not /tmp) so the final rename stays on one filesystem and is atomic.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(staging: Path, model_dir: Path) -> None:
    """Move each entry of ``staging`` into ``model_dir``, replacing what was there.

    ``model_dir`` may already exist (Snakemake creates output parents before a job runs), so
    entries move one by one; the manifest comes after, so a crash here leaves "unprepared".
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    for entry in staging.iterdir():
        target = model_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(entry, target)


def _unprepared_error(info: ModelInfo, model_dir: Path, what: str) -> ModelError:
    rule = "train_tiny_lm" if info.source == "tiny" else "prepare_model"
    return ModelError(
        f"model {info.model_id!r} is not prepared: {what} missing under {model_dir}. "
        f"It is made by the {rule!r} rule (saelab.models.{rule}); run the pipeline up to it, "
        f"e.g. `snakemake {model_dir / MANIFEST_NAME} -c1`."
    )


def _require_manifest(info: ModelInfo, model_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise _unprepared_error(info, model_dir, MANIFEST_NAME)
    if manifest.get("model_id") != info.model_id:
        raise ModelError(
            f"{model_dir / MANIFEST_NAME} is for model {manifest.get('model_id')!r}, "
            f"not {info.model_id!r}; delete {model_dir} and prepare it again"
        )
    return manifest


@contextmanager
def _quiet_tl() -> Iterator[None]:
    """Silence TransformerLens 3's "HookedTransformer is deprecated" warnings (we pin TL < 4)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="transformer_lens")
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        yield
