"""Model names: what a config's ``model`` means (:func:`resolve_model`), and the torch device."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


class ModelError(ValueError):
    """An unknown model, or one that cannot be had here (e.g. a hub name offline)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline knows of a model before loading it."""

    model_id: str
    """Path-safe name used in ``data/models/{model}`` and every other path."""
    source: str
    """``gguf``, ``hub`` or ``tiny``."""
    tl_name: str | None
    """TransformerLens official name (architecture and config), ``None`` for tiny."""
    n_layers: int | None
    """Number of blocks, when known without loading (for config checks)."""
    n_ctx: int | None = None
    """Longest context, when known without loading."""
    model_path: str | None = None
    """Local HF-format directory holding the weights of a hub model (offline use)."""

    def require_tl_name(self) -> str:
        """``tl_name``, which every gguf and hub model has; a :class:`ModelError` otherwise."""
        if self.tl_name is None:
            raise ModelError(
                f"model {self.model_id!r} (source {self.source!r}) has no TransformerLens/hub "
                "name (tl_name); only gguf and hub models have one"
            )
        return self.tl_name


#: Models whose shape is known without the hub. Keys are the names a config may use.
KNOWN_MODELS: dict[str, ModelInfo] = {
    "gemma-3-270m": ModelInfo("gemma-3-270m", "gguf", "google/gemma-3-270m", 18, 32768),
    "gpt2-small": ModelInfo("gpt2-small", "hub", "gpt2", 12, 1024),
    "gpt2": ModelInfo("gpt2-small", "hub", "gpt2", 12, 1024),
    "gemma-2-2b": ModelInfo("gemma-2-2b", "hub", "google/gemma-2-2b", 26, 8192),
    "google/gemma-2-2b": ModelInfo("gemma-2-2b", "hub", "google/gemma-2-2b", 26, 8192),
    "gemma-2-9b": ModelInfo("gemma-2-9b", "hub", "google/gemma-2-9b", 42, 8192),
    "google/gemma-2-9b": ModelInfo("gemma-2-9b", "hub", "google/gemma-2-9b", 42, 8192),
    "pythia-70m": ModelInfo("pythia-70m", "hub", "EleutherAI/pythia-70m", 6, 2048),
    "EleutherAI/pythia-70m": ModelInfo("pythia-70m", "hub", "EleutherAI/pythia-70m", 6, 2048),
}


def _official_tl_names() -> list[str]:
    # A module-level list that transformer_lens does not re-export (no __all__ entry).
    from transformer_lens.loading_from_pretrained import (
        OFFICIAL_MODEL_NAMES,  # pyright: ignore[reportPrivateImportUsage]
    )

    return list(OFFICIAL_MODEL_NAMES)


def resolve_model(name: str, tiny=None, model_path: str | None = None) -> ModelInfo:
    """Map a config ``model`` name to a :class:`ModelInfo`, or raise :class:`ModelError`.

    ``tiny`` is the :class:`saelab.config.TinyConfig` (for the tiny model's shape);
    ``model_path`` a local HF-format directory for a hub model.
    """
    if name == "tiny":
        n_layers = tiny.n_layers if tiny is not None else None
        n_ctx = tiny.n_ctx if tiny is not None else None
        return ModelInfo("tiny", "tiny", None, n_layers, n_ctx)
    info = KNOWN_MODELS.get(name)
    if info is None:
        official = _official_tl_names()
        if name not in official:
            raise ModelError(
                f"unknown model {name!r}; allowed: 'tiny', {sorted(set(KNOWN_MODELS))}, "
                "or any TransformerLens official model name (see "
                "transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)"
            )
        info = ModelInfo(name.split("/")[-1], "hub", name, None, None)
    if model_path is not None:
        if info.source != "hub":
            raise ModelError(f"model_path is only for hub models, not for {name!r} ({info.source})")
        info = ModelInfo(
            info.model_id, info.source, info.tl_name, info.n_layers, info.n_ctx, model_path
        )
    return info


_DEVICE_CHOICES = "'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"


def default_device(requested: str = "auto") -> str:
    """The torch device to use: ``auto`` picks CUDA when available, else CPU."""
    requested = str(requested).strip().lower()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or (requested.startswith("cuda:") and requested[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ModelError(f"device {requested!r} requested but CUDA is not available here")
        return requested
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise ModelError("device 'mps' requested but MPS is not available here")
        return "mps"
    raise ModelError(f"unknown device {requested!r}; allowed: {_DEVICE_CHOICES}")


def configured_device(config: Mapping) -> str:
    """The torch device of a job, read from the run's config when the job runs (``device``).

    The device is never a rule param: where a job runs does not change what it computes, so
    switching a finished run between local and cluster execution plans no job again."""
    return default_device(config.get("device", "auto"))
