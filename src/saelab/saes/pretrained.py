"""Pretrained SAE-Lens releases, read from a local store through SAE-Lens's own loaders.

A release SAE is named ``(release, sae_id)`` as ``sae_lens.SAE.from_pretrained`` names it: a
release of SAE-Lens's directory (``gpt2-small-res-jb``, ``gemma-scope-9b-pt-res``, ...) or a
Hugging Face repo id holding SAE-Lens-format folders. Its files live in a local *store*, laid
out as ``hf download REPO --include 'FOLDER/*' --local-dir STORE/REPO`` writes them::

    STORE/REPO/FOLDER/...        e.g. data/releases/google/gemma-scope-9b-pt-res/layer_20/width_16k/average_l0_68/params.npz

SAE-Lens's loader for the release (``gemma_2`` npz, ``sae_lens`` cfg.json + safetensors, the
Gemma Scope transcoders, ...) reads them with its hub downloads pointed at the store
(:func:`store_downloads`), so every conversion SAE-Lens applies (config overrides, folded norm
scaling factors, log-thresholds) is SAE-Lens's own. With the hub reachable a missing file is
downloaded into the store; offline (``HF_HUB_OFFLINE``) a missing release is an error that says
which command fetches it and where to copy it.

:func:`resolve_release` reads what the pipeline needs before any job runs (hook, width,
architecture) and caches it under ``STORE/.saelab/``, so that SAE-Lens is imported once per
release, not in every job; :func:`write_release_sae` (rule ``pretrained_sae``) writes the
release as saelab writes a trained SAE, so :func:`saelab.saes.io.load_sae` is the only loader
any analysis uses.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saelab.runtime import atomic_dir, write_json_atomic
from saelab.saes.base import SAE
from saelab.saes.io import _FROM_SAELENS, SAELoadError, sae_from_saelens, saelens_version, save_sae

#: Where the resolved release metadata is cached inside the store.
INFO_DIR = ".saelab"
#: config.json of a materialised release (a trained SAE's config.json holds its recipe).
SOURCE_NAME = "config.json"


class ReleaseError(SAELoadError):
    """A release that cannot be resolved or is not available, with what to do about it."""


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be used (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ReleaseInfo:
    """What the pipeline needs of a release SAE before loading it (from SAE-Lens's config)."""

    release: str
    sae_id: str
    repo_id: str
    folder: str
    """Path of the SAE inside the Hugging Face repo."""
    architecture: str
    """SAE-Lens architecture (``standard``, ``topk``, ``jumprelu``, ``transcoder``, ...)."""
    hook: str
    hook_out: str | None
    d_in: int
    d_sae: int
    d_out: int
    k: int | None
    model_name: str

    @property
    def arch(self) -> str:
        """saelab's architecture computing the same (relu, topk, jumprelu)."""
        return _FROM_SAELENS[self.architecture]

    @property
    def is_transcoder(self) -> bool:
        return self.architecture in ("transcoder", "jumprelu_transcoder")

    def local_path(self, store: str | os.PathLike) -> Path:
        return Path(store) / self.repo_id / self.folder

    def fetch_command(self, store: str | os.PathLike) -> str:
        return (
            f"hf download {self.repo_id} --include '{self.folder}/*' "
            f"--local-dir {Path(store) / self.repo_id}"
        )

    def source(self) -> dict[str, Any]:
        return {"release": self.release, "sae_id": self.sae_id, "repo_id": self.repo_id,
                "folder": self.folder, "sae_lens_version": saelens_version()}  # fmt: skip


def _info_path(store: str | os.PathLike, release: str, sae_id: str) -> Path:
    return Path(store) / INFO_DIR / release / sae_id / "info.json"


def has_local_copy(store: str | os.PathLike, repo_id: str, folder: str) -> bool:
    path = Path(store) / repo_id / folder
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _missing_error(store, release: str, sae_id: str, repo_id: str, folder: str) -> ReleaseError:
    where = Path(store) / repo_id / folder
    command = f"hf download {repo_id} --include '{folder}/*' --local-dir {Path(store) / repo_id}"
    return ReleaseError(
        f"pretrained SAE {release!r} / {sae_id!r} (Hugging Face repo {repo_id}, folder "
        f"{folder}) is not in the local store {store} and the hub is offline "
        f"(HF_HUB_OFFLINE). On a machine with internet run\n    {command}\nthen copy "
        f"{where} to {where.resolve()} on this machine (or unset HF_HUB_OFFLINE to let the "
        "pipeline download it)."
    )


@contextmanager
def store_downloads(store: str | os.PathLike):
    """SAE-Lens's loaders with every hub download served from ``store`` (downloaded into it
    first when missing and the hub is reachable; offline, a missing optional file reads as
    absent, as a missing one on the hub would)."""
    import sae_lens.loading.pretrained_sae_loaders as loaders
    from huggingface_hub.errors import EntryNotFoundError

    real = loaders.hf_hub_download

    def download(repo_id, filename, *, subfolder=None, force_download=False, **kwargs):
        relative = f"{subfolder}/{filename}" if subfolder else filename
        local = Path(store) / repo_id / relative
        if local.is_file() and not force_download:
            return str(local)
        if hub_offline():
            raise EntryNotFoundError(f"{local} is not in the local store and the hub is offline")
        kwargs.pop("local_dir", None)
        return real(repo_id, filename, subfolder=subfolder, force_download=force_download,
                    local_dir=Path(store) / repo_id, **kwargs)  # fmt: skip

    loaders.hf_hub_download = download
    try:
        yield
    finally:
        loaders.hf_hub_download = real


def _locate(release: str, sae_id: str) -> tuple[str, str]:
    """(repo id, folder) of a release SAE, as SAE-Lens's directory maps it."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        if "/" not in release:
            raise ReleaseError(
                f"release {release!r} is not in SAE-Lens {saelens_version()}'s directory of "
                "pretrained SAEs and is not a Hugging Face repo id (owner/name)"
            )
        return release, sae_id
    ids = directory[release].saes_map
    if sae_id not in ids:
        close = [i for i in ids if i.split("/")[0] == sae_id.split("/")[0]][:8] or list(ids)[:8]
        raise ReleaseError(
            f"release {release!r} has no SAE {sae_id!r}; it has {len(ids)}, e.g. {close}"
        )
    return directory[release].repo_id, ids[sae_id]


def _info_from_cfg(release, sae_id, repo_id, folder, cfg: dict[str, Any]) -> ReleaseInfo:
    architecture = cfg.get("architecture", "standard")
    if architecture not in _FROM_SAELENS:
        raise ReleaseError(
            f"pretrained SAE {release!r} / {sae_id!r} is a SAE-Lens {architecture!r}; saelab "
            f"computes {sorted(_FROM_SAELENS)}"
        )
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name")
    if not hook:
        raise ReleaseError(f"pretrained SAE {release!r} / {sae_id!r}: its config names no hook")
    d_in = int(cfg["d_in"])
    return ReleaseInfo(
        release=release, sae_id=sae_id, repo_id=repo_id, folder=folder,
        architecture=architecture, hook=hook,
        hook_out=meta.get("hook_name_out") or cfg.get("hook_name_out"),
        d_in=d_in, d_sae=int(cfg["d_sae"]), d_out=int(cfg.get("d_out") or d_in),
        k=int(cfg["k"]) if architecture == "topk" else None,
        model_name=str(meta.get("model_name") or cfg.get("model_name") or ""),
    )  # fmt: skip


def resolve_release(release: str, sae_id: str, store: str | os.PathLike) -> ReleaseInfo:
    """The release SAE's metadata, checking that its files are available.

    Offline, a release missing from ``store`` raises :class:`ReleaseError` naming the command
    that fetches it. The metadata comes from SAE-Lens's config getter for the release (run
    once, then cached in ``STORE/.saelab/``).
    """
    cached = _info_path(store, release, sae_id)
    if cached.is_file():
        info = ReleaseInfo(**json.loads(cached.read_text()))
        if hub_offline() and not has_local_copy(store, info.repo_id, info.folder):
            raise _missing_error(store, release, sae_id, info.repo_id, info.folder)
        return info
    repo_id, folder = _locate(release, sae_id)
    if hub_offline() and not has_local_copy(store, repo_id, folder):
        raise _missing_error(store, release, sae_id, repo_id, folder)
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    try:
        with store_downloads(store):
            cfg = load_sae_config_from_huggingface(release, sae_id, device="cpu")
    except Exception as err:  # SAE-Lens raises plain ValueError/KeyError/OSError here
        raise ReleaseError(
            f"SAE-Lens could not read the config of {release!r} / {sae_id!r} from "
            f"{Path(store) / repo_id / folder}: {err}"
        ) from err
    info = _info_from_cfg(release, sae_id, repo_id, folder, cfg)
    write_json_atomic(asdict(info), cached)
    return info


def load_release(info: ReleaseInfo, store: str | os.PathLike) -> SAE:
    """The release SAE as a saelab SAE, loaded by SAE-Lens's own loader from ``store``."""
    from sae_lens import SAE as SAELensSAE

    if hub_offline() and not has_local_copy(store, info.repo_id, info.folder):
        raise _missing_error(store, info.release, info.sae_id, info.repo_id, info.folder)
    try:
        with store_downloads(store):
            theirs = SAELensSAE.from_pretrained(info.release, info.sae_id, device="cpu")
    except Exception as err:
        raise ReleaseError(
            f"SAE-Lens could not load {info.release!r} / {info.sae_id!r} from "
            f"{info.local_path(store)}: {err}"
        ) from err
    return sae_from_saelens(theirs, {"pretrained": info.source()})


def write_release_sae(info: ReleaseInfo, store: str | os.PathLike, out_dir: str | os.PathLike):
    """Write the release SAE to ``out_dir`` as a trained SAE is written: SAE-Lens ``cfg.json``
    + ``sae_weights.safetensors`` (+ saelab state), and ``config.json`` naming its source."""
    sae = load_release(info, store)
    with atomic_dir(out_dir) as tmp:
        save_sae(sae, tmp)
        source = {"source": "pretrained", "pretrained": info.source(), "release_info": asdict(info),
                  "sae": sae.cfg.to_dict()}  # fmt: skip
        (Path(tmp) / SOURCE_NAME).write_text(json.dumps(source, indent=2) + "\n")
    return sae
