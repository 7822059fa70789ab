"""SAEs on disk in SAE-Lens format (``cfg.json`` + ``sae_weights.safetensors``), both ways.

``save_sae`` writes what ``sae_lens.SAE.load_from_disk`` loads, mapping each architecture to its
SAE-Lens equivalent (TopK -> ``topk``; BatchTopK and Matryoshka, whose inference rule is a
threshold, -> ``jumprelu`` with θ on every latent; ReLU -> ``standard``; transcoders ->
``transcoder`` / ``jumprelu_transcoder``). saelab's own config rides along under the ``saelab``
key, which SAE-Lens ignores, so ``load_sae`` restores the exact saelab object.

``load_sae`` also reads SAEs that SAE-Lens wrote (e.g. pretrained releases saved with
``save_model``), and ``load_pretrained`` fetches a release by name when the hub is reachable:
every analysis reads SAEs through ``load_sae`` and never knows where one came from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saelab.saes import SAE, SAEConfig, build_sae

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
STATE_NAME = "saelab_state.safetensors"

_TO_SAELENS = {"topk": "topk", "batchtopk": "jumprelu", "matryoshka": "jumprelu",
               "relu": "standard", "jumprelu": "jumprelu"}  # fmt: skip
_TRANSCODER_TO_SAELENS = {"relu": "transcoder", "batchtopk": "jumprelu_transcoder",
                          "matryoshka": "jumprelu_transcoder", "jumprelu": "jumprelu_transcoder"}  # fmt: skip
_FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu",
                 "transcoder": "relu", "jumprelu_transcoder": "jumprelu"}  # fmt: skip


class SAELoadError(RuntimeError):
    """An SAE directory or release that cannot be loaded, with what to do about it."""


def _threshold_vector(sae: SAE) -> torch.Tensor | None:
    threshold = getattr(sae, "threshold", None)
    if threshold is None:
        return None
    threshold = threshold.detach().clamp_min(0).float()
    return threshold.expand(sae.cfg.width).clone() if threshold.ndim == 0 else threshold.clone()


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    """The SAE-Lens ``cfg.json`` of ``sae`` (plus saelab's own config under ``saelab``)."""
    cfg = sae.cfg
    table = _TRANSCODER_TO_SAELENS if cfg.is_transcoder else _TO_SAELENS
    if cfg.arch not in table:
        raise SAELoadError(
            f"a {cfg.arch} {'transcoder' if cfg.is_transcoder else 'SAE'} has no SAE-Lens "
            f"equivalent; SAE-Lens-loadable ones: {sorted(table)}"
        )
    out: dict[str, Any] = {
        "architecture": table[cfg.arch],
        "d_in": cfg.d_in,
        "d_sae": cfg.width,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.decoder_bias_on_input),
        "normalize_activations": "layer_norm" if cfg.normalize_input else "none",
        "reshape_activations": "hook_z" if cfg.hook_name.endswith("hook_z") else "none",
        "metadata": {
            "model_name": cfg.model_name,
            "hook_name": cfg.hook_name,
            "hook_name_out": cfg.target_hook_name,
            "trained_with": "saelab",
        },
        "saelab": {"config": cfg.to_dict()},
    }
    if cfg.arch == "topk":
        out["k"] = cfg.k
    if cfg.is_transcoder:
        out["d_out"] = cfg.d_out
    return out


def save_sae(sae: SAE, out_dir: str | os.PathLike) -> Path:
    """Write ``sae`` to ``out_dir`` (created if needed) in SAE-Lens format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = saelens_cfg(sae)
    weights = {
        "W_enc": sae.W_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        # An unused b_enc is all zeros, so SAE-Lens (which always adds it) computes the same.
        "b_enc": sae.b_enc.detach() if sae.cfg.encoder_bias else torch.zeros_like(sae.b_enc),
        "b_dec": sae.b_dec.detach(),
    }
    threshold = _threshold_vector(sae)
    if threshold is not None:
        weights["threshold"] = threshold
    save_file({k: v.contiguous().cpu().float() for k, v in weights.items()}, out_dir / WEIGHTS_NAME)
    state = {name: buf.detach().cpu() for name, buf in sae.named_buffers()}
    save_file({k: v.contiguous() for k, v in state.items()}, out_dir / STATE_NAME)
    (out_dir / CFG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir


def _config_from_saelens(raw: dict[str, Any], path: Path) -> SAEConfig:
    arch = _FROM_SAELENS.get(raw.get("architecture", "standard"))
    if arch is None:
        raise SAELoadError(
            f"{path}: SAE-Lens architecture {raw.get('architecture')!r} is not supported; "
            f"supported: {sorted(_FROM_SAELENS)}"
        )
    norm = raw.get("normalize_activations", "none")
    if norm not in ("none", "layer_norm"):
        raise SAELoadError(
            f"{path}: normalize_activations {norm!r} is not supported; use 'none' or 'layer_norm'"
        )
    metadata = raw.get("metadata") or {}
    d_sae = int(raw["d_sae"])
    return SAEConfig(
        arch=arch,
        d_in=int(raw["d_in"]),
        width=d_sae,
        k=int(raw.get("k") or min(32, d_sae)),
        d_out=int(raw.get("d_out") or raw["d_in"]),
        hook_name=metadata.get("hook_name") or raw.get("hook_name") or "",
        target_hook_name=metadata.get("hook_name_out"),
        use_encoder_bias=True,
        subtract_decoder_bias=bool(raw.get("apply_b_dec_to_input", False)),
        normalize_input=norm == "layer_norm",
        model_name=metadata.get("model_name") or raw.get("model_name") or "",
        extra={"source": "sae_lens"},
    )


def load_sae(path: str | os.PathLike, device: str = "cpu") -> SAE:
    """Load an SAE saved by :func:`save_sae` or by SAE-Lens, in eval mode."""
    path = Path(path)
    if not (path / CFG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise SAELoadError(
            f"no SAE at {path}: expected {CFG_NAME} and {WEIGHTS_NAME} (the rule `train_sae` "
            "writes them; pretrained SAE-Lens releases come through saelab.saes.io.load_pretrained)"
        )
    raw = json.loads((path / CFG_NAME).read_text())
    if "saelab" in raw:
        cfg = SAEConfig.from_dict(raw["saelab"]["config"])
    else:
        cfg = _config_from_saelens(raw, path)
    sae = build_sae(cfg)
    weights = load_file(path / WEIGHTS_NAME)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            target = getattr(sae, name)
            if weights[name].shape != target.shape:
                raise SAELoadError(
                    f"{path}: {name} has shape {tuple(weights[name].shape)}, expected "
                    f"{tuple(target.shape)} from {CFG_NAME}"
                )
            target.copy_(weights[name])
        if (path / STATE_NAME).is_file():
            for name, value in load_file(path / STATE_NAME).items():
                getattr(sae, name).copy_(value)
        elif "threshold" in weights and hasattr(sae, "threshold"):
            sae.threshold.copy_(weights["threshold"].reshape(sae.threshold.shape))
        if "saelab" not in raw and raw.get("rescale_acts_by_decoder_norm"):
            # SAE-Lens multiplies the pre-activations by the decoder row norms before the
            # top-k and divides the codes by them before decoding; folding the norms into the
            # weights (as SAE-Lens's fold_W_dec_norm does) computes the same outputs.
            norms = sae.W_dec.norm(dim=1).clamp_min(1e-8)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae.to(device).eval()


def load_pretrained(release: str, sae_id: str, cache_dir: str | os.PathLike) -> SAE:
    """An SAE-Lens pretrained SAE by release and id (e.g. ``gpt2-small-res-jb``,
    ``blocks.8.hook_resid_pre``), saved under ``cache_dir`` and loaded with :func:`load_sae`.

    Needs the Hugging Face hub the first time; offline, a clear error says what to do.
    """
    target = Path(cache_dir) / release / sae_id.replace("/", "__")
    if (target / CFG_NAME).is_file():
        return load_sae(target)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise SAELoadError(
            f"SAE-Lens release {release!r} / {sae_id!r} is not cached at {target} and the hub "
            "is offline (HF_HUB_OFFLINE). On a machine with internet run "
            f"`python -c \"from saelab.saes.io import load_pretrained; load_pretrained('{release}', "
            f"'{sae_id}', '{cache_dir}')\"` and copy {target} here, or train an SAE with saelab."
        )
    from sae_lens import SAE as SAELensSAE

    try:
        pretrained = SAELensSAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as err:
        raise SAELoadError(
            f"could not fetch SAE-Lens release {release!r} / {sae_id!r}: {err}. Without the hub, "
            f"copy a saved copy to {target}, or train an SAE with saelab."
        ) from err
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pretrained.save_model(tmp)
    os.replace(tmp, target)
    return load_sae(target)
